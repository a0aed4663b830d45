// Reads stored audit events for export, page by page (never the whole table in memory), and writes
// them as JSON lines for a SIEM: every stored column in camelCase, the chain hashes included, details
// exactly as stored.
import type { Queryable } from '../db/index.ts';
import type { ChainedRecord } from './chain.ts';
import { rowToRecord, type StoredAuditRow } from './log.ts';

/** One exported event: every stored column (camelCase), in the table's column order. */
export interface ExportedAuditEvent extends ChainedRecord {
  hash: string;
}

export interface ExportRange {
  /** Events that occurred at or after this instant. */
  since: Date;
  /** Events that occurred before this instant (none: up to the newest event when the export starts). */
  until?: Date | undefined;
}

export const EXPORT_PAGE_SIZE = 500;

export function toExportedEvent(row: StoredAuditRow): ExportedAuditEvent {
  return { ...rowToRecord(row), hash: row.hash };
}

/**
 * The events in range, in chain order (seq), read in pages of `pageSize` rows. Events appended while
 * the export runs are left out: the export is the log as it stood when it started.
 */
export async function* readAuditEvents(
  db: Queryable,
  range: ExportRange,
  pageSize = EXPORT_PAGE_SIZE,
): AsyncGenerator<ExportedAuditEvent> {
  const since = range.since.toISOString();
  const until = range.until?.toISOString() ?? null;
  // First and last seq in range, found through the occurred_at index (writers of several processes
  // may disagree slightly on the clock, so seq order is only roughly time order: every page filters too).
  const { rows: bounds } = await db.query<{ first: number | string | null; last: number | string | null }>(
    `SELECT min(seq) AS first, (SELECT max(seq) FROM audit_events) AS last FROM audit_events
      WHERE occurred_at >= $1::timestamptz AND ($2::timestamptz IS NULL OR occurred_at < $2::timestamptz)`,
    [since, until],
  );
  if (bounds[0]?.first == null || bounds[0].last == null) return;
  let after = Number(bounds[0].first) - 1;
  const last = Number(bounds[0].last);
  for (;;) {
    const { rows } = await db.query<StoredAuditRow>(
      `SELECT * FROM audit_events
        WHERE seq > $1 AND seq <= $2 AND occurred_at >= $3::timestamptz
          AND ($4::timestamptz IS NULL OR occurred_at < $4::timestamptz)
        ORDER BY seq LIMIT $5`,
      [after, last, since, until, pageSize],
    );
    for (const row of rows) yield toExportedEvent(row);
    if (rows.length < pageSize) return;
    after = Number(rows[rows.length - 1]!.seq);
  }
}

/** One JSON line (with its newline) for the event. */
export function jsonLine(event: ExportedAuditEvent): string {
  return `${JSON.stringify(event)}\n`;
}
