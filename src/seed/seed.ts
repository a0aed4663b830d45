// Seed files: users, patients, care teams, role scope ceilings, resource servers, clients and token
// exchange policies in one JSON document, validated with clear errors.
import fs from 'node:fs/promises';

import type Provider from 'oidc-provider';
import { z } from 'zod';

import { NewUserSchema, createUser, findUserByUsername, normaliseUsername } from '../accounts/users.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Db } from '../db/index.ts';
import { ClientMetadataSchema, ClientRegistrationError, registerClient, usesClientSecret } from '../clients/register.ts';
import { ExchangePolicyError, ExchangePolicySchema, upsertExchangePolicy } from '../exchange/policies.ts';
import { setStepUpRule, StepUpRuleError, StepUpRuleSchema } from '../mfa/step-up-rules.ts';
import { ResourceServerSchema, upsertResourceServer } from '../oidc/resource-servers.ts';
import { addCareTeamMember } from '../smart/care-team.ts';
import { MAX_DISPLAY_NAME_LENGTH, normalisePatientId, SmartDataError, upsertPatient } from '../smart/patients.ts';
import { normaliseRoleScope, ROLE_PATTERN, setRoleScopes } from '../smart/roles.ts';
import { formatIssues } from '../validation.ts';

const PatientIdSchema = z.string().transform((id, ctx) => {
  const bare = normalisePatientId(id);
  if (bare === undefined) {
    ctx.addIssue({ code: 'custom', message: 'must be a FHIR Patient id (1-64 of A-Z a-z 0-9 - .), optionally as Patient/ID' });
    return z.NEVER;
  }
  return bare;
});

const InstantSchema = z.iso.datetime({ offset: true, error: 'must be an ISO 8601 date-time with a zone, e.g. 2025-01-31T08:00:00Z' })
  .transform((text) => new Date(text));

export const PatientSeedSchema = z.strictObject({
  id: PatientIdSchema,
  name: z.string().trim().min(1).max(MAX_DISPLAY_NAME_LENGTH),
});

export const CareTeamSeedSchema = z.strictObject({
  username: z.string().transform(normaliseUsername),
  patient: PatientIdSchema,
  validFrom: InstantSchema.optional(),
  validTo: InstantSchema.optional(),
}).refine((m) => !m.validFrom || !m.validTo || m.validTo > m.validFrom, { message: 'validTo must be after validFrom', path: ['validTo'] });

export const RoleSeedSchema = z.strictObject({
  name: z.string().regex(ROLE_PATTERN, 'role name: 1-32 characters of a-z 0-9 _ -, starting with a letter'),
  scope: z.string().superRefine((scope, ctx) => {
    try {
      normaliseRoleScope(scope);
    } catch (err) {
      if (!(err instanceof SmartDataError)) throw err;
      ctx.addIssue({ code: 'custom', message: err.message });
    }
  }),
});

export const SeedSchema = z.strictObject({
  users: z.array(NewUserSchema).default([]),
  patients: z.array(PatientSeedSchema).default([]),
  careTeam: z.array(CareTeamSeedSchema).default([]),
  roles: z.array(RoleSeedSchema).default([]),
  resourceServers: z.array(ResourceServerSchema).default([]),
  clients: z.array(ClientMetadataSchema).default([]),
  exchangePolicies: z.array(ExchangePolicySchema).default([]),
  stepUpRules: z.array(StepUpRuleSchema).default([]),
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
  /** Patient ids created or updated (only when the seed has patients). */
  patients?: string[];
  /** Care-team memberships written (only when the seed has careTeam entries). */
  careTeam?: number;
  /** Roles whose scope ceiling was set (only when the seed has roles). */
  roles?: string[];
  resourceServers: string[];
  clients: string[];
  /** Token exchange policies created or replaced (only when the seed has exchangePolicies). */
  exchangePolicies?: number;
  /** Step-up rules (their conditions) set (only when the seed has stepUpRules). */
  stepUpRules?: string[];
}

/**
 * Applies a seed in one transaction (all or nothing), in the order users, patients, careTeam, roles,
 * resourceServers, clients, exchangePolicies (whose actor, subject clients and audience must exist by
 * then, in the database or earlier in the seed). Existing users are left as they are; patients' names,
 * roles' scope ceilings, clients, resource servers and exchange policies are replaced; a care-team entry
 * that is already in place (same start, or without validFrom an identical current membership) is not
 * added again. Seed clients that authenticate with a secret must give it: a generated one would be shown
 * to nobody.
 */
export async function applySeed(db: Db, provider: Provider, clientSecretKey: string, seed: Seed, audit?: AuditLog): Promise<SeedResult> {
  return db.transaction(async (tx) => {
    const result: SeedResult = { users: [], resourceServers: [], clients: [] };
    for (const user of seed.users) {
      if (await findUserByUsername(tx, user.username)) continue;
      await createUser(tx, user);
      result.users.push(user.username);
    }
    const smartData = async (section: string, index: number, fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (err) {
        if (err instanceof SmartDataError) throw new SeedError(`${section}.${index}: ${err.message}`);
        throw err;
      }
    };
    if (seed.patients.length > 0) result.patients = [];
    for (const [index, patient] of seed.patients.entries()) {
      await smartData('patients', index, () => upsertPatient(tx, { id: patient.id, displayName: patient.name }));
      result.patients!.push(patient.id);
    }
    if (seed.careTeam.length > 0) result.careTeam = 0;
    for (const [index, member] of seed.careTeam.entries()) {
      await smartData('careTeam', index, async () => {
        const user = await findUserByUsername(tx, member.username);
        if (!user) throw new SmartDataError(`unknown user ${member.username}`);
        const added = await addCareTeamMember(tx, {
          userId: user.id,
          patientId: member.patient,
          ...(member.validFrom && { validFrom: member.validFrom }),
          validTo: member.validTo ?? null,
        });
        if (added) result.careTeam! += 1;
      });
    }
    if (seed.roles.length > 0) result.roles = [];
    for (const [index, role] of seed.roles.entries()) {
      await smartData('roles', index, () => setRoleScopes(tx, role.name, role.scope));
      result.roles!.push(role.name);
    }
    for (const rs of seed.resourceServers) {
      await upsertResourceServer(tx, rs);
      result.resourceServers.push(rs.identifier);
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
    if (seed.exchangePolicies.length > 0) result.exchangePolicies = 0;
    for (const [index, policy] of seed.exchangePolicies.entries()) {
      try {
        await upsertExchangePolicy(tx, policy, { checkReferences: true });
        result.exchangePolicies! += 1;
      } catch (err) {
        if (err instanceof ExchangePolicyError) throw new SeedError(`exchangePolicies.${index}: ${err.message}`);
        throw err;
      }
    }
    if (seed.stepUpRules.length > 0) result.stepUpRules = [];
    for (const [index, rule] of seed.stepUpRules.entries()) {
      try {
        await setStepUpRule(tx, rule);
        result.stepUpRules!.push([rule.scope, rule.clientId, rule.audience].filter(Boolean).join(' '));
      } catch (err) {
        if (err instanceof StepUpRuleError) throw new SeedError(`stepUpRules.${index}: ${err.message}`);
        throw err;
      }
    }
    await audit?.record({
      type: 'admin.seed_applied',
      outcome: 'success',
      rule: 'admin.seed',
      // Ids only: usernames are not recorded, the users' ids are; patients only as counts.
      details: {
        users_created: result.users.length, resource_servers: result.resourceServers, clients: result.clients,
        patients: result.patients?.length, care_team_added: result.careTeam, roles: result.roles,
        exchange_policies: result.exchangePolicies,
        step_up_rules: result.stepUpRules,
        exchange_policy_actors: result.exchangePolicies === undefined ? undefined
          : [...new Set(seed.exchangePolicies.map((p) => p.actorClientId))],
      },
    }, tx);
    return result;
  });
}
