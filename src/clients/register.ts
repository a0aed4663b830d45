// Client registration shared by the seed, the CLI and (later) the admin API: validate RFC 7591
// metadata with oidc-provider's own schema, generate id and secret, store the secret as a digest.
import { randomBytes } from 'node:crypto';

import type Provider from 'oidc-provider';
import { z } from 'zod';

import type { Queryable } from '../db/index.ts';
import { digestClientSecret, generateClientSecret } from '../oidc/client-secrets.ts';
import { CLIENT_AUTH_METHODS } from '../oidc/provider.ts';
import { formatIssues } from '../validation.ts';

const SECRET_METHODS = new Set(['client_secret_basic', 'client_secret_post']);

export function usesClientSecret(metadata: { token_endpoint_auth_method?: string | undefined }): boolean {
  return SECRET_METHODS.has(metadata.token_endpoint_auth_method ?? 'client_secret_basic');
}

export const ClientMetadataSchema = z.looseObject({
  client_id: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{2,127}$/, 'client_id must be 3-128 characters of A-Z a-z 0-9 . _ -').optional(),
  client_secret: z.string().min(32, 'client_secret must have at least 32 characters').max(256).optional(),
  client_name: z.string().min(1).max(200).optional(),
  token_endpoint_auth_method: z.string().optional(),
  scope: z.string().optional(),
});
export type ClientMetadataInput = z.input<typeof ClientMetadataSchema>;

export interface RegisteredClient {
  client_id: string;
  client_secret?: string;
}

export class ClientRegistrationError extends Error {
  override name = 'ClientRegistrationError';
}

export async function registerClient(
  db: Queryable,
  provider: Provider,
  clientSecretKey: string,
  input: unknown,
  options: { replace?: boolean } = {},
): Promise<RegisteredClient> {
  const parsed = ClientMetadataSchema.safeParse(input);
  if (!parsed.success) {
    throw new ClientRegistrationError(formatIssues(parsed.error.issues));
  }
  const metadata: Record<string, unknown> = { ...parsed.data };
  metadata.client_id ??= `client-${randomBytes(12).toString('base64url')}`;
  const method = String(metadata.token_endpoint_auth_method ?? 'client_secret_basic');
  if (!CLIENT_AUTH_METHODS.includes(method as never)) {
    throw new ClientRegistrationError(`token_endpoint_auth_method must be one of ${CLIENT_AUTH_METHODS.join(', ')}`);
  }
  let secret: string | undefined;
  if (SECRET_METHODS.has(method)) {
    secret = typeof metadata.client_secret === 'string' ? metadata.client_secret : generateClientSecret();
    metadata.client_secret = secret;
  } else if (metadata.client_secret !== undefined) {
    throw new ClientRegistrationError(`client_secret is only for client_secret_basic or client_secret_post, not ${method}`);
  }

  try {
    // Client.validate applies every rule oidc-provider applies when it loads the client.
    await (provider.Client as unknown as { validate(m: unknown): Promise<void> }).validate(metadata);
  } catch (err) {
    const e = err as { error_description?: string; message?: string };
    throw new ClientRegistrationError(e.error_description ?? e.message ?? 'invalid client metadata');
  }
  if (secret) metadata.client_secret = digestClientSecret(clientSecretKey, secret);

  const sql = options.replace
    ? `INSERT INTO clients (client_id, metadata) VALUES ($1, $2::jsonb)
       ON CONFLICT (client_id) DO UPDATE SET metadata = EXCLUDED.metadata, updated_at = now()`
    : 'INSERT INTO clients (client_id, metadata) VALUES ($1, $2::jsonb) ON CONFLICT (client_id) DO NOTHING';
  const result = await db.query(sql, [metadata.client_id, JSON.stringify(metadata)]);
  if (result.rowCount === 0) throw new ClientRegistrationError(`client ${String(metadata.client_id)} already exists`);
  return secret ? { client_id: String(metadata.client_id), client_secret: secret } : { client_id: String(metadata.client_id) };
}

export async function countClients(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM clients');
  return rows[0]?.n ?? 0;
}
