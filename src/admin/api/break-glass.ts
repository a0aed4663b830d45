// /admin/api/break-glass: the privacy office's review of emergency accesses, and an administrator's
// instant revocation of a user's live ones, as the `break-glass` CLI does them. The clinician's
// justification is shown to reviewers (the review item is the one place it lives) and never audited:
// reading it is audited (`break_glass.reviews_listed`, without it); closing a review is recorded as
// `break_glass.reviewed` (high when inappropriate) without the note; revocations as `break_glass.revoked`
// (high). Change records carry the review state only, never the justification or the note.
import type Router from '@koa/router';
import type { Context } from 'koa';

import { findUserById } from '../../accounts/users.ts';
import { StorageAudit } from '../../audit/storage-events.ts';
import {
  closeBreakGlassReview, endUserBreakGlass, findBreakGlassEvent, listBreakGlassEvents, listBreakGlassTokens, MAX_REVIEW_NOTE_LENGTH,
  REVIEW_OUTCOMES, ReviewError, type BreakGlassEvent, type ReviewOutcome,
} from '../../break-glass/events.ts';
import type { Queryable } from '../../db/index.ts';
import { grantFamily, revokeWholeGrant } from '../../oidc/adapter.ts';
import { ADMIN_READ, ADMIN_WRITE, type AdminPrincipal } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError, etagOf, notFound, readJson, requireIfMatch, send } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import { guarded, type AdminApiDeps } from '../router.ts';

const STATUSES = ['open', 'closed', 'all'] as const;
type StatusFilter = (typeof STATUSES)[number];
const REVIEW_FIELDS = new Set(['outcome', 'note']);
const MAX_ID_LENGTH = 200;
// C0/C1 controls except tab and line breaks (a note is prose), and NUL above all (PostgreSQL refuses it).
const NOTE_CONTROLS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/;
const ID_CONTROLS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

const iso = (value: Date | null) => value?.toISOString() ?? null;
const invalid = (field: string, description: string) => new AdminHttpError(400, 'invalid_request', `${field} ${description}`, field);

/** One query parameter given at most once, as text. */
export function queryParam(ctx: Context, name: string): string | undefined {
  const value = ctx.query[name];
  if (value === undefined) return undefined;
  if (Array.isArray(value)) throw invalid(name, 'must be given once');
  return value;
}

/** An identifier from the query: 1-200 characters on one line. */
export function idParam(ctx: Context, name: string): string | undefined {
  const value = queryParam(ctx, name);
  if (value === undefined) return undefined;
  if (!value || value.length > MAX_ID_LENGTH || ID_CONTROLS.test(value)) throw invalid(name, `must be an identifier of 1-${MAX_ID_LENGTH} characters`);
  return value;
}

type TokenView = ReturnType<typeof tokenView>;
const tokenView = (t: Awaited<ReturnType<typeof listBreakGlassTokens>>[number]) => ({
  token_ref: t.tokenRef, kind: t.kind, client_id: t.clientId, audience: t.audience, scope: t.scope,
  issued_at: t.issuedAt.toISOString(), expires_at: t.expiresAt.toISOString(),
});

/** The review item as the CLI shows it (snake_case, like the rest of the admin API), with its tokens. */
function reviewItem(event: BreakGlassEvent, username: string | null, tokens: TokenView[]) {
  return {
    id: event.id,
    user_id: event.userId,
    username,
    client_id: event.clientId,
    patient_pseudonym: event.patientPseudonym,
    reason_code: event.reasonCode,
    justification: event.justification,
    launch_kind: event.launchKind,
    scope: event.scope,
    created_at: event.createdAt.toISOString(),
    expires_at: event.expiresAt.toISOString(),
    revoked_at: iso(event.revokedAt),
    status: event.review.status,
    outcome: event.review.outcome,
    note: event.review.note,
    reviewed_by: event.review.reviewedBy,
    reviewed_at: iso(event.review.reviewedAt),
    tokens,
  };
}

/** What a change record keeps of an event: its state, never the justification nor the review note. */
const recordedState = (event: BreakGlassEvent) => ({
  id: event.id, user_id: event.userId, client_id: event.clientId, reason_code: event.reasonCode, revoked_at: iso(event.revokedAt),
  status: event.review.status, outcome: event.review.outcome, reviewed_by: event.review.reviewedBy, reviewed_at: iso(event.review.reviewedAt),
});

/** Review items with usernames and tokens, read in `q`. */
async function reviewItems(q: Queryable, events: BreakGlassEvent[]) {
  const usernames = new Map<string, string | null>();
  for (const userId of new Set(events.map((e) => e.userId))) usernames.set(userId, (await findUserById(q, userId))?.username ?? null);
  const items = [];
  for (const event of events) {
    items.push(reviewItem(event, usernames.get(event.userId) ?? null, (await listBreakGlassTokens(q, event.id)).map(tokenView)));
  }
  return items;
}

const actorOf = (principal: AdminPrincipal) => ({ userId: principal.userId, clientId: principal.clientId, certThumbprint: principal.certThumbprint });
/** The reviewer stored with the review: the administrator's user id, or the automation client's id. */
const reviewerOf = (principal: AdminPrincipal) => principal.userId ?? principal.clientId;

function reviewBody(body: Record<string, unknown>): { outcome: ReviewOutcome; note: string } {
  for (const key of Object.keys(body)) {
    if (!REVIEW_FIELDS.has(key)) throw invalid(key, 'is not a review field: send outcome and note (the reviewer is the caller)');
  }
  const { outcome, note } = body;
  if (outcome === undefined) throw invalid('outcome', 'is required: appropriate or inappropriate');
  if (typeof outcome !== 'string' || !REVIEW_OUTCOMES.includes(outcome as ReviewOutcome)) throw invalid('outcome', 'must be appropriate or inappropriate');
  if (note === undefined) throw invalid('note', 'is required: the reviewer\'s finding');
  if (typeof note !== 'string') throw invalid('note', 'must be a string');
  const trimmed = note.trim();
  if (!trimmed) throw invalid('note', 'must not be empty');
  if (trimmed.length > MAX_REVIEW_NOTE_LENGTH) throw invalid('note', `must be at most ${MAX_REVIEW_NOTE_LENGTH} characters`);
  if (NOTE_CONTROLS.test(trimmed)) throw invalid('note', 'must not contain control characters (tab and line breaks are fine)');
  if (!trimmed.isWellFormed()) throw invalid('note', 'must be well-formed Unicode (no lone surrogates)');
  return { outcome: outcome as ReviewOutcome, note: trimmed };
}

export function breakGlassRoutes(router: Router, deps: AdminApiDeps): void {
  /** Reading justifications is audited in the same transaction as the read: no record, no answer. */
  const auditRead = (tx: Queryable, principal: AdminPrincipal, details: Record<string, string | number | string[] | undefined>) =>
    deps.audit.record({ type: 'break_glass.reviews_listed', outcome: 'success', rule: 'admin_api', actor: actorOf(principal), target: {}, details }, tx);

  /** The event's representation and ETag, read in `q` (locked first when `forUpdate`). */
  async function current(q: Queryable, id: string, forUpdate = false) {
    if (forUpdate) await q.query('SELECT 1 FROM break_glass_events WHERE id = $1 FOR UPDATE', [id]);
    const event = await findBreakGlassEvent(q, id);
    if (!event) throw notFound('break-glass event');
    const [review] = await reviewItems(q, [event]);
    return { event, review: review!, etag: etagOf(review) };
  }

  router.get('/break-glass', guarded(deps, ADMIN_READ, async (ctx, principal) => {
    const status = (queryParam(ctx, 'status') ?? 'open') as StatusFilter;
    if (!STATUSES.includes(status)) throw invalid('status', 'must be open, closed or all');
    const userId = idParam(ctx, 'user');
    const body = await deps.db.transaction(async (tx) => {
      if (userId !== undefined && !(await findUserById(tx, userId))) throw notFound('user');
      const events = await listBreakGlassEvents(tx, { status: status === 'all' ? undefined : status, userId });
      const reviews = await reviewItems(tx, events);
      await auditRead(tx, principal, { count: events.length, status, target_user: userId, event_ids: events.map((e) => e.id) });
      return { reviews };
    });
    send(ctx, 200, body, etagOf(body));
  }));

  router.get('/break-glass/:id', guarded(deps, ADMIN_READ, async (ctx, principal) => {
    const { review, etag } = await deps.db.transaction(async (tx) => {
      const read = await current(tx, ctx.params.id!);
      await auditRead(tx, principal, { count: 1, status: read.event.review.status, target_user: read.event.userId, event_ids: [read.event.id] });
      return read;
    });
    send(ctx, 200, { review }, etag);
  }));

  router.post('/break-glass/:id/review', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const raw = await readJson(ctx);
    const { outcome, note } = reviewBody(raw);
    const answer = await idempotent(ctx, deps.db, principal.id, raw, () => deps.db.transaction(async (tx) => {
      const before = await current(tx, ctx.params.id!, true);
      requireIfMatch(ctx, before.etag);
      // A closed review stays closed: no silent rewrite of the privacy office's finding.
      if (before.event.review.status === 'closed') throw new AdminHttpError(409, 'conflict', 'this review is already closed');
      let closed: BreakGlassEvent;
      try {
        closed = await closeBreakGlassReview(tx, { id: before.event.id, outcome, note, reviewer: reviewerOf(principal) });
      } catch (err) {
        if (err instanceof ReviewError) throw new AdminHttpError(409, 'conflict', err.message);
        throw err;
      }
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'break_glass.reviewed', severity: outcome === 'inappropriate' ? 'high' : 'info',
        target: { kind: 'break_glass_event', id: closed.id, clientId: closed.clientId, userId: closed.userId },
        before: recordedState(before.event), after: recordedState(closed),
        // As the CLI records it: the outcome and who reviewed (an id), never the note.
        details: { review_outcome: outcome, reviewer: principal.userId ?? principal.clientId },
      });
      const after = await current(tx, closed.id);
      return { status: 200, body: { review: after.review }, etag: after.etag };
    }));
    send(ctx, answer.status, answer.body, answer.etag);
  }));

  // An emergency action: no If-Match (nothing to have read first), the user's row locked so that no
  // emergency access opens meanwhile; each access ended is recorded (high) with its grants revoked.
  router.post('/users/:id/break-glass/revoke', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const answer = await idempotent(ctx, deps.db, principal.id, {}, () => deps.db.transaction(async (tx) => {
      await tx.query('SELECT 1 FROM users WHERE id = $1 FOR UPDATE', [ctx.params.id!]);
      const user = await findUserById(tx, ctx.params.id!);
      if (!user) throw notFound('user');
      const storageAudit = new StorageAudit(deps.audit);
      const ended = (await endUserBreakGlass(tx, user.id)).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      const revoked = [];
      for (const { id, grantId } of ended) {
        const grants = (await grantFamily(tx, grantId)).length;
        const artefacts = await revokeWholeGrant(tx, grantId, storageAudit);
        const event = (await findBreakGlassEvent(tx, id))!;
        await recordAdminChange(tx, deps.audit, principal, {
          type: 'break_glass.revoked', severity: 'high',
          target: { kind: 'break_glass_event', id, clientId: event.clientId, userId: user.id },
          before: { ...recordedState(event), revoked_at: null }, after: { ...recordedState(event), grants_revoked: grants, artefacts_revoked: artefacts },
        });
        revoked.push({ id, revoked_at: iso(event.revokedAt), grants_revoked: grants, artefacts_revoked: artefacts });
      }
      return { status: 200, body: { user_id: user.id, username: user.username, revoked } };
    }));
    send(ctx, answer.status, answer.body);
  }));
}
