// Resource servers (RFC 8707 resource indicators): who may receive access tokens, with which scopes,
// in which format (RFC 9068 JWT by default) and for how long.
import { z } from 'zod';

import { MAX_ACCESS_TOKEN_TTL } from '../config.ts';
import type { Queryable } from '../db/index.ts';
import { cacheableQuery } from '../db/read-cache.ts';

export interface ResourceServer {
  identifier: string;
  name: string;
  scope: string;
  accessTokenFormat: 'jwt' | 'opaque';
  accessTokenTtl: number | null;
  /** The client this resource server introspects tokens with (opaque tokens). */
  introspectionClientId: string | null;
}

export const ResourceServerSchema = z.object({
  identifier: z.url().refine((u) => !u.includes('#'), 'resource identifier must not contain a fragment'),
  name: z.string().min(1).max(200),
  scope: z.string().regex(/^\S+( \S+)*$/, 'scope is a space-separated list'),
  accessTokenFormat: z.enum(['jwt', 'opaque']).default('jwt'),
  accessTokenTtl: z.number().int().min(1).max(MAX_ACCESS_TOKEN_TTL).optional(),
  introspectionClientId: z.string().min(1).max(128).optional(),
});
export type ResourceServerInput = z.input<typeof ResourceServerSchema>;

interface Row extends Record<string, unknown> {
  identifier: string;
  name: string;
  scope: string;
  access_token_format: 'jwt' | 'opaque';
  access_token_ttl: number | null;
  introspection_client_id: string | null;
}

const fromRow = (row: Row): ResourceServer => ({
  identifier: row.identifier,
  name: row.name,
  scope: row.scope,
  accessTokenFormat: row.access_token_format,
  accessTokenTtl: row.access_token_ttl === null ? null : Number(row.access_token_ttl),
  introspectionClientId: row.introspection_client_id,
});

const FIND_RESOURCE_SERVER = cacheableQuery('SELECT * FROM resource_servers WHERE identifier = $1', ['resource_servers']);

export async function findResourceServer(db: Queryable, identifier: string): Promise<ResourceServer | undefined> {
  const { rows } = await db.query<Row>(FIND_RESOURCE_SERVER, [identifier]);
  return rows[0] && fromRow(rows[0]);
}

/** Every registered resource server, by identifier. */
export async function listResourceServers(db: Queryable): Promise<ResourceServer[]> {
  const { rows } = await db.query<Row>('SELECT * FROM resource_servers ORDER BY identifier');
  return rows.map(fromRow);
}

export async function upsertResourceServer(db: Queryable, input: ResourceServerInput): Promise<void> {
  const rs = ResourceServerSchema.parse(input);
  await db.query(
    `INSERT INTO resource_servers (identifier, name, scope, access_token_format, access_token_ttl, introspection_client_id)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (identifier) DO UPDATE SET name = EXCLUDED.name, scope = EXCLUDED.scope,
       access_token_format = EXCLUDED.access_token_format, access_token_ttl = EXCLUDED.access_token_ttl,
       introspection_client_id = EXCLUDED.introspection_client_id`,
    [rs.identifier, rs.name, rs.scope, rs.accessTokenFormat, rs.accessTokenTtl ?? null, rs.introspectionClientId ?? null],
  );
}

/** Does `clientId` introspect for one of these audiences (a resource server's own introspection client)? */
export async function introspectsFor(db: Queryable, clientId: string, audiences: readonly string[]): Promise<boolean> {
  if (!audiences.length) return false;
  const { rows } = await db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM resource_servers WHERE introspection_client_id = $1 AND identifier = ANY($2::text[])',
    [clientId, [...audiences]],
  );
  return (rows[0]?.n ?? 0) > 0;
}
