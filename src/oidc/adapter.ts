// oidc-provider storage adapter on our Db: one table for every model, plus the clients table.
// Nothing lives in process memory, so any number of processes serve one issuer.
import { AsyncLocalStorage } from 'node:async_hooks';

import type { Adapter, AdapterConstructor, AdapterPayload } from 'oidc-provider';
import { errors } from 'oidc-provider';

import type { StorageAudit } from '../audit/storage-events.ts';
import type { Db, Queryable } from '../db/index.ts';
import { cacheableQuery } from '../db/read-cache.ts';
import { digestClientSecret, isClientSecretDigest } from './client-secrets.ts';

interface PayloadRow extends Record<string, unknown> {
  payload: AdapterPayload;
  consumed_at: Date | string | null;
}

const epoch = (value: Date | string) => Math.floor(new Date(value).getTime() / 1000);

function withConsumed(row: PayloadRow | undefined): AdapterPayload | undefined {
  if (!row) return undefined;
  return row.consumed_at ? { ...row.payload, consumed: epoch(row.consumed_at) } : row.payload;
}

function serialise(payload: AdapterPayload): string {
  const json = JSON.stringify(payload);
  // PostgreSQL jsonb cannot hold NUL; such input is malformed, not a server fault.
  if (json.includes('\\u0000')) throw new errors.InvalidRequest('request contains a NUL character');
  return json;
}

const NOT_EXPIRED = '(expires_at IS NULL OR expires_at > now())';

/** How deep a delegation chain of grants may go (exchange policies allow at most 5 actors). */
export const MAX_GRANT_DEPTH = 8;

/** A grant and every grant derived from it (grant_links), the grant itself first. */
export async function grantFamily(db: Queryable, grantId: string): Promise<string[]> {
  const { rows } = await db.query<{ id: string }>(
    `WITH RECURSIVE family(id, depth) AS (
       SELECT $1::text, 0
       UNION
       SELECT l.child_grant_id, f.depth + 1 FROM grant_links l JOIN family f ON l.parent_grant_id = f.id
        WHERE f.depth < $2
     ) SELECT id FROM family ORDER BY depth`,
    [grantId, MAX_GRANT_DEPTH],
  );
  return rows.map((r) => r.id);
}

/** Records that `childGrantId` was derived from `parentGrantId` (token exchange). */
/** A stored artefact and whether the grant it belongs to is still there (one query). */
export async function findWithGrant(db: Queryable, model: string, id: string): Promise<{ payload: AdapterPayload; grantAlive: boolean } | undefined> {
  const { rows } = await db.query<PayloadRow & { grant_alive: boolean }>(
    `SELECT t.payload, t.consumed_at,
            EXISTS (SELECT 1 FROM oidc_payloads g
                     WHERE g.model = 'Grant' AND g.id = t.grant_id AND (g.expires_at IS NULL OR g.expires_at > now())) AS grant_alive
       FROM oidc_payloads t
      WHERE t.model = $1 AND t.id = $2 AND (t.expires_at IS NULL OR t.expires_at > now())`,
    [model, id],
  );
  const payload = withConsumed(rows[0]);
  return payload && { payload, grantAlive: rows[0]!.grant_alive };
}

const childGrantLink = new AsyncLocalStorage<{ parentGrantId: string; expiresAt: Date }>();

/**
 * Runs `save` (which saves one Grant through the adapter) so that the grant is stored as a child of
 * `parentGrantId`: its row and its link are written by one statement, so neither exists without the
 * other and a revocation of the parent reaches it from the moment it exists.
 */
export function saveAsChildGrant<T>(parentGrantId: string, expiresAt: Date, save: () => Promise<T>): Promise<T> {
  return childGrantLink.run({ parentGrantId, expiresAt }, save);
}

export async function linkChildGrant(db: Queryable, childGrantId: string, parentGrantId: string, expiresAt: Date): Promise<void> {
  await db.query(
    'INSERT INTO grant_links (child_grant_id, parent_grant_id, expires_at) VALUES ($1, $2, $3)',
    [childGrantId, parentGrantId, expiresAt],
  );
}

/** Are all of these stored artefacts still there (not revoked, not expired)? One query. */
export async function allAlive(db: Queryable, artefacts: ReadonlyArray<{ model: string; id: string }>): Promise<boolean> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM oidc_payloads
      WHERE (model, id) IN (SELECT * FROM unnest($1::text[], $2::text[])) AND ${NOT_EXPIRED}`,
    [artefacts.map((a) => a.model), artefacts.map((a) => a.id)],
  );
  return rows[0]?.n === new Set(artefacts.map((a) => `${a.model}\u0000${a.id}`)).size;
}

/**
 * Deletes every stored artefact of a grant (tokens, codes, the grant itself) in one statement: for a
 * detected replay, where the whole grant is presumed stolen.
 */
export async function revokeWholeGrant(db: Queryable, grantId: string, audit?: StorageAudit): Promise<number> {
  const family = await grantFamily(db, grantId);
  const result = await db.query(
    `DELETE FROM oidc_payloads WHERE grant_id = ANY($1::text[]) OR (model = 'Grant' AND id = ANY($1::text[])) RETURNING model, payload`,
    [family],
  );
  // oidc-provider revokes a grant once per model; only the call that removed something is an event.
  if (result.rowCount > 0) await audit?.grantRevoked(db, grantId, result.rows as { model: string; payload: AdapterPayload }[]);
  return result.rowCount;
}

/** Removes expired rows; returns how many. Called on a timer by every process (cheap, idempotent). */
export async function sweepExpired(db: Queryable): Promise<number> {
  const result = await db.query('DELETE FROM oidc_payloads WHERE expires_at <= now()');
  await db.query('DELETE FROM grant_links WHERE expires_at <= now()');
  return result.rowCount;
}

/** Inserts (or replaces) payload rows: [model, id, json, grant_id, user_code, uid, expires_in seconds | null]. */
function upsertPayloads(rows: ReadonlyArray<readonly unknown[]>): { sql: string; params: unknown[] } {
  const params: unknown[] = [];
  const tuples = rows.map((row) => {
    const at = params.length;
    params.push(...row);
    const p = (i: number) => `$${at + i}`;
    return `(${p(1)}, ${p(2)}, ${p(3)}::jsonb, ${p(4)}, ${p(5)}, ${p(6)}, CASE WHEN ${p(7)}::double precision IS NULL THEN NULL
              ELSE now() + make_interval(secs => ${p(7)}::double precision) END)`;
  });
  return {
    sql: `INSERT INTO oidc_payloads (model, id, payload, grant_id, user_code, uid, expires_at)
          VALUES ${tuples.join(', ')}
          ON CONFLICT (model, id) DO UPDATE SET payload = EXCLUDED.payload, grant_id = EXCLUDED.grant_id,
            user_code = EXCLUDED.user_code, uid = EXCLUDED.uid, expires_at = EXCLUDED.expires_at`,
    params,
  };
}

class PayloadAdapter implements Adapter {
  constructor(private readonly db: Db, private readonly model: string, private readonly audit: StorageAudit | undefined) {}

  private get auditor(): StorageAudit | undefined {
    return this.audit?.covers(this.model) ? this.audit : undefined;
  }

  /** Rare changes (revocations, replays, session ends) write their event in the same transaction. */
  private audited<T>(fn: (q: Queryable, audit: StorageAudit | undefined) => Promise<T>): Promise<T> {
    const audit = this.auditor;
    return audit ? this.db.transaction((tx) => fn(tx, audit)) : fn(this.db, undefined);
  }

  async upsert(id: string, payload: AdapterPayload, expiresIn?: number): Promise<void> {
    const json = serialise(payload);
    if (this.model === 'ReplayDetection') {
      // Atomic "first one wins": oidc-provider's find-then-save would let two processes both pass.
      const inserted = await this.db.query(
        `INSERT INTO oidc_payloads (model, id, payload, expires_at)
         VALUES ($1, $2, $3::jsonb, now() + make_interval(secs => $4))
         ON CONFLICT (model, id) DO UPDATE SET payload = EXCLUDED.payload, expires_at = EXCLUDED.expires_at
           WHERE oidc_payloads.expires_at <= now()`,
        [this.model, id, json, expiresIn ?? 0],
      );
      if (inserted.rowCount === 0) throw new errors.InvalidClientAuth('client assertion tokens must only be used once');
      return;
    }
    const row = [this.model, id, json, payload.grantId ?? null, payload.userCode ?? null, payload.uid ?? null, expiresIn ?? null];
    // Issuing is frequent: the token's row and its event join the audit log's group commit and are
    // committed together, so a token whose record could not be written never exists (fail closed).
    // Tokens and codes are saved exactly once (fresh random ids), so every save is an issue.
    if (this.auditor?.recordsIssue(this.model)) {
      await this.auditor.issued(undefined, this.model, id, payload, expiresIn, { kind: 'oidc_payloads', values: row, combine: upsertPayloads });
      return;
    }
    const { sql, params } = upsertPayloads([row]);
    const link = this.model === 'Grant' ? childGrantLink.getStore() : undefined;
    if (link) {
      const linked = await this.db.query(
        `WITH saved AS (${sql} RETURNING id)
         INSERT INTO grant_links (child_grant_id, parent_grant_id, expires_at)
         SELECT id, $${params.length + 1}, $${params.length + 2} FROM saved`,
        [...params, link.parentGrantId, link.expiresAt],
      );
      if (linked.rowCount !== 1) throw new Error('child grant not linked');
      return;
    }
    await this.db.query(sql, params);
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    const { rows } = await this.db.query<PayloadRow>(
      `SELECT payload, consumed_at FROM oidc_payloads WHERE model = $1 AND id = $2 AND ${NOT_EXPIRED}`,
      [this.model, id],
    );
    const row = rows[0];
    // A spent code looked up again is a redemption attempt (codes are only ever looked up to be
    // redeemed): oidc-provider refuses it and revokes the grant; the attempt itself is recorded here.
    if (row?.consumed_at && this.model === 'AuthorizationCode') await this.auditor?.replayed(this.db, this.model, id, row.payload);
    return withConsumed(row);
  }

  async findByUid(uid: string): Promise<AdapterPayload | undefined> {
    const { rows } = await this.db.query<PayloadRow>(
      `SELECT payload, consumed_at FROM oidc_payloads WHERE model = $1 AND uid = $2 AND ${NOT_EXPIRED} LIMIT 1`,
      [this.model, uid],
    );
    return withConsumed(rows[0]);
  }

  async findByUserCode(userCode: string): Promise<AdapterPayload | undefined> {
    const { rows } = await this.db.query<PayloadRow>(
      `SELECT payload, consumed_at FROM oidc_payloads WHERE model = $1 AND user_code = $2 AND ${NOT_EXPIRED} LIMIT 1`,
      [this.model, userCode],
    );
    return withConsumed(rows[0]);
  }

  /**
   * Marks the row consumed only if nobody did before (atomic in SQL). oidc-provider checks
   * `consumed` before calling this, so losing here means another process redeemed it in between:
   * treat it as the replay it is (revoke the grant, invalid_grant), as oidc-provider does for a
   * sequential replay.
   */
  async consume(id: string): Promise<void> {
    // Atomic first (two processes must never both redeem), then the event; if it cannot be written
    // the request fails and the code stays spent: nothing is issued without a record.
    const { rows } = await this.db.query<{ payload: AdapterPayload }>(
      `UPDATE oidc_payloads SET consumed_at = now()
       WHERE model = $1 AND id = $2 AND consumed_at IS NULL AND ${NOT_EXPIRED} RETURNING payload`,
      [this.model, id],
    );
    if (rows[0]) {
      await this.auditor?.consumed(undefined, this.model, id, rows[0].payload);
      return;
    }
    await this.audited(async (q, audit) => {
      const { rows: existing } = await q.query<{ payload: AdapterPayload }>(
        'SELECT payload FROM oidc_payloads WHERE model = $1 AND id = $2',
        [this.model, id],
      );
      const payload = existing[0]?.payload;
      await audit?.replayed(q, this.model, id, payload);
      if (payload?.grantId) await revokeWholeGrant(q, payload.grantId, audit);
    });
    throw new errors.InvalidGrant('grant source already consumed');
  }

  async destroy(id: string): Promise<void> {
    await this.audited(async (q, audit) => {
      const { rows } = await q.query<{ payload: AdapterPayload }>(
        'DELETE FROM oidc_payloads WHERE model = $1 AND id = $2 RETURNING payload',
        [this.model, id],
      );
      if (rows[0]) await audit?.destroyed(q, this.model, id, rows[0].payload);
      // A revoked grant takes every grant derived from it (token exchange) along.
      if (this.model === 'Grant') {
        for (const child of (await grantFamily(q, id)).slice(1)) await revokeWholeGrant(q, child, audit);
      }
    });
  }

  /**
   * This model's artefacts of the grant only: oidc-provider calls it per model and destroys the
   * Grant itself separately when its revokeGrantPolicy says so (that destroy is the audited event).
   */
  async revokeByGrantId(grantId: string): Promise<void> {
    // Derived grants (token exchange) lose this model's artefacts too: a child never outlives its parent.
    await this.db.query(
      'DELETE FROM oidc_payloads WHERE model = $1 AND grant_id = ANY($2::text[])',
      [this.model, await grantFamily(this.db, grantId)],
    );
  }
}

/** Clients live in their own table so the admin tools can list and edit them. */
/**
 * RFC 8705 §3: every confidential client gets certificate-bound access tokens unless its registration
 * says otherwise; a public client opts in (its refresh tokens are then bound too).
 */
export function withCertificateBindingDefault(metadata: AdapterPayload): AdapterPayload {
  const confidential = (metadata.token_endpoint_auth_method ?? 'client_secret_basic') !== 'none';
  if (!confidential || metadata.tls_client_certificate_bound_access_tokens !== undefined) return metadata;
  return { ...metadata, tls_client_certificate_bound_access_tokens: true };
}

/**
 * Client metadata as it is stored: a client secret only as its keyed digest. oidc-provider hands a
 * clear secret to the adapter when it creates one (RFC 7591/7592 registration); it is digested here,
 * and with no key to digest it the write is refused (a clear secret is never stored).
 */
export function storableClientMetadata(payload: AdapterPayload, clientSecretKey: string | undefined): AdapterPayload {
  const secret = payload.client_secret;
  if (secret === undefined || isClientSecretDigest(secret)) return payload;
  if (typeof secret !== 'string' || !clientSecretKey) throw new Error('refusing to store a client secret that is not a digest');
  return { ...payload, client_secret: digestClientSecret(clientSecretKey, secret) };
}

/**
 * Writes a client (its secret digested). `create`: only a new client id, resolving to false when the id
 * is taken; otherwise insert or replace. Callers pass their transaction to write more with it.
 */
export async function storeClient(
  q: Queryable, id: string, payload: AdapterPayload, clientSecretKey: string | undefined, options: { create?: boolean } = {},
): Promise<boolean> {
  const result = await q.query(
    `INSERT INTO clients (client_id, metadata) VALUES ($1, $2::jsonb)
     ON CONFLICT (client_id) DO ${options.create ? 'NOTHING' : 'UPDATE SET metadata = EXCLUDED.metadata, updated_at = now()'}`,
    [id, serialise(storableClientMetadata(payload, clientSecretKey))],
  );
  return result.rowCount > 0;
}

const FIND_ENABLED_CLIENT = cacheableQuery('SELECT metadata FROM clients WHERE client_id = $1 AND disabled_at IS NULL', ['clients']);

class ClientAdapter implements Adapter {
  constructor(private readonly db: Db, private readonly clientSecretKey: string | undefined) {}

  async upsert(id: string, payload: AdapterPayload): Promise<void> {
    await storeClient(this.db, id, payload, this.clientSecretKey);
  }

  async find(id: string): Promise<AdapterPayload | undefined> {
    // A disabled client is unknown to oidc-provider: no authentication, no token, no introspection.
    const { rows } = await this.db.query<{ metadata: AdapterPayload }>(FIND_ENABLED_CLIENT, [id]);
    const metadata = rows[0]?.metadata;
    return metadata && withCertificateBindingDefault(metadata);
  }

  async destroy(id: string): Promise<void> {
    await this.db.query('DELETE FROM clients WHERE client_id = $1', [id]);
  }

  findByUid(): Promise<undefined> { return Promise.resolve(undefined); }
  findByUserCode(): Promise<undefined> { return Promise.resolve(undefined); }
  consume(): Promise<undefined> { return Promise.resolve(undefined); }
  revokeByGrantId(): Promise<undefined> { return Promise.resolve(undefined); }
}

export interface AdapterOptions {
  /** Digests client secrets oidc-provider stores (dynamic registration); without it such a write is refused. */
  clientSecretKey?: string | undefined;
}

export function createAdapter(db: Db, audit?: StorageAudit, options: AdapterOptions = {}): AdapterConstructor {
  return class StorageAdapter {
    constructor(model: string) {
      // Returning an object from a constructor is how oidc-provider's class-style factory gets our instance.
      return model === 'Client' ? new ClientAdapter(db, options.clientSecretKey) : new PayloadAdapter(db, model, audit);
    }
  } as unknown as AdapterConstructor;
}
