// Seed files: users, resource servers and clients in one JSON document, validated with clear errors.
import fs from 'node:fs/promises';

import type Provider from 'oidc-provider';
import { z } from 'zod';

import { NewUserSchema, createUser, findUserByUsername } from '../accounts/users.ts';
import type { Db } from '../db/index.ts';
import { ClientMetadataSchema, registerClient } from '../clients/register.ts';
import { ResourceServerSchema, upsertResourceServer } from '../oidc/resource-servers.ts';

export const SeedSchema = z.strictObject({
  users: z.array(NewUserSchema).default([]),
  resourceServers: z.array(ResourceServerSchema).default([]),
  clients: z.array(ClientMetadataSchema).default([]),
});
export type Seed = z.infer<typeof SeedSchema>;

export class SeedError extends Error {
  override name = 'SeedError';
}

export async function readSeedFile(file: string): Promise<Seed> {
  let json: unknown;
  try {
    json = JSON.parse(await fs.readFile(file, 'utf8'));
  } catch (err) {
    throw new SeedError(`cannot read seed file ${file}: ${(err as Error).message}`);
  }
  const parsed = SeedSchema.safeParse(json);
  if (!parsed.success) {
    throw new SeedError(`invalid seed file ${file}: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return parsed.data;
}

export interface SeedResult {
  users: string[];
  resourceServers: string[];
  clients: string[];
}

/** Applies a seed; existing users are left as they are, clients and resource servers are replaced. */
export async function applySeed(db: Db, provider: Provider, clientSecretKey: string, seed: Seed): Promise<SeedResult> {
  const result: SeedResult = { users: [], resourceServers: [], clients: [] };
  for (const rs of seed.resourceServers) {
    await upsertResourceServer(db, rs);
    result.resourceServers.push(rs.identifier);
  }
  for (const user of seed.users) {
    if (await findUserByUsername(db, user.username)) continue;
    await createUser(db, user);
    result.users.push(user.username);
  }
  for (const client of seed.clients) {
    const registered = await registerClient(db, provider, clientSecretKey, client, { replace: true });
    result.clients.push(registered.client_id);
  }
  return result;
}
