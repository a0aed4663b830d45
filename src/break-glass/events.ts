// Break-glass events and their review items (one row each), the tokens that followed, and the
// per-user switch. The justification is only ever read back for the review (CLI, admin API).
import { randomBytes } from 'node:crypto';

import type { Queryable } from '../db/index.ts';
import type { BreakGlassReason } from './reasons.ts';

export type ReviewOutcome = 'appropriate' | 'inappropriate';
export const REVIEW_OUTCOMES: readonly ReviewOutcome[] = ['appropriate', 'inappropriate'];
export const MAX_JUSTIFICATION_LENGTH = 2000;
export const MAX_REVIEW_NOTE_LENGTH = 2000;

export interface BreakGlassEvent {
  id: string;
  userId: string;
  clientId: string;
  patientPseudonym: string;
  reasonCode: BreakGlassReason;
  justification: string;
  launchKind: 'standalone' | 'ehr';
  grantId: string;
  scope: string;
  credentialId: string;
  createdAt: Date;
  expiresAt: Date;
  revokedAt: Date | null;
  review: {
    status: 'open' | 'closed';
    outcome: ReviewOutcome | null;
    note: string | null;
    reviewedBy: string | null;
    reviewedAt: Date | null;
  };
}

export interface BreakGlassToken {
  tokenRef: string;
  kind: 'access_token' | 'exchanged_token';
  clientId: string;
  audience: string | null;
  scope: string;
  issuedAt: Date;
  expiresAt: Date;
}

interface EventRow extends Record<string, unknown> {
  id: string; user_id: string; client_id: string; patient_pseudonym: string; reason_code: BreakGlassReason;
  justification: string; launch_kind: 'standalone' | 'ehr'; grant_id: string; scope: string; credential_id: string;
  created_at: Date; expires_at: Date; revoked_at: Date | null; review_status: 'open' | 'closed';
  review_outcome: ReviewOutcome | null; review_note: string | null; reviewed_by: string | null; reviewed_at: Date | null;
}

const fromRow = (r: EventRow): BreakGlassEvent => ({
  id: r.id,
  userId: r.user_id,
  clientId: r.client_id,
  patientPseudonym: r.patient_pseudonym,
  reasonCode: r.reason_code,
  justification: r.justification,
  launchKind: r.launch_kind,
  grantId: r.grant_id,
  scope: r.scope,
  credentialId: r.credential_id,
  createdAt: new Date(r.created_at),
  expiresAt: new Date(r.expires_at),
  revokedAt: r.revoked_at ? new Date(r.revoked_at) : null,
  review: {
    status: r.review_status,
    outcome: r.review_outcome,
    note: r.review_note,
    reviewedBy: r.reviewed_by,
    reviewedAt: r.reviewed_at ? new Date(r.reviewed_at) : null,
  },
});

/** The user already broke the glass as often as allowed in the last 24 hours. */
export class BreakGlassLimitError extends Error {
  override name = 'BreakGlassLimitError';
  constructor(readonly limit: number) {
    super(`emergency access is limited to ${limit} per 24 hours`);
  }
}

export type NewBreakGlassEvent = Pick<BreakGlassEvent,
  'userId' | 'clientId' | 'patientPseudonym' | 'reasonCode' | 'justification' | 'launchKind' | 'grantId' | 'scope' | 'credentialId'> & {
  lifetimeSeconds: number;
  /** How many emergency accesses a user may open per 24 hours. */
  dailyLimit: number;
};

/** The user's account or break-glass path was switched off (checked again under the row lock). */
export class BreakGlassDisabledError extends Error {
  override name = 'BreakGlassDisabledError';
}

/**
 * Counts the user's emergency accesses of the last 24 hours and records this one, in the caller's
 * transaction: the user's row is locked first, so two concurrent attempts cannot both pass the count,
 * and an administrator's switch that lands meanwhile is seen.
 */
export async function openBreakGlassEvent(tx: Queryable, input: NewBreakGlassEvent): Promise<BreakGlassEvent> {
  const { rows: [user] } = await tx.query<{ disabled: boolean; break_glass_disabled: boolean }>(
    'SELECT disabled, break_glass_disabled FROM users WHERE id = $1 FOR UPDATE', [input.userId],
  );
  if (!user || user.disabled || user.break_glass_disabled) throw new BreakGlassDisabledError('emergency access is disabled for this user');
  if (await countRecentBreakGlass(tx, input.userId) >= input.dailyLimit) throw new BreakGlassLimitError(input.dailyLimit);
  const { rows } = await tx.query<EventRow>(
    `INSERT INTO break_glass_events
       (id, user_id, client_id, patient_pseudonym, reason_code, justification, launch_kind, grant_id, scope, credential_id, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11)) RETURNING *`,
    [`bg_${randomBytes(16).toString('base64url')}`, input.userId, input.clientId, input.patientPseudonym, input.reasonCode,
      input.justification, input.launchKind, input.grantId, input.scope, input.credentialId, input.lifetimeSeconds],
  );
  return fromRow(rows[0]!);
}

/** Emergency accesses the user opened in the last 24 hours (revoked ones count: the glass was broken). */
export async function countRecentBreakGlass(db: Queryable, userId: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM break_glass_events WHERE user_id = $1 AND created_at > now() - interval '24 hours'`,
    [userId],
  );
  return Number(rows[0]?.n ?? 0);
}

export interface ActiveBreakGlass {
  id: string;
  reasonCode: BreakGlassReason;
  expiresAt: Date;
}

/** The live (not expired, not revoked) emergency access a grant belongs to, if any. */
export async function activeBreakGlassForGrant(db: Queryable, grantId: string): Promise<ActiveBreakGlass | undefined> {
  const { rows } = await db.query<{ id: string; reason_code: BreakGlassReason; expires_at: Date }>(
    `SELECT id, reason_code, expires_at FROM break_glass_events
      WHERE grant_id = $1 AND revoked_at IS NULL AND expires_at > now()`,
    [grantId],
  );
  const row = rows[0];
  return row && { id: row.id, reasonCode: row.reason_code, expiresAt: new Date(row.expires_at) };
}

/** Whether a grant was ever an emergency grant (live or not): such a grant is never reused or refreshed. */
export async function isBreakGlassGrant(db: Queryable, grantId: string): Promise<boolean> {
  const { rows } = await db.query('SELECT 1 FROM break_glass_events WHERE grant_id = $1', [grantId]);
  return rows.length > 0;
}

/** The live emergency access with this id, if any. */
export async function activeBreakGlass(db: Queryable, id: string): Promise<ActiveBreakGlass | undefined> {
  const { rows } = await db.query<{ id: string; reason_code: BreakGlassReason; expires_at: Date }>(
    `SELECT id, reason_code, expires_at FROM break_glass_events WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()`,
    [id],
  );
  const row = rows[0];
  return row && { id: row.id, reasonCode: row.reason_code, expiresAt: new Date(row.expires_at) };
}

export async function findBreakGlassEvent(db: Queryable, id: string): Promise<BreakGlassEvent | undefined> {
  const { rows } = await db.query<EventRow>('SELECT * FROM break_glass_events WHERE id = $1', [id]);
  return rows[0] && fromRow(rows[0]);
}

export async function listBreakGlassEvents(
  db: Queryable, filter: { status?: 'open' | 'closed' | undefined; userId?: string | undefined; limit?: number | undefined } = {},
): Promise<BreakGlassEvent[]> {
  const { rows } = await db.query<EventRow>(
    `SELECT * FROM break_glass_events
      WHERE ($1::text IS NULL OR review_status = $1) AND ($2::text IS NULL OR user_id = $2)
      ORDER BY created_at, id LIMIT $3`,
    [filter.status ?? null, filter.userId ?? null, filter.limit ?? 500],
  );
  return rows.map(fromRow);
}

export async function recordBreakGlassToken(db: Queryable, eventId: string, token: Omit<BreakGlassToken, 'issuedAt'>): Promise<void> {
  await db.query(
    `INSERT INTO break_glass_tokens (event_id, token_ref, kind, client_id, audience, scope, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id, token_ref) DO NOTHING`,
    [eventId, token.tokenRef, token.kind, token.clientId, token.audience, token.scope, token.expiresAt],
  );
}

export async function listBreakGlassTokens(db: Queryable, eventId: string): Promise<BreakGlassToken[]> {
  const { rows } = await db.query<{
    token_ref: string; kind: BreakGlassToken['kind']; client_id: string; audience: string | null; scope: string; issued_at: Date; expires_at: Date;
  }>('SELECT * FROM break_glass_tokens WHERE event_id = $1 ORDER BY issued_at, token_ref', [eventId]);
  return rows.map((r) => ({
    tokenRef: r.token_ref, kind: r.kind, clientId: r.client_id, audience: r.audience, scope: r.scope,
    issuedAt: new Date(r.issued_at), expiresAt: new Date(r.expires_at),
  }));
}

export class ReviewError extends Error {
  override name = 'ReviewError';
}

/** Closes an open review with its outcome. A closed review stays closed (no silent rewrite). */
export async function closeBreakGlassReview(
  db: Queryable, input: { id: string; outcome: ReviewOutcome; note: string; reviewer: string },
): Promise<BreakGlassEvent> {
  if (!REVIEW_OUTCOMES.includes(input.outcome)) throw new ReviewError('outcome must be appropriate or inappropriate');
  const note = input.note.trim();
  if (!note) throw new ReviewError('a review note is required');
  if (note.length > MAX_REVIEW_NOTE_LENGTH) throw new ReviewError(`the review note is longer than ${MAX_REVIEW_NOTE_LENGTH} characters`);
  const { rows } = await db.query<EventRow>(
    `UPDATE break_glass_events
        SET review_status = 'closed', review_outcome = $2, review_note = $3, reviewed_by = $4, reviewed_at = now()
      WHERE id = $1 AND review_status = 'open' RETURNING *`,
    [input.id, input.outcome, note, input.reviewer],
  );
  if (rows[0]) return fromRow(rows[0]);
  const existing = await findBreakGlassEvent(db, input.id);
  throw new ReviewError(existing ? 'this review is already closed' : 'no such break-glass event');
}

/** Ends every live emergency access of the user now; returns the events ended (their grants to revoke). */
export async function endUserBreakGlass(db: Queryable, userId: string): Promise<Array<{ id: string; grantId: string }>> {
  const { rows } = await db.query<{ id: string; grant_id: string }>(
    `UPDATE break_glass_events SET revoked_at = now()
      WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > now() RETURNING id, grant_id`,
    [userId],
  );
  return rows.map((r) => ({ id: r.id, grantId: r.grant_id }));
}

/** The administrator's switch: true takes the break-glass path away from the user. */
export async function setBreakGlassDisabled(db: Queryable, userId: string, disabled: boolean): Promise<boolean> {
  const { rowCount } = await db.query(
    'UPDATE users SET break_glass_disabled = $2, updated_at = now() WHERE id = $1 AND break_glass_disabled <> $2',
    [userId, disabled],
  );
  return rowCount > 0;
}
