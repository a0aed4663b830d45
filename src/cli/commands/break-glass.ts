// `break-glass list|review|disable|enable|revoke`: the privacy office's review of emergency accesses and
// the administrator's controls. The justification is shown by `list` (the review item is the one place
// it lives) and never written to the audit log; listing is audited because it reveals that free text.
// Every change commits with its audit record, or not at all.
import { findUserByUsername, normaliseUsername, type User } from '../../accounts/users.ts';
import type { AuditLog } from '../../audit/log.ts';
import {
  closeBreakGlassReview, endUserBreakGlass, listBreakGlassEvents, listBreakGlassTokens, REVIEW_OUTCOMES, ReviewError,
  setBreakGlassDisabled, type BreakGlassEvent, type ReviewOutcome,
} from '../../break-glass/events.ts';
import type { Queryable } from '../../db/index.ts';
import { CLI_AUDIT, CliError, expectPositionals, parseCommandArgs, UsageError, type Command } from '../context.ts';
import { auditedChange } from './smart-input.ts';

const STATUSES = ['open', 'closed', 'all'] as const;
type StatusFilter = (typeof STATUSES)[number];
/** The reviewer's name is stored with the review and audited: a name, not prose. */
const MAX_REVIEWER_LENGTH = 200;
// C0/C1 controls and line/paragraph separators: a name is one line.
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

function required(command: string, option: string, value: string | undefined): string {
  if (value === undefined) throw new UsageError(`${command}: --${option} is required`);
  return value;
}

async function requireUser(db: Queryable, username: string, command: string): Promise<User> {
  const user = await findUserByUsername(db, normaliseUsername(username));
  if (!user) throw new CliError(`${command}: no such user`);
  return user;
}

const iso = (value: Date | null) => value?.toISOString() ?? null;

/**
 * Ends every live emergency access of the user and revokes each one's grant (with the tokens issued
 * from it and the grants exchanged from those), in the caller's transaction. One `break_glass.revoked`
 * event per access; the grant revocations are recorded as the server records them (`grant.revoked`).
 * Returns the ids of the accesses ended.
 */
async function revokeLiveBreakGlass(tx: Queryable, audit: AuditLog, user: User): Promise<string[]> {
  const [{ grantFamily, revokeWholeGrant }, { StorageAudit }] = await Promise.all([
    import('../../oidc/adapter.ts'), import('../../audit/storage-events.ts'),
  ]);
  const storageAudit = new StorageAudit(audit);
  const ended = (await endUserBreakGlass(tx, user.id)).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  for (const event of ended) {
    const grants = (await grantFamily(tx, event.grantId)).length;
    const artefacts = await revokeWholeGrant(tx, event.grantId, storageAudit);
    await audit.record({
      type: 'break_glass.revoked', outcome: 'success', severity: 'high', rule: CLI_AUDIT.rule,
      target: {}, actor: { userId: user.id },
      details: { ...CLI_AUDIT.details, event_id: event.id, grant_id: event.grantId, grants, artefacts },
    }, tx);
  }
  return ended.map((e) => e.id);
}

export const breakGlassListCommand: Command = {
  name: 'break-glass list',
  synopsis: '[--status open|closed|all] [--username NAME]',
  description: [
    'List break-glass review items, oldest first (at most 500): who opened which patient (pseudonym) with which',
    'client, why (reason code and the clinician\'s justification), the tokens that followed, and the review.',
    'The justification is shown here only; listing is audited (break_glass.reviews_listed, without it).',
  ],
  options: [
    ['--status STATUS', 'open (default): not reviewed yet; closed: reviewed; all'],
    ['--username NAME', 'only this user\'s emergency accesses'],
  ],
  output: '{"reviews":[{"id","username","clientId","patientPseudonym","reasonCode","justification","launchKind","scope",'
    + '"createdAt","expiresAt","revokedAt","status","outcome","note","reviewedBy","reviewedAt",'
    + '"tokens":[{"tokenRef","kind","clientId","audience","scope","issuedAt","expiresAt"}]}]}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, {
      status: { type: 'string' }, username: { type: 'string' },
    } as const);
    expectPositionals(this.name, positionals, []);
    const status = (values.status ?? 'open') as StatusFilter;
    if (!STATUSES.includes(status)) throw new UsageError(`${this.name}: --status must be open, closed or all`);
    return auditedChange(async (tx, audit) => {
      const only = values.username === undefined ? undefined : await requireUser(tx, values.username, this.name);
      const events = await listBreakGlassEvents(tx, { status: status === 'all' ? undefined : status, userId: only?.id });
      const userIds = [...new Set(events.map((e) => e.userId))];
      const { rows } = await tx.query<{ id: string; username: string }>('SELECT id, username FROM users WHERE id = ANY($1::text[])', [userIds]);
      const usernames = new Map(rows.map((r) => [r.id, r.username]));
      const reviews = [];
      for (const event of events) reviews.push({ ...reviewItem(event, usernames.get(event.userId) ?? null), tokens: await tokensOf(tx, event) });
      await audit.record({
        type: 'break_glass.reviews_listed', outcome: 'success', rule: CLI_AUDIT.rule,
        target: {}, ...(only && { actor: { userId: only.id } }),
        details: { ...CLI_AUDIT.details, count: events.length, status, event_ids: events.map((e) => e.id) },
      }, tx);
      return { reviews };
    });
  },
};

function reviewItem(event: BreakGlassEvent, username: string | null) {
  return {
    id: event.id,
    username,
    clientId: event.clientId,
    patientPseudonym: event.patientPseudonym,
    reasonCode: event.reasonCode,
    justification: event.justification,
    launchKind: event.launchKind,
    scope: event.scope,
    createdAt: event.createdAt.toISOString(),
    expiresAt: event.expiresAt.toISOString(),
    revokedAt: iso(event.revokedAt),
    status: event.review.status,
    outcome: event.review.outcome,
    note: event.review.note,
    reviewedBy: event.review.reviewedBy,
    reviewedAt: iso(event.review.reviewedAt),
  };
}

async function tokensOf(tx: Queryable, event: BreakGlassEvent) {
  return (await listBreakGlassTokens(tx, event.id)).map((t) => ({
    tokenRef: t.tokenRef, kind: t.kind, clientId: t.clientId, audience: t.audience, scope: t.scope,
    issuedAt: t.issuedAt.toISOString(), expiresAt: t.expiresAt.toISOString(),
  }));
}

export const breakGlassReviewCommand: Command = {
  name: 'break-glass review',
  synopsis: '--id ID --outcome appropriate|inappropriate --note TEXT --reviewer NAME',
  description: [
    'Close an open review item with its outcome. A closed review stays closed (exit 1 on a second close).',
    'Audited break_glass.reviewed (severity high when inappropriate) with the outcome and reviewer, not the note.',
  ],
  options: [
    ['--id ID', 'the review item (the break-glass event id from `break-glass list`) (required)'],
    ['--outcome OUTCOME', 'appropriate or inappropriate (required)'],
    ['--note TEXT', 'the reviewer\'s finding, up to 2000 characters; stored with the review only (required)'],
    ['--reviewer NAME', `who reviewed, up to ${MAX_REVIEWER_LENGTH} characters (required)`],
  ],
  output: '{"id","username","status":"closed","outcome","note","reviewedBy","reviewedAt"}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, {
      id: { type: 'string' }, outcome: { type: 'string' }, note: { type: 'string' }, reviewer: { type: 'string' },
    } as const);
    expectPositionals(this.name, positionals, []);
    const id = required(this.name, 'id', values.id);
    const outcome = required(this.name, 'outcome', values.outcome) as ReviewOutcome;
    if (!REVIEW_OUTCOMES.includes(outcome)) throw new UsageError(`${this.name}: --outcome must be appropriate or inappropriate`);
    const note = required(this.name, 'note', values.note);
    const reviewer = required(this.name, 'reviewer', values.reviewer).trim();
    if (!reviewer || reviewer.length > MAX_REVIEWER_LENGTH || CONTROL_CHARACTERS.test(reviewer)) {
      throw new CliError(`${this.name}: invalid --reviewer: 1-${MAX_REVIEWER_LENGTH} characters on one line`);
    }
    return auditedChange(async (tx, audit) => {
      let event: BreakGlassEvent;
      try {
        event = await closeBreakGlassReview(tx, { id, outcome, note, reviewer });
      } catch (err) {
        if (err instanceof ReviewError) throw new CliError(`${this.name}: ${err.message}`);
        throw err;
      }
      await audit.record({
        type: 'break_glass.reviewed', outcome: 'success', severity: outcome === 'inappropriate' ? 'high' : 'info',
        rule: CLI_AUDIT.rule, target: { clientId: event.clientId }, actor: { userId: event.userId },
        details: { ...CLI_AUDIT.details, event_id: event.id, review_outcome: outcome, reviewer },
      }, tx);
      const { rows } = await tx.query<{ username: string }>('SELECT username FROM users WHERE id = $1', [event.userId]);
      return {
        id: event.id,
        username: rows[0]?.username ?? null,
        status: event.review.status,
        outcome: event.review.outcome,
        note: event.review.note,
        reviewedBy: event.review.reviewedBy,
        reviewedAt: iso(event.review.reviewedAt),
      };
    });
  },
};

function switchCommand(disable: boolean): Command {
  const name = disable ? 'break-glass disable' : 'break-glass enable';
  return {
    name,
    synopsis: disable ? '--username NAME [--revoke]' : '--username NAME',
    description: disable
      ? [
        'Take the break-glass path away from a user (misuse, leave, investigation): no new emergency access.',
        'Accesses already open stay live until they expire unless --revoke is given. Audited break_glass.user_disabled',
        '(when the switch changes).',
      ]
      : ['Give a user the break-glass path back. Audited break_glass.user_enabled (when the switch changes).'],
    options: [
      ['--username NAME', 'the user (required)'],
      ...(disable ? [['--revoke', 'also end the user\'s live emergency accesses now (as `break-glass revoke`)'] as const] : []),
    ],
    output: disable
      ? '{"username","breakGlassDisabled":true,"changed":true|false} (with --revoke also "revoked":["event id",...])'
      : '{"username","breakGlassDisabled":false,"changed":true|false}',
    async run(args) {
      // --revoke belongs to disable only: enable refuses it as an unknown option.
      const { values, positionals } = disable
        ? parseCommandArgs(name, args, { username: { type: 'string' }, revoke: { type: 'boolean' } } as const)
        : parseCommandArgs(name, args, { username: { type: 'string' } } as const);
      expectPositionals(name, positionals, []);
      const username = required(name, 'username', values.username);
      const revoke = 'revoke' in values && values.revoke === true;
      return auditedChange(async (tx, audit) => {
        const user = await requireUser(tx, username, name);
        const changed = await setBreakGlassDisabled(tx, user.id, disable);
        if (changed) {
          await audit.record({
            type: disable ? 'break_glass.user_disabled' : 'break_glass.user_enabled', outcome: 'success',
            severity: disable ? 'warning' : 'info', rule: CLI_AUDIT.rule, target: {}, actor: { userId: user.id },
            details: { ...CLI_AUDIT.details },
          }, tx);
        }
        const result = { username: user.username, breakGlassDisabled: disable, changed };
        return revoke ? { ...result, revoked: await revokeLiveBreakGlass(tx, audit, user) } : result;
      });
    },
  };
}

export const breakGlassDisableCommand = switchCommand(true);
export const breakGlassEnableCommand = switchCommand(false);

export const breakGlassRevokeCommand: Command = {
  name: 'break-glass revoke',
  synopsis: '--username NAME',
  description: [
    'End every live emergency access of a user now: each access is marked revoked and its grant is revoked with',
    'the tokens issued from it and the grants exchanged from those. Audited break_glass.revoked (severity high) each.',
  ],
  options: [['--username NAME', 'the user (required)']],
  output: '{"username","revoked":["event id",...]} (empty when the user had no live emergency access)',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { username: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    const username = required(this.name, 'username', values.username);
    return auditedChange(async (tx, audit) => {
      const user = await requireUser(tx, username, this.name);
      return { username: user.username, revoked: await revokeLiveBreakGlass(tx, audit, user) };
    });
  },
};
