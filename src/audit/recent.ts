// Recent audit events about one client or one user, newest first, for administrators (console, admin
// API). The audit log stores patients only as keyed pseudonyms; this read returns them as stored and
// never anything that could turn them back into patient ids. The request's source address and the
// chain hashes are left out: a reviewer of recent activity needs neither.
import type { Queryable } from '../db/index.ts';
import type { AuditDetailValue } from './event.ts';

export const MAX_RECENT_AUDIT_EVENTS = 500;

export interface RecentAuditEvent {
  seq: number;
  id: string;
  occurredAt: Date;
  type: string;
  outcome: string;
  severity: string;
  actorUser: string | null;
  actorClient: string | null;
  actorCertThumbprint: string | null;
  targetClient: string | null;
  targetAudience: string | null;
  /** The patient's keyed pseudonym (never the patient id). */
  patientPseudonym: string | null;
  rule: string | null;
  requestId: string | null;
  details: Record<string, AuditDetailValue>;
}

export interface RecentAuditFilter {
  /** Events where this client acted or was the target. */
  clientId?: string | undefined;
  /** Events where this user acted, or an administrative change whose target is this user. */
  userId?: string | undefined;
  /** 1-500 (default 50). */
  limit?: number | undefined;
}

interface Row extends Record<string, unknown> {
  seq: number | string;
  id: string;
  occurred_at: Date | string;
  type: string;
  outcome: string;
  severity: string;
  actor_user: string | null;
  actor_client: string | null;
  actor_cert_thumbprint: string | null;
  target_client: string | null;
  target_audience: string | null;
  patient_pseudonym: string | null;
  rule: string | null;
  request_id: string | null;
  details: Record<string, AuditDetailValue> | null;
}

/** Both filters given: events matching both. Neither: the most recent events of all. */
export async function recentAuditEvents(db: Queryable, filter: RecentAuditFilter = {}): Promise<RecentAuditEvent[]> {
  const limit = Math.min(Math.max(Math.trunc(filter.limit ?? 50) || 50, 1), MAX_RECENT_AUDIT_EVENTS);
  const { rows } = await db.query<Row>(
    `SELECT seq, id, occurred_at, type, outcome, severity, actor_user, actor_client, actor_cert_thumbprint,
            target_client, target_audience, patient_pseudonym, rule, request_id, details
       FROM audit_events
      WHERE ($1::text IS NULL OR actor_client = $1 OR target_client = $1)
        AND ($2::text IS NULL OR actor_user = $2 OR details->>'target_user' = $2)
      ORDER BY seq DESC
      LIMIT $3`,
    [filter.clientId ?? null, filter.userId ?? null, limit],
  );
  return rows.map((r) => ({
    seq: Number(r.seq),
    id: String(r.id),
    occurredAt: new Date(r.occurred_at),
    type: r.type,
    outcome: r.outcome,
    severity: r.severity,
    actorUser: r.actor_user,
    actorClient: r.actor_client,
    actorCertThumbprint: r.actor_cert_thumbprint,
    targetClient: r.target_client,
    targetAudience: r.target_audience,
    patientPseudonym: r.patient_pseudonym,
    rule: r.rule,
    requestId: r.request_id,
    details: r.details ?? {},
  }));
}
