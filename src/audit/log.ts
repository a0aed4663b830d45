// Writes audit events: pseudonymised, chained, append-only, and in the caller's transaction when the
// caller passes one, so the action and its record commit (or fail) together.
import { randomUUID } from 'node:crypto';

import { DatabaseUnavailableError } from '../db/db.ts';
import { OAuthStyleError } from '../errors.ts';
import type { Db, Queryable } from '../db/index.ts';
import type { Logger } from '../log.ts';
import { chainHash, GENESIS_HASH, type ChainedRecord } from './chain.ts';
import type { AuditDetailValue, AuditEventInput, AuditRequestContext } from './event.ts';
import { pseudonymise, type AuditKeys } from './keys.ts';
import { currentRequestContext } from './request-context.ts';

// All writers of every process take this lock in turn, so the chain never forks.
const CHAIN_LOCK_KEY = 7_362_002;
// Detail keys that must never reach the log, whatever a caller passes.
// Matched on the key lower-cased without separators: accessToken, id_token_hint, client-secret, ...
const FORBIDDEN_DETAIL = /password|secret|cookie|assertion|authorization|verifier|(token|tokenhint|^code)$/;
// A JWT or JWE under any key is a token value.
const LOOKS_LIKE_JWT = /^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\./;
const MAX_DETAIL_STRING = 256;
const EVENT_TYPE = /^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$/;
const OUTCOMES = new Set(['success', 'failure', 'denied', 'error']);
const SEVERITIES = new Set(['info', 'warning', 'high']);
// Events per group commit (18 parameters each, far below PostgreSQL's 65535).
const MAX_BATCH = 200;

export type StoredAuditRecord = ChainedRecord & { hash: string };

/**
 * A row the action itself writes, committed in the same transaction as its audit record (so neither
 * exists without the other). Rows of the same `kind` in one group commit are written by one statement.
 */
export interface CompanionWrite {
  kind: string;
  values: readonly unknown[];
  /** One statement writing all these rows (each the `values` of one companion of this kind). */
  combine(rows: ReadonlyArray<readonly unknown[]>): { sql: string; params: unknown[] };
}

interface Pending {
  event: AuditEventInput;
  context: AuditRequestContext | undefined;
  companion?: CompanionWrite | undefined;
  resolve(record: StoredAuditRecord): void;
  reject(err: unknown): void;
}

/**
 * The audit record could not be written, so the action does not happen. Shaped as an OAuth error
 * (503 temporarily_unavailable) so oidc-provider and our pages answer it cleanly.
 */
export class AuditWriteError extends OAuthStyleError {
  override name = 'AuditWriteError';
  constructor(readonly detail: string, options?: ErrorOptions) {
    super(503, 'temporarily_unavailable', 'the request could not be recorded, retry later', options);
  }
}

/**
 * Text exactly as PostgreSQL will store it: a lone UTF-16 surrogate would come back as U+FFFD and a
 * NUL is refused, and either would make the stored record differ from what was hashed.
 */
function storable(value: string): string {
  return value.toWellFormed().replace(/\0/g, '\uFFFD');
}
const storableOrNull = (value: string | undefined) => (value === undefined ? null : storable(value));

function keepDetail(key: string, value: unknown): boolean {
  if (FORBIDDEN_DETAIL.test(key.toLowerCase().replace(/[^a-z]/g, ''))) return false;
  if (typeof value === 'string') return value.length <= MAX_DETAIL_STRING && !LOOKS_LIKE_JWT.test(value); // identifiers, no prose
  if (Array.isArray(value)) return value.every((v) => typeof v === 'string' && v.length <= MAX_DETAIL_STRING && !LOOKS_LIKE_JWT.test(v));
  return value === null || typeof value === 'number' || typeof value === 'boolean';
}

function cleanDetails(details: AuditEventInput['details']): Record<string, AuditDetailValue> {
  const out: Record<string, AuditDetailValue> = {};
  for (const [key, value] of Object.entries(details ?? {})) {
    if (value === undefined || !keepDetail(key, value)) continue;
    out[storable(key)] = typeof value === 'string' ? storable(value) : Array.isArray(value) ? value.map(storable) : value;
  }
  return out;
}

/** Refused before it joins a batch, so one malformed event cannot fail the others in its commit. */
function assertWellFormed(event: AuditEventInput): void {
  if (!EVENT_TYPE.test(event.type) || !OUTCOMES.has(event.outcome) || (event.severity && !SEVERITIES.has(event.severity))) {
    throw new AuditWriteError(`malformed audit event ${JSON.stringify(event.type).slice(0, 80)}`);
  }
}

export interface StoredAuditRow extends Record<string, unknown> {
  seq: number;
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
  source_ip: string | null;
  details: Record<string, AuditDetailValue>;
  prev_hash: string;
  hash: string;
}

export function rowToRecord(row: StoredAuditRow): ChainedRecord {
  return {
    seq: Number(row.seq),
    id: row.id,
    occurredAt: new Date(row.occurred_at).toISOString(),
    type: row.type,
    outcome: row.outcome,
    severity: row.severity,
    actorUser: row.actor_user,
    actorClient: row.actor_client,
    actorCertThumbprint: row.actor_cert_thumbprint,
    targetClient: row.target_client,
    targetAudience: row.target_audience,
    patientPseudonym: row.patient_pseudonym,
    rule: row.rule,
    requestId: row.request_id,
    sourceIp: row.source_ip,
    details: row.details ?? {},
    prevHash: row.prev_hash,
  };
}

export class AuditLog {
  constructor(
    private readonly db: Db,
    readonly keys: AuditKeys,
    private readonly logger: Logger | undefined,
  ) {}

  pseudonym(kind: 'patient' | 'token' | 'username' | 'client', value: string): string {
    return pseudonymise(this.keys, kind, value);
  }

  /**
   * Appends one event and resolves once it is committed. With `tx`, it joins the caller's transaction
   * (the chain lock is then held until that transaction ends). Without, it joins the next group
   * commit: concurrent events share one transaction, one chain lock and one commit, so the chain's
   * serialisation costs one round of database work per batch, not per event.
   * Throws AuditWriteError when the event cannot be written: callers fail closed.
   */
  async record(event: AuditEventInput, tx?: Queryable, context = currentRequestContext(), companion?: CompanionWrite): Promise<StoredAuditRecord> {
    try {
      assertWellFormed(event);
      const [stored] = tx ? await this.appendAll(tx, [{ event, context, companion }]) : [await this.enqueue({ event, context, companion })];
      this.logger?.info({ audit: { ...stored, hash: undefined, prevHash: undefined } }, 'audit');
      return stored!;
    } catch (err) {
      if (err instanceof AuditWriteError) throw err;
      throw new AuditWriteError(`audit event ${event.type} could not be written`, { cause: err });
    }
  }

  private readonly queue: Pending[] = [];
  private flushing = false;

  private enqueue(item: Omit<Pending, 'resolve' | 'reject'>): Promise<StoredAuditRecord> {
    return new Promise((resolve, reject) => {
      this.queue.push({ ...item, resolve, reject });
      if (!this.flushing) void this.flush();
    });
  }

  private async flush(): Promise<void> {
    this.flushing = true;
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH);
      try {
        const stored = await this.db.transaction((tx) => this.appendAll(tx, batch));
        batch.forEach((item, i) => item.resolve(stored[i]!));
      } catch (err) {
        if (batch.length === 1 || err instanceof DatabaseUnavailableError) {
          for (const item of batch) item.reject(err);
          continue;
        }
        // Something in the batch was refused: write each on its own so only that one fails.
        for (const item of batch) {
          await this.db.transaction((tx) => this.appendAll(tx, [item])).then(([one]) => item.resolve(one!), item.reject);
        }
      }
    }
    this.flushing = false;
  }

  private async appendAll(q: Queryable, items: ReadonlyArray<Omit<Pending, 'resolve' | 'reject'>>): Promise<StoredAuditRecord[]> {
    await q.query('SELECT pg_advisory_xact_lock($1)', [CHAIN_LOCK_KEY]);
    const { rows } = await q.query<{ seq: number; hash: string }>('SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1');
    let previous = rows[0] ? { seq: Number(rows[0].seq), hash: rows[0].hash } : { seq: 0, hash: GENESIS_HASH };
    const stored = items.map(({ event, context }) => {
      const record = this.toRecord(event, context, previous);
      const withHash = { ...record, hash: chainHash(this.keys.chain, record) };
      previous = { seq: record.seq, hash: withHash.hash };
      return withHash;
    });
    const params: unknown[] = [];
    const tuples = stored.map((r) => {
      const values = [r.seq, r.id, r.occurredAt, r.type, r.outcome, r.severity, r.actorUser, r.actorClient,
        r.actorCertThumbprint, r.targetClient, r.targetAudience, r.patientPseudonym, r.rule, r.requestId, r.sourceIp,
        JSON.stringify(r.details), r.prevHash, r.hash];
      const first = params.length + 1;
      params.push(...values);
      return `(${values.map((_, i) => `$${first + i}${i === 15 ? '::jsonb' : ''}`).join(', ')})`;
    });
    await q.query(
      `INSERT INTO audit_events (seq, id, occurred_at, type, outcome, severity, actor_user, actor_client,
         actor_cert_thumbprint, target_client, target_audience, patient_pseudonym, rule, request_id, source_ip,
         details, prev_hash, hash)
       VALUES ${tuples.join(', ')}`,
      params,
    );
    // The actions' own rows, after their records: one statement per kind.
    const kinds = new Map<string, CompanionWrite[]>();
    for (const { companion } of items) if (companion) kinds.set(companion.kind, [...(kinds.get(companion.kind) ?? []), companion]);
    for (const companions of kinds.values()) {
      const { sql, params: rowParams } = companions[0]!.combine(companions.map((c) => c.values));
      await q.query(sql, rowParams);
    }
    return stored;
  }

  private toRecord(event: AuditEventInput, context: AuditRequestContext | undefined, previous: { seq: number; hash: string }): ChainedRecord {
    return {
      seq: previous.seq + 1,
      id: randomUUID(),
      occurredAt: new Date().toISOString(),
      type: event.type,
      outcome: event.outcome,
      severity: event.severity ?? (event.outcome === 'success' ? 'info' : 'warning'),
      actorUser: storableOrNull(event.actor?.userId),
      actorClient: storableOrNull(event.actor?.clientId),
      actorCertThumbprint: storableOrNull(event.actor?.certThumbprint ?? context?.certThumbprint),
      targetClient: storableOrNull(event.target?.clientId),
      targetAudience: storableOrNull(event.target?.audience),
      patientPseudonym: event.target?.patientId ? this.pseudonym('patient', event.target.patientId) : null,
      rule: storableOrNull(event.rule),
      requestId: storableOrNull(context?.requestId),
      sourceIp: storableOrNull(context?.sourceIp),
      details: cleanDetails(event.details),
      prevHash: previous.hash,
    };
  }
}
