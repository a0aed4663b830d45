// /admin/api/exchange-policies: RFC 8693 token exchange policies, one per actor client and audience
// (a resource server), addressed as /exchange-policies/{actor}/{audience} with both URL-encoded
// (encodeURIComponent). Validation and storage are src/exchange/policies.ts (the seed and the CLI use
// them too); a refusal names the field. Reads carry an ETag; every change needs If-Match, locks the row
// and is recorded. Deny by default: deleting a policy stops the actor's exchanges for that audience.
import type Router from '@koa/router';

import type { Queryable } from '../../db/index.ts';
import {
  CLIENT_ID_PATTERN, deleteExchangePolicy, ExchangePolicyError, findExchangePolicy, listExchangePolicies, upsertExchangePolicy,
  validateExchangePolicy, type ExchangePolicy, type ExchangePolicyInput,
} from '../../exchange/policies.ts';
import { ADMIN_READ, ADMIN_RESOURCE, ADMIN_WRITE, type AdminPrincipal } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError, etagOf, notFound, readJson, requireIfMatch, send } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import { guarded, type AdminApiDeps } from '../router.ts';
import { resourceServerRoutes } from './resource-servers.ts';

/** JSON field → ExchangePolicyInput key. */
const FIELDS = {
  actor_client_id: 'actorClientId',
  audience: 'audience',
  subject_client_ids: 'subjectClientIds',
  subject_roles: 'subjectRoles',
  scope: 'scope',
  max_ttl_seconds: 'maxTtlSeconds',
  max_depth: 'maxDepth',
  allow_break_glass: 'allowBreakGlass',
} as const satisfies Record<string, keyof ExchangePolicyInput>;
type Field = keyof typeof FIELDS;

/** Which field an ExchangePolicyError is about, from its message (first match wins). */
const FIELD_OF_MESSAGE: ReadonlyArray<[RegExp, Field]> = [
  [/^invalid (SMART )?scope\b/, 'scope'],
  [/^(invalid|unknown) actor client/, 'actor_client_id'],
  [/^(invalid|unknown) subject client|at least one subject/, 'subject_client_ids'],
  [/^invalid subject role/, 'subject_roles'],
  [/^(invalid|unknown) audience/, 'audience'],
  [/^invalid max TTL/, 'max_ttl_seconds'],
  [/^invalid max depth/, 'max_depth'],
  [/^invalid allow break-glass/, 'allow_break_glass'],
];

/** What an administrator reads and writes (snake_case, as the rest of the admin API). */
export function exchangePolicyRepresentation(p: ExchangePolicy): Record<string, unknown> {
  return {
    actor_client_id: p.actorClientId,
    audience: p.audience,
    subject_client_ids: p.subjectClientIds,
    subject_roles: p.subjectRoles,
    scope: p.scope,
    max_ttl_seconds: p.maxTtlSeconds,
    max_depth: p.maxDepth,
    allow_break_glass: p.allowBreakGlass,
  };
}

const tagged = (p: ExchangePolicy) => {
  const representation = exchangePolicyRepresentation(p);
  return { representation, etag: etagOf(representation) };
};

export const exchangePolicyPath = (actor: string, audience: string) =>
  `/admin/api/exchange-policies/${encodeURIComponent(actor)}/${encodeURIComponent(audience)}`;

const invalid = (field: string, description: string) => new AdminHttpError(400, 'invalid_request', `${field}: ${description}`, field);

/** Runs a policies.ts function, turning its ExchangePolicyError into a 400 that starts with the field name. */
async function policyInput<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (!(err instanceof ExchangePolicyError)) throw err;
    const field = FIELD_OF_MESSAGE.find(([pattern]) => pattern.test(err.message))?.[1];
    throw field ? invalid(field, err.message) : new AdminHttpError(400, 'invalid_request', err.message);
  }
}

/**
 * The body as a policy input. A create names actor and audience in the body; a replacement has them
 * from the path (in the body only with the same values). Omitted optional fields get their defaults:
 * a policy is replaced whole.
 */
function readInput(body: Record<string, unknown>, key?: { actor: string; audience: string }): ExchangePolicyInput {
  for (const name of Object.keys(body)) {
    if (!Object.hasOwn(FIELDS, name)) throw invalid(name, `not an exchange policy field (${Object.keys(FIELDS).join(', ')})`);
  }
  if (key) {
    if (body.actor_client_id !== undefined && body.actor_client_id !== key.actor) {
      throw invalid('actor_client_id', 'cannot be changed: it names the policy (create a policy for the other actor, delete this one)');
    }
    if (body.audience !== undefined && body.audience !== key.audience) {
      throw invalid('audience', 'cannot be changed: it names the policy (create a policy for the other audience, delete this one)');
    }
  } else {
    if (body.actor_client_id === undefined) throw invalid('actor_client_id', 'is required');
    if (body.audience === undefined) throw invalid('audience', 'is required');
  }
  if (body.scope === undefined) throw invalid('scope', 'is required');
  const input = Object.fromEntries(
    Object.entries(FIELDS).filter(([name]) => body[name] !== undefined).map(([name, prop]) => [prop, body[name]]),
  ) as unknown as ExchangePolicyInput;
  if (key) Object.assign(input, { actorClientId: key.actor, audience: key.audience });
  if (input.audience === ADMIN_RESOURCE) {
    throw invalid('audience', `the admin API (${ADMIN_RESOURCE}) is never a token exchange audience`);
  }
  return input;
}

/**
 * Locks the audience's resource server row: a concurrent delete of that resource server waits for this
 * transaction (and then sees the policy), or this one waits for the delete (and then finds no audience).
 * FOR UPDATE (creates) also serialises two creates of one policy: the second sees the first.
 */
async function lockAudience(tx: Queryable, audience: string, mode: 'UPDATE' | 'SHARE'): Promise<void> {
  await tx.query(`SELECT 1 FROM resource_servers WHERE identifier = $1 FOR ${mode}`, [audience]);
}

/** Stores (creates or replaces whole) the policy with its references checked: actor, subject clients, audience. */
const store = (tx: Queryable, input: ExchangePolicyInput) => policyInput(() => upsertExchangePolicy(tx, input, { checkReferences: true }));

const severityOf = (...policies: Array<ExchangePolicy | undefined>) => (policies.some((p) => p?.allowBreakGlass) ? 'high' as const : 'warning' as const);

/** Text PostgreSQL can hold (no NUL): anything else names no policy. */
const storable = (value: string | undefined): value is string => typeof value === 'string' && !value.includes('\0');

/** Locks the policy row for this transaction and reads it; undefined when there is none. */
async function lockPolicy(tx: Queryable, actor: string | undefined, audience: string | undefined): Promise<ExchangePolicy | undefined> {
  if (!storable(actor) || !storable(audience)) return undefined;
  const { rows } = await tx.query(
    'SELECT 1 FROM exchange_policies WHERE actor_client_id = $1 AND audience = $2 FOR UPDATE', [actor, audience],
  );
  return rows.length ? findExchangePolicy(tx, actor, audience) : undefined;
}

const record = (tx: Queryable, deps: AdminApiDeps, principal: AdminPrincipal, verb: 'created' | 'updated' | 'deleted', key: ExchangePolicy, before: ExchangePolicy | undefined, after: ExchangePolicy | undefined) =>
  recordAdminChange(tx, deps.audit, principal, {
    type: `admin.exchange_policy_${verb}`,
    severity: severityOf(before, after),
    target: { kind: 'exchange_policy', id: `${key.actorClientId} ${key.audience}`, clientId: key.actorClientId },
    before: before ? exchangePolicyRepresentation(before) : null,
    after: after ? exchangePolicyRepresentation(after) : null,
  });

export function exchangePolicyRoutes(router: Router, deps: AdminApiDeps): void {
  router.get('/exchange-policies', guarded(deps, ADMIN_READ, async (ctx) => {
    const { actor, audience } = ctx.query;
    if (actor !== undefined && typeof actor !== 'string') throw invalid('actor', 'must be given once');
    if (audience !== undefined && (typeof audience !== 'string' || !storable(audience))) throw invalid('audience', 'give one resource server identifier');
    if (actor !== undefined && !CLIENT_ID_PATTERN.test(actor)) throw invalid('actor', 'must be a client id (3-128 characters of A-Z a-z 0-9 . _ -)');
    const policies = (await listExchangePolicies(deps.db, actor)).filter((p) => audience === undefined || p.audience === audience);
    const body = { exchange_policies: policies.map(exchangePolicyRepresentation) };
    send(ctx, 200, body, etagOf(body));
  }));

  router.post('/exchange-policies', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    const input = readInput(body);
    await policyInput(() => validateExchangePolicy(input));
    const answer = await idempotent(ctx, deps.db, principal.id, body, () => deps.db.transaction(async (tx) => {
      await lockAudience(tx, input.audience, 'UPDATE');
      if (await findExchangePolicy(tx, input.actorClientId, input.audience)) {
        throw new AdminHttpError(409, 'conflict', `an exchange policy for actor ${input.actorClientId} and audience ${input.audience} already exists: change it with PUT`);
      }
      const policy = await store(tx, input);
      const { representation, etag } = tagged(policy);
      await record(tx, deps, principal, 'created', policy, undefined, policy);
      return { status: 201, body: { exchange_policy: representation }, etag };
    }));
    const created = (answer.body as { exchange_policy: { actor_client_id: string; audience: string } }).exchange_policy;
    ctx.set('Location', exchangePolicyPath(created.actor_client_id, created.audience));
    send(ctx, answer.status, answer.body, answer.etag);
  }));

  router.get('/exchange-policies/:actor/:audience', guarded(deps, ADMIN_READ, async (ctx) => {
    const { actor, audience } = ctx.params;
    const policy = storable(actor) && storable(audience) ? await findExchangePolicy(deps.db, actor, audience) : undefined;
    if (!policy) throw notFound('exchange policy');
    const { representation, etag } = tagged(policy);
    send(ctx, 200, { exchange_policy: representation }, etag);
  }));

  router.put('/exchange-policies/:actor/:audience', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    const result = await deps.db.transaction(async (tx) => {
      const current = await lockPolicy(tx, ctx.params.actor, ctx.params.audience);
      if (!current) throw notFound('exchange policy');
      const before = tagged(current);
      requireIfMatch(ctx, before.etag);
      const input = readInput(body, { actor: current.actorClientId, audience: current.audience });
      await lockAudience(tx, current.audience, 'SHARE');
      const policy = await store(tx, input);
      await record(tx, deps, principal, 'updated', policy, current, policy);
      return tagged(policy);
    });
    send(ctx, 200, { exchange_policy: result.representation }, result.etag);
  }));

  router.delete('/exchange-policies/:actor/:audience', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    await deps.db.transaction(async (tx) => {
      const current = await lockPolicy(tx, ctx.params.actor, ctx.params.audience);
      if (!current) throw notFound('exchange policy');
      requireIfMatch(ctx, tagged(current).etag);
      await deleteExchangePolicy(tx, current.actorClientId, current.audience);
      await record(tx, deps, principal, 'deleted', current, current, undefined);
    });
    ctx.status = 204;
    ctx.set('Cache-Control', 'no-store');
  }));
}

/** Both audience-side resources in one registration: resource servers, then the exchange policies naming them. */
export function resourceServerAndExchangePolicyRoutes(router: Router, deps: AdminApiDeps): void {
  resourceServerRoutes(router, deps);
  exchangePolicyRoutes(router, deps);
}
