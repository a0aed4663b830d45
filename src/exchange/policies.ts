// RFC 8693 token exchange policies (DESIGN.md §5, §6): for each actor client and audience (a resource
// server), whose tokens the actor may exchange (subject clients, or users with a role), the SMART scope
// ceiling for that audience, the longest lifetime of an issued token, how many actors a delegation
// chain may hold, and whether break-glass tokens may be exchanged. Deny by default: no policy row for
// the actor and audience, no exchange. This module stores and validates policies; it decides nothing
// about a particular token beyond actorMayActFor.
import { z } from 'zod';

import type { Queryable } from '../db/index.ts';
import { cacheableQuery } from '../db/read-cache.ts';
import { SmartDataError } from '../smart/patients.ts';
import { normaliseRoleScope, ROLE_PATTERN } from '../smart/roles.ts';

export interface ExchangePolicy {
  actorClientId: string;
  /** A resource server identifier (resource_servers.identifier), compared exactly. */
  audience: string;
  /** Clients whose tokens the actor may exchange ([]: none by client). */
  subjectClientIds: string[];
  /** Or tokens of users with one of these roles ([]: none by role). */
  subjectRoles: string[];
  /** SMART scope ceiling for this audience: normalised resource scopes, space-separated. */
  scope: string;
  maxTtlSeconds: number;
  /** How many actors a delegation chain may hold (1: this actor only, no re-delegation). */
  maxDepth: number;
  allowBreakGlass: boolean;
}

/** What upsertExchangePolicy takes: the optional fields get their defaults (a policy is replaced whole). */
export interface ExchangePolicyInput {
  actorClientId: string;
  audience: string;
  subjectClientIds?: readonly string[] | undefined;
  subjectRoles?: readonly string[] | undefined;
  scope: string;
  maxTtlSeconds?: number | undefined;
  maxDepth?: number | undefined;
  allowBreakGlass?: boolean | undefined;
}

/**
 * Bad input to an exchange policy function (syntax, range, unknown client or audience). The message
 * names the field and is safe to print to an operator (client ids and URLs only, no database internals).
 */
export class ExchangePolicyError extends Error {
  override name = 'ExchangePolicyError';
}

export const DEFAULT_EXCHANGE_TTL_SECONDS = 300;
export const MAX_EXCHANGE_TTL_SECONDS = 3600;
export const DEFAULT_EXCHANGE_DEPTH = 1;
export const MAX_EXCHANGE_DEPTH = 5;
/** The same syntax as registered client ids (src/clients/register.ts). */
export const CLIENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{2,127}$/;
const MAX_AUDIENCE_LENGTH = 2048;
const MAX_LIST_LENGTH = 100;

// ---- validation (pure) -----------------------------------------------------------------------------

const CLIENT_ID_RULE = '3-128 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit';
const ROLE_RULE = '1-32 characters of a-z 0-9 _ -, starting with a letter';

export function requireClientId(value: unknown, field: string): string {
  if (typeof value !== 'string' || !CLIENT_ID_PATTERN.test(value)) throw new ExchangePolicyError(`invalid ${field}: ${CLIENT_ID_RULE}`);
  return value;
}

/** An absolute URL without fragment, kept as written (it is compared exactly with resource server identifiers). */
export function requireAudience(value: unknown): string {
  if (typeof value !== 'string' || value.length > MAX_AUDIENCE_LENGTH || !/^[\x21-\x7e]+$/.test(value)
    || !URL.canParse(value) || value.includes('#')) {
    throw new ExchangePolicyError(
      `invalid audience: an absolute URL without fragment (a resource server identifier), at most ${MAX_AUDIENCE_LENGTH} characters`,
    );
  }
  return value;
}

/** The ceiling as normalised SMART resource scopes (v1 stored as v2), at least one. */
export function normaliseExchangeScope(value: unknown): string {
  if (typeof value !== 'string') throw new ExchangePolicyError('invalid scope: a space-separated list of SMART resource scopes');
  let tokens: string[];
  try {
    tokens = normaliseRoleScope(value);
  } catch (err) {
    if (err instanceof SmartDataError) throw new ExchangePolicyError(err.message);
    throw err;
  }
  if (tokens.length === 0) throw new ExchangePolicyError('invalid scope: at least one SMART resource scope (patient/, user/ or system/)');
  return tokens.join(' ');
}

function uniqueList(value: unknown, field: string, each: (item: unknown) => string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.length > MAX_LIST_LENGTH) {
    throw new ExchangePolicyError(`invalid ${field}s: a list of at most ${MAX_LIST_LENGTH}`);
  }
  return [...new Set(value.map(each))];
}

function integerIn(value: unknown, field: string, min: number, max: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ExchangePolicyError(`invalid ${field}: a whole number from ${min} to ${max}`);
  }
  return value;
}

/**
 * Validates a policy without touching the database: the complete policy as it would be stored
 * (defaults applied, lists de-duplicated, scope normalised), or ExchangePolicyError naming the field.
 * A policy must name at least one subject client or subject role (else it would permit nothing).
 */
export function validateExchangePolicy(input: ExchangePolicyInput): ExchangePolicy {
  if (typeof input !== 'object' || input === null) throw new ExchangePolicyError('invalid exchange policy: an object expected');
  const subjectClientIds = uniqueList(input.subjectClientIds, 'subject client id', (v) => requireClientId(v, 'subject client id'));
  const subjectRoles = uniqueList(input.subjectRoles, 'subject role', (v) => {
    if (typeof v !== 'string' || !ROLE_PATTERN.test(v)) throw new ExchangePolicyError(`invalid subject role: ${ROLE_RULE}`);
    return v;
  });
  const policy: ExchangePolicy = {
    actorClientId: requireClientId(input.actorClientId, 'actor client id'),
    audience: requireAudience(input.audience),
    subjectClientIds,
    subjectRoles,
    scope: normaliseExchangeScope(input.scope),
    maxTtlSeconds: integerIn(input.maxTtlSeconds, 'max TTL (seconds)', 1, MAX_EXCHANGE_TTL_SECONDS, DEFAULT_EXCHANGE_TTL_SECONDS),
    maxDepth: integerIn(input.maxDepth, 'max depth', 1, MAX_EXCHANGE_DEPTH, DEFAULT_EXCHANGE_DEPTH),
    allowBreakGlass: input.allowBreakGlass ?? false,
  };
  if (typeof policy.allowBreakGlass !== 'boolean') throw new ExchangePolicyError('invalid allow break-glass: true or false');
  if (subjectClientIds.length === 0 && subjectRoles.length === 0) {
    throw new ExchangePolicyError('invalid exchange policy: name at least one subject client or subject role (else it permits nothing)');
  }
  return policy;
}

// ---- seed schema -----------------------------------------------------------------------------------

/** A zod refinement running one of the validators above, its message as the issue (path: the field). */
function checkedBy(validate: (value: string) => unknown) {
  return (value: string, ctx: z.RefinementCtx) => {
    try {
      validate(value);
    } catch (err) {
      if (!(err instanceof ExchangePolicyError)) throw err;
      ctx.addIssue({ code: 'custom', message: err.message });
    }
  };
}

/**
 * One `exchangePolicies` entry of a seed file; parses to an ExchangePolicyInput. The references
 * (actor, audience, subject clients) are checked when the seed is applied.
 */
export const ExchangePolicySchema = z.strictObject({
  actor: z.string().regex(CLIENT_ID_PATTERN, `client id: ${CLIENT_ID_RULE}`),
  audience: z.string().superRefine(checkedBy(requireAudience)),
  subjectClients: z.array(z.string().regex(CLIENT_ID_PATTERN, `client id: ${CLIENT_ID_RULE}`)).max(MAX_LIST_LENGTH).default([]),
  subjectRoles: z.array(z.string().regex(ROLE_PATTERN, `role: ${ROLE_RULE}`)).max(MAX_LIST_LENGTH).default([]),
  scope: z.string().superRefine(checkedBy(normaliseExchangeScope)),
  maxTtlSeconds: z.number().int().min(1).max(MAX_EXCHANGE_TTL_SECONDS).optional(),
  maxDepth: z.number().int().min(1).max(MAX_EXCHANGE_DEPTH).optional(),
  allowBreakGlass: z.boolean().optional(),
}).refine((p) => p.subjectClients.length > 0 || p.subjectRoles.length > 0, {
  message: 'name at least one subject client or subject role (else the policy permits nothing)', path: ['subjectClients'],
}).transform((p): ExchangePolicyInput => ({
  actorClientId: p.actor,
  audience: p.audience,
  subjectClientIds: p.subjectClients,
  subjectRoles: p.subjectRoles,
  scope: p.scope,
  maxTtlSeconds: p.maxTtlSeconds,
  maxDepth: p.maxDepth,
  allowBreakGlass: p.allowBreakGlass,
}));

// ---- storage ---------------------------------------------------------------------------------------

interface PolicyRow extends Record<string, unknown> {
  actor_client_id: string;
  audience: string;
  subject_client_ids: string[];
  subject_roles: string[];
  scope: string;
  max_ttl_seconds: number;
  max_depth: number;
  allow_break_glass: boolean;
}

const COLUMNS = 'actor_client_id, audience, subject_client_ids, subject_roles, scope, max_ttl_seconds, max_depth, allow_break_glass';

function fromRow(row: PolicyRow): ExchangePolicy {
  return {
    actorClientId: row.actor_client_id,
    audience: row.audience,
    subjectClientIds: [...row.subject_client_ids],
    subjectRoles: [...row.subject_roles],
    scope: row.scope,
    maxTtlSeconds: Number(row.max_ttl_seconds),
    maxDepth: Number(row.max_depth),
    allowBreakGlass: row.allow_break_glass,
  };
}

/** ExchangePolicyError naming the first client or audience the policy refers to that does not exist. */
async function checkReferences(db: Queryable, policy: ExchangePolicy): Promise<void> {
  const clientIds = [...new Set([policy.actorClientId, ...policy.subjectClientIds])];
  const { rows: clients } = await db.query<{ client_id: string }>(
    'SELECT client_id FROM clients WHERE client_id = ANY($1::text[])', [clientIds],
  );
  const known = new Set(clients.map((r) => r.client_id));
  if (!known.has(policy.actorClientId)) throw new ExchangePolicyError(`unknown actor client ${policy.actorClientId}`);
  const unknownSubject = policy.subjectClientIds.find((id) => !known.has(id));
  if (unknownSubject !== undefined) throw new ExchangePolicyError(`unknown subject client ${unknownSubject}`);
  const { rows } = await db.query('SELECT 1 FROM resource_servers WHERE identifier = $1', [policy.audience]);
  if (rows.length === 0) throw new ExchangePolicyError(`unknown audience ${policy.audience} (not a registered resource server)`);
}

/**
 * Creates or replaces (whole: omitted fields get their defaults) the policy of an actor client for an
 * audience. Validates as validateExchangePolicy does; with `checkReferences`, the actor client, the
 * subject clients and the audience (a resource server) must exist. Resolves to the stored policy.
 */
export async function upsertExchangePolicy(
  db: Queryable, input: ExchangePolicyInput, options: { checkReferences?: boolean } = {},
): Promise<ExchangePolicy> {
  const policy = validateExchangePolicy(input);
  if (options.checkReferences) await checkReferences(db, policy);
  const { rows } = await db.query<PolicyRow>(
    `INSERT INTO exchange_policies (${COLUMNS}) VALUES ($1, $2, $3::text[], $4::text[], $5, $6, $7, $8)
     ON CONFLICT (actor_client_id, audience) DO UPDATE SET subject_client_ids = EXCLUDED.subject_client_ids,
       subject_roles = EXCLUDED.subject_roles, scope = EXCLUDED.scope, max_ttl_seconds = EXCLUDED.max_ttl_seconds,
       max_depth = EXCLUDED.max_depth, allow_break_glass = EXCLUDED.allow_break_glass, updated_at = now()
     RETURNING ${COLUMNS}`,
    [policy.actorClientId, policy.audience, policy.subjectClientIds, policy.subjectRoles, policy.scope, policy.maxTtlSeconds,
      policy.maxDepth, policy.allowBreakGlass],
  );
  return fromRow(rows[0]!);
}

const FIND_POLICY = cacheableQuery(`SELECT ${COLUMNS} FROM exchange_policies WHERE actor_client_id = $1 AND audience = $2`, ['exchange_policies']);

/** The policy of this actor for this audience (exact match), or undefined: no policy, no exchange. */
export async function findExchangePolicy(db: Queryable, actorClientId: string, audience: string): Promise<ExchangePolicy | undefined> {
  // Values that cannot be stored cannot match (and a NUL would fail the query): deny without asking.
  if (typeof actorClientId !== 'string' || !CLIENT_ID_PATTERN.test(actorClientId) || typeof audience !== 'string' || audience.includes('\0')) {
    return undefined;
  }
  const { rows } = await db.query<PolicyRow>(FIND_POLICY, [actorClientId, audience]);
  return rows[0] && fromRow(rows[0]);
}

/** All policies, or those of one actor, ordered by actor then audience. */
export async function listExchangePolicies(db: Queryable, actorClientId?: string): Promise<ExchangePolicy[]> {
  const { rows } = actorClientId === undefined
    ? await db.query<PolicyRow>(`SELECT ${COLUMNS} FROM exchange_policies ORDER BY actor_client_id, audience`)
    : await db.query<PolicyRow>(
      `SELECT ${COLUMNS} FROM exchange_policies WHERE actor_client_id = $1 ORDER BY audience`, [actorClientId],
    );
  return rows.map(fromRow);
}

/** Removes the policy of this actor for this audience; false when there was none. */
export async function deleteExchangePolicy(db: Queryable, actorClientId: string, audience: string): Promise<boolean> {
  if (typeof actorClientId !== 'string' || typeof audience !== 'string' || actorClientId.includes('\0') || audience.includes('\0')) {
    return false;
  }
  const { rowCount } = await db.query(
    'DELETE FROM exchange_policies WHERE actor_client_id = $1 AND audience = $2', [actorClientId, audience],
  );
  return rowCount > 0;
}

/**
 * May this actor act for a subject token issued to subjectClientId for a user with these roles?
 * True when the subject's client is listed, or the user has one of the listed roles. This is the
 * "whose tokens" part of the policy only: audience, scope, lifetime, depth, break-glass and the
 * subject's own `may_act` are checked by the caller.
 */
export function actorMayActFor(policy: ExchangePolicy, subject: { clientId: string; roles: readonly string[] }): boolean {
  if (policy.subjectClientIds.includes(subject.clientId)) return true;
  return subject.roles.some((role) => policy.subjectRoles.includes(role));
}
