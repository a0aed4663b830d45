// Registered clients as administrators see and change them (admin API, console). Every change goes
// through oidc-provider's own metadata validation plus our policy (src/clients/metadata-policy.ts);
// secrets are stored as digests and never shown again.
import type Provider from 'oidc-provider';

import type { Queryable } from '../db/index.ts';
import { digestClientSecret, generateClientSecret, isClientSecretDigest } from '../oidc/client-secrets.ts';
import { ClientRegistrationError, usesClientSecret } from './register.ts';

export interface ClientRecord {
  clientId: string;
  /** Stored metadata without the secret digest. */
  metadata: Record<string, unknown>;
  hasSecret: boolean;
  disabledAt: Date | null;
  createdAt: Date;
  updatedAt: Date;
}

interface ClientRow extends Record<string, unknown> {
  client_id: string;
  metadata: Record<string, unknown>;
  disabled_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

const fromRow = (r: ClientRow): ClientRecord => {
  const { client_secret: secret, ...metadata } = r.metadata;
  return {
    clientId: r.client_id,
    metadata,
    hasSecret: isClientSecretDigest(secret),
    disabledAt: r.disabled_at ? new Date(r.disabled_at) : null,
    createdAt: new Date(r.created_at),
    updatedAt: new Date(r.updated_at),
  };
};

/** What an administrator reads: the metadata (no secret), whether a secret exists, the state. */
export function clientRepresentation(c: ClientRecord): Record<string, unknown> {
  return {
    ...c.metadata,
    client_id: c.clientId,
    has_client_secret: c.hasSecret,
    disabled: c.disabledAt !== null,
    disabled_at: c.disabledAt?.toISOString() ?? null,
    created_at: c.createdAt.toISOString(),
    updated_at: c.updatedAt.toISOString(),
  };
}

/** Fields an administrator may not set through an update (identity, secret, bookkeeping). */
const READ_ONLY_FIELDS = ['client_id', 'client_secret', 'has_client_secret', 'disabled', 'disabled_at', 'created_at', 'updated_at',
  'registration_access_token', 'registration_client_uri', 'client_id_issued_at', 'client_secret_expires_at'];

export async function findClientRecord(db: Queryable, clientId: string, options: { forUpdate?: boolean } = {}): Promise<ClientRecord | undefined> {
  const { rows } = await db.query<ClientRow>(
    `SELECT client_id, metadata, disabled_at, created_at, updated_at FROM clients WHERE client_id = $1${options.forUpdate ? ' FOR UPDATE' : ''}`,
    [clientId],
  );
  return rows[0] && fromRow(rows[0]);
}

/** Clients whose id or name contains `search` (case-insensitive), by id; at most `limit`. */
export async function listClientRecords(db: Queryable, filter: { search?: string | undefined; limit?: number | undefined } = {}): Promise<ClientRecord[]> {
  const pattern = filter.search ? `%${filter.search.replace(/[\\%_]/g, (c) => `\\${c}`)}%` : null;
  const { rows } = await db.query<ClientRow>(
    `SELECT client_id, metadata, disabled_at, created_at, updated_at FROM clients
      WHERE $1::text IS NULL OR client_id ILIKE $1 OR metadata->>'client_name' ILIKE $1
      ORDER BY client_id LIMIT $2`,
    [pattern, Math.min(Math.max(filter.limit ?? 100, 1), 500)],
  );
  return rows.map(fromRow);
}

async function validate(provider: Provider, metadata: Record<string, unknown>): Promise<void> {
  // Throws oidc-provider's InvalidClientMetadata (invalid_client_metadata / invalid_redirect_uri).
  await (provider.Client as unknown as { validate(m: unknown): Promise<void> }).validate(metadata);
}

async function store(db: Queryable, clientId: string, metadata: Record<string, unknown>): Promise<ClientRecord> {
  const { rows } = await db.query<ClientRow>(
    `UPDATE clients SET metadata = $2::jsonb, updated_at = now() WHERE client_id = $1
     RETURNING client_id, metadata, disabled_at, created_at, updated_at`,
    [clientId, JSON.stringify(metadata)],
  );
  return fromRow(rows[0]!);
}

async function storedSecret(db: Queryable, clientId: string): Promise<string | undefined> {
  const { rows } = await db.query<{ secret: string | null }>("SELECT metadata->>'client_secret' AS secret FROM clients WHERE client_id = $1", [clientId]);
  return rows[0]?.secret ?? undefined;
}

/**
 * Replaces the client's metadata (the client id and the secret stay). Switching to a secret method
 * without a secret yet generates one, returned once.
 */
export async function replaceClientMetadata(
  tx: Queryable, provider: Provider, clientSecretKey: string, current: ClientRecord, input: Record<string, unknown>,
): Promise<{ record: ClientRecord; clientSecret?: string }> {
  const offending = READ_ONLY_FIELDS.find((f) => f in input && f !== 'client_id');
  if (offending) throw new ClientRegistrationError(`${offending} cannot be changed here`);
  if (input.client_id !== undefined && input.client_id !== current.clientId) throw new ClientRegistrationError('client_id cannot be changed');
  const metadata: Record<string, unknown> = { ...input, client_id: current.clientId };
  let clientSecret: string | undefined;
  if (usesClientSecret(metadata as { token_endpoint_auth_method?: string })) {
    const existing = await storedSecret(tx, current.clientId);
    if (isClientSecretDigest(existing)) metadata.client_secret = existing;
    else metadata.client_secret = digestClientSecret(clientSecretKey, clientSecret = generateClientSecret());
  }
  await validate(provider, metadata);
  return { record: await store(tx, current.clientId, metadata), ...(clientSecret ? { clientSecret } : {}) };
}

/** A new secret for a secret-authenticated client; the old one stops working at once. Returned once. */
export async function rotateClientSecret(tx: Queryable, clientSecretKey: string, current: ClientRecord): Promise<{ record: ClientRecord; clientSecret: string }> {
  if (!usesClientSecret(current.metadata as { token_endpoint_auth_method?: string })) {
    throw new ClientRegistrationError(`token_endpoint_auth_method ${String(current.metadata.token_endpoint_auth_method)} has no client secret to rotate`);
  }
  const clientSecret = generateClientSecret();
  const record = await store(tx, current.clientId, { ...current.metadata, client_secret: digestClientSecret(clientSecretKey, clientSecret) });
  return { record, clientSecret };
}

/** The fields that identify a workload's certificate or keys (RFC 8705 §2.1.2, self-signed `jwks`). */
export const CREDENTIAL_FIELDS = [
  'tls_client_auth_subject_dn', 'tls_client_auth_san_dns', 'tls_client_auth_san_uri', 'tls_client_auth_san_ip', 'tls_client_auth_san_email',
  'jwks', 'jwks_uri',
] as const;

/** Replaces how the client proves itself (certificate subject, SAN, or keys); every other field stays. */
export async function replaceClientCredentials(
  tx: Queryable, provider: Provider, current: ClientRecord, input: Record<string, unknown>,
): Promise<ClientRecord> {
  const unknown = Object.keys(input).find((k) => !(CREDENTIAL_FIELDS as readonly string[]).includes(k));
  if (unknown) throw new ClientRegistrationError(`${unknown} is not a credential field (${CREDENTIAL_FIELDS.join(', ')})`);
  const metadata: Record<string, unknown> = Object.fromEntries(Object.entries(current.metadata).filter(([k]) => !(CREDENTIAL_FIELDS as readonly string[]).includes(k)));
  Object.assign(metadata, input);
  const secret = await storedSecret(tx, current.clientId);
  if (secret) metadata.client_secret = secret;
  await validate(provider, metadata);
  return store(tx, current.clientId, metadata);
}

/**
 * Disables (or enables) a client. Disabling also revokes everything issued to it (codes, tokens,
 * grants, JWT records): a disabled client has nothing left that works.
 */
export async function setClientDisabled(tx: Queryable, clientId: string, disabled: boolean): Promise<{ record: ClientRecord; revoked: number }> {
  const { rows } = await tx.query<ClientRow>(
    `UPDATE clients SET disabled_at = ${disabled ? 'coalesce(disabled_at, now())' : 'NULL'}, updated_at = now() WHERE client_id = $1
     RETURNING client_id, metadata, disabled_at, created_at, updated_at`,
    [clientId],
  );
  let revoked = 0;
  if (disabled) {
    const result = await tx.query("DELETE FROM oidc_payloads WHERE payload->>'clientId' = $1", [clientId]);
    revoked = result.rowCount;
  }
  return { record: fromRow(rows[0]!), revoked };
}
