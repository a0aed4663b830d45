// Recent audit events about one client or one user, newest first, for administrators (console, admin
// API). The audit log stores patients only as keyed pseudonyms; this read returns them as stored and
// never anything that could turn them back into patient ids. The request's source address and the
// chain hashes are left out: a reviewer of recent activity needs neither.
import type { Queryable } from '../db/index.ts';
import type { ChainedRecord } from './chain.ts';
import { rowToRecord, type StoredAuditRow } from './log.ts';

export const MAX_RECENT_AUDIT_EVENTS = 500;

/** An audit record as administrators see it: without the source address and the chain link. */
export type RecentAuditEvent = Omit<ChainedRecord, 'sourceIp' | 'prevHash' | 'occurredAt'> & { occurredAt: Date };

export interface RecentAuditFilter {
  /** Events where this client acted or was the target. */
  clientId?: string | undefined;
  /** Events where this user acted, or an administrative change whose target is this user. */
  userId?: string | undefined;
  /** 1-500 (default 50). */
  limit?: number | undefined;
}

/** Both filters given: events matching both. Neither: the most recent events of all. */
export async function recentAuditEvents(db: Queryable, filter: RecentAuditFilter = {}): Promise<RecentAuditEvent[]> {
  const limit = Math.min(Math.max(Math.trunc(filter.limit ?? 50) || 50, 1), MAX_RECENT_AUDIT_EVENTS);
  const { rows } = await db.query<StoredAuditRow>(
    `SELECT * FROM audit_events
      WHERE ($1::text IS NULL OR actor_client = $1 OR target_client = $1)
        AND ($2::text IS NULL OR actor_user = $2 OR details->>'target_user' = $2)
      ORDER BY seq DESC
      LIMIT $3`,
    [filter.clientId ?? null, filter.userId ?? null, limit],
  );
  return rows.map((row) => {
    const { sourceIp: _sourceIp, prevHash: _prevHash, occurredAt, ...event } = rowToRecord(row);
    return { ...event, occurredAt: new Date(occurredAt) };
  });
}
