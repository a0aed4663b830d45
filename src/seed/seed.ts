// Seed files: users, resource servers and clients in one JSON document, validated with clear errors.
import fs from 'node:fs/promises';

import type Provider from 'oidc-provider';
import { z } from 'zod';

import { NewUserSchema, createUser, findUserByUsername } from '../accounts/users.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Db } from '../db/index.ts';
import { ClientMetadataSchema, ClientRegistrationError, registerClient, usesClientSecret } from '../clients/register.ts';
import { ResourceServerSchema, upsertResourceServer } from '../oidc/resource-servers.ts';
import { formatIssues } from '../validation.ts';

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
    throw new SeedError(`invalid seed file ${file}: ${formatIssues(parsed.error.issues)}`);
  }
  return parsed.data;
}

export interface SeedResult {
  users: string[];
  resourceServers: string[];
  clients: string[];
}

/**
 * Applies a seed in one transaction (all or nothing); existing users are left as they are, clients
 * and resource servers are replaced. Seed clients that authenticate with a secret must give it: a
 * generated one would be shown to nobody.
 */
export async function applySeed(db: Db, provider: Provider, clientSecretKey: string, seed: Seed, audit?: AuditLog): Promise<SeedResult> {
  return db.transaction(async (tx) => {
    const result: SeedResult = { users: [], resourceServers: [], clients: [] };
    for (const rs of seed.resourceServers) {
      await upsertResourceServer(tx, rs);
      result.resourceServers.push(rs.identifier);
    }
    for (const user of seed.users) {
      if (await findUserByUsername(tx, user.username)) continue;
      await createUser(tx, user);
      result.users.push(user.username);
    }
    for (const [index, client] of seed.clients.entries()) {
      try {
        if (usesClientSecret(client) && client.client_secret === undefined) {
          throw new ClientRegistrationError('client_secret is required in a seed file for client_secret_basic/client_secret_post clients');
        }
        const registered = await registerClient(tx, provider, clientSecretKey, client, { replace: true });
        result.clients.push(registered.client_id);
      } catch (err) {
        if (err instanceof ClientRegistrationError) throw new SeedError(`clients.${index}: ${err.message}`);
        throw err;
      }
    }
    await audit?.record({
      type: 'admin.seed_applied',
      outcome: 'success',
      rule: 'admin.seed',
      // Ids only: usernames are not recorded, the users' ids are.
      details: { users_created: result.users.length, resource_servers: result.resourceServers, clients: result.clients },
    }, tx);
    return result;
  });
}
