// Resource servers (RFC 8707 resource indicators): who may receive access tokens, with which scopes,
// in which format (RFC 9068 JWT by default) and for how long.
import { z } from 'zod';

import { MAX_ACCESS_TOKEN_TTL } from '../config.ts';
import type { Queryable } from '../db/index.ts';

export interface ResourceServer {
  identifier: string;
  name: string;
  scope: string;
  accessTokenFormat: 'jwt' | 'opaque';
  accessTokenTtl: number | null;
}

export const ResourceServerSchema = z.object({
  identifier: z.url().refine((u) => !u.includes('#'), 'resource identifier must not contain a fragment'),
  name: z.string().min(1).max(200),
  scope: z.string().regex(/^\S+( \S+)*$/, 'scope is a space-separated list'),
  accessTokenFormat: z.enum(['jwt', 'opaque']).default('jwt'),
  accessTokenTtl: z.number().int().min(1).max(MAX_ACCESS_TOKEN_TTL).optional(),
});
export type ResourceServerInput = z.input<typeof ResourceServerSchema>;

interface Row extends Record<string, unknown> {
  identifier: string;
  name: string;
  scope: string;
  access_token_format: 'jwt' | 'opaque';
  access_token_ttl: number | null;
}

export async function findResourceServer(db: Queryable, identifier: string): Promise<ResourceServer | undefined> {
  const { rows } = await db.query<Row>('SELECT * FROM resource_servers WHERE identifier = $1', [identifier]);
  const row = rows[0];
  return row && {
    identifier: row.identifier,
    name: row.name,
    scope: row.scope,
    accessTokenFormat: row.access_token_format,
    accessTokenTtl: row.access_token_ttl,
  };
}

export async function upsertResourceServer(db: Queryable, input: ResourceServerInput): Promise<void> {
  const rs = ResourceServerSchema.parse(input);
  await db.query(
    `INSERT INTO resource_servers (identifier, name, scope, access_token_format, access_token_ttl)
     VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (identifier) DO UPDATE SET name = EXCLUDED.name, scope = EXCLUDED.scope,
       access_token_format = EXCLUDED.access_token_format, access_token_ttl = EXCLUDED.access_token_ttl`,
    [rs.identifier, rs.name, rs.scope, rs.accessTokenFormat, rs.accessTokenTtl ?? null],
  );
}
