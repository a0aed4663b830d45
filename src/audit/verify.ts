// Walks the chain in order and names the first record that was altered, forged, deleted, inserted
// or reordered.
import type { Queryable } from '../db/index.ts';
import { chainHash, GENESIS_HASH } from './chain.ts';
import { rowToRecord, type StoredAuditRow } from './log.ts';

export type VerifyResult =
  | { ok: true; count: number; headSeq: number | null; headHash: string }
  | { ok: false; count: number; seq: number; id: string; problem: 'altered' | 'broken_link' | 'gap'; message: string };

const PAGE = 1000;

export async function verifyAuditChain(db: Queryable, chainKey: Buffer): Promise<VerifyResult> {
  let previous: { seq: number; hash: string } | undefined;
  let count = 0;
  for (;;) {
    const { rows } = await db.query<StoredAuditRow>(
      'SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2',
      [previous?.seq ?? 0, PAGE],
    );
    for (const row of rows) {
      const record = rowToRecord(row);
      const expectedSeq = (previous?.seq ?? 0) + 1;
      const fail = (problem: 'altered' | 'broken_link' | 'gap', message: string): VerifyResult =>
        ({ ok: false, count, seq: record.seq, id: record.id, problem, message: `record seq ${record.seq} (id ${record.id}): ${message}` });
      if (chainHash(chainKey, record) !== row.hash) {
        return fail('altered', 'its content does not match its keyed hash (altered, forged or moved)');
      }
      if (record.seq !== expectedSeq) {
        return fail('gap', `expected seq ${expectedSeq}: record(s) ${expectedSeq}..${record.seq - 1} were deleted`);
      }
      if (record.prevHash !== (previous?.hash ?? GENESIS_HASH)) {
        return fail('broken_link', 'does not follow the record before it (a record was deleted, inserted or reordered)');
      }
      previous = { seq: record.seq, hash: row.hash };
      count += 1;
    }
    if (rows.length < PAGE) break;
  }
  return { ok: true, count, headSeq: previous?.seq ?? null, headHash: previous?.hash ?? GENESIS_HASH };
}
