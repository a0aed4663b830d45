// /admin/api/resource-servers: the audiences tokens are issued for (RFC 8707 resource indicators), with
// their scope list, token format, lifetime and introspection client. The identifier is in the path
// URL-encoded (encodeURIComponent). Reads carry an ETag; every change needs If-Match, locks the row and
// is recorded. The admin API's own resource server (urn:clinical-authz:admin, migration 012) can be read
// but not changed or deleted here; a resource server still named by an exchange policy or a step-up
// rule cannot be deleted (409) until those are changed.
import type Router from '@koa/router';
import { ZodError } from 'zod';

import { findClientRecord } from '../../clients/manage.ts';
import { MAX_ACCESS_TOKEN_TTL } from '../../config.ts';
import type { Queryable } from '../../db/index.ts';
import { ExchangePolicyError, requireAudience } from '../../exchange/policies.ts';
import {
  findResourceServer, listResourceServers, ResourceServerSchema, upsertResourceServer, type ResourceServer, type ResourceServerInput,
} from '../../oidc/resource-servers.ts';
import { parseScope } from '../../smart/scopes.ts';
import { formatIssues } from '../../validation.ts';
import { ADMIN_READ, ADMIN_RESOURCE, ADMIN_WRITE } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError, etagOf, notFound, readJson, requireIfMatch, send } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import { guarded, type AdminApiDeps } from '../router.ts';

/** Identifiers in this namespace belong to the server itself (the admin API); none are created here. */
const RESERVED_PREFIX = 'urn:clinical-authz:';
const SMART_CONTEXT = /^(patient|user|system)\//;
const MAX_NAME_LENGTH = 200;
const MAX_SCOPE_LENGTH = 4096;
const MAX_SCOPE_TOKENS = 100;
const CONTROL = /[\x00-\x1f\x7f]/;
const FIELDS = ['identifier', 'name', 'scope', 'access_token_format', 'access_token_ttl', 'introspection_client_id'] as const;
/** In what is read, not set: accepted in a PUT body only with the value it already has (read, edit, put back). */
const READ_ONLY = ['protected'] as const;

/** What an administrator reads. `protected`: the admin API's own resource server (read-only here). */
export function resourceServerRepresentation(rs: ResourceServer): Record<string, unknown> {
  return {
    identifier: rs.identifier,
    name: rs.name,
    scope: rs.scope,
    access_token_format: rs.accessTokenFormat,
    access_token_ttl: rs.accessTokenTtl,
    introspection_client_id: rs.introspectionClientId,
    protected: rs.identifier === ADMIN_RESOURCE,
  };
}

const tagged = (rs: ResourceServer) => {
  const representation = resourceServerRepresentation(rs);
  return { representation, etag: etagOf(representation) };
};

const invalid = (field: string, description: string) => new AdminHttpError(400, 'invalid_request', `${field} ${description}`, field);
const shown = (value: string) => (value.length > 80 ? `${value.slice(0, 80)}…` : value);

/** Text PostgreSQL can hold (no NUL): anything else names no row. */
const storable = (value: string | undefined): value is string => typeof value === 'string' && !value.includes('\0');

function checkIdentifier(value: unknown): string {
  try {
    requireAudience(value);
  } catch (err) {
    if (!(err instanceof ExchangePolicyError)) throw err;
    throw invalid('identifier', 'must be an absolute URI without fragment, of visible ASCII characters, at most 2048 (a resource indicator, RFC 8707)');
  }
  const identifier = value as string;
  if (!ResourceServerSchema.shape.identifier.safeParse(identifier).success) throw invalid('identifier', 'must be an absolute URI without fragment');
  return identifier;
}

/**
 * The scope list: tokens that name a SMART context (patient/, user/, system/) must be valid SMART
 * resource scopes; other tokens are the resource server's own scopes (exact match), but never OpenID
 * or SMART launch scopes (those belong to no resource server) nor FHIR-looking scopes without context.
 * Whitespace runs become single spaces; repeated tokens are kept once.
 */
function checkScope(value: unknown): string {
  if (typeof value !== 'string' || value.length > MAX_SCOPE_LENGTH) {
    throw invalid('scope', `must be a space-separated list of scopes, at most ${MAX_SCOPE_LENGTH} characters`);
  }
  const tokens = [...new Set(value.trim().split(/\s+/).filter(Boolean))];
  if (tokens.length === 0) throw invalid('scope', 'must name at least one scope');
  if (tokens.length > MAX_SCOPE_TOKENS) throw invalid('scope', `must name at most ${MAX_SCOPE_TOKENS} scopes`);
  for (const token of tokens) {
    const parsed = parseScope(token);
    if (parsed.ok) {
      if (parsed.scope.kind === 'named') {
        throw invalid('scope', `has an OpenID Connect or SMART launch scope, which belongs to no resource server: ${shown(token)}`);
      }
      continue;
    }
    if (SMART_CONTEXT.test(token)) throw invalid('scope', `has an invalid SMART scope: ${shown(token)} (${parsed.reason}: ${parsed.detail})`);
    // 'unknown': a scope of the resource server's own. 'malformed': bad characters, or a FHIR scope without its context.
    if (parsed.reason === 'malformed') throw invalid('scope', `has an invalid scope: ${parsed.detail}`);
  }
  return tokens.join(' ');
}

/**
 * The body of a create (identifier from the body) or a replacement (`current`: identifier from the path;
 * omitted optional fields get their defaults). Checks each field and names the first bad one.
 */
async function readInput(tx: Queryable, body: Record<string, unknown>, current?: ResourceServer): Promise<ResourceServerInput> {
  for (const key of Object.keys(body)) {
    if ((FIELDS as readonly string[]).includes(key)) continue;
    if ((READ_ONLY as readonly string[]).includes(key) && current) {
      if (body[key] !== resourceServerRepresentation(current)[key]) throw invalid(key, 'cannot be changed (it is read-only)');
      continue;
    }
    throw invalid(key, `is not a resource server field (${FIELDS.join(', ')})`);
  }
  let identifier: string;
  if (current) {
    if (body.identifier !== undefined && body.identifier !== current.identifier) {
      throw invalid('identifier', 'cannot be changed: tokens name it as their audience (create another resource server instead)');
    }
    identifier = current.identifier;
  } else {
    if (body.identifier === undefined) throw invalid('identifier', 'is required');
    identifier = checkIdentifier(body.identifier);
    if (identifier.toLowerCase().startsWith(RESERVED_PREFIX)) throw invalid('identifier', `must not be in the reserved ${RESERVED_PREFIX} namespace`);
  }

  const name = body.name;
  if (typeof name !== 'string' || !name.trim() || name.trim().length > MAX_NAME_LENGTH || CONTROL.test(name)) {
    throw invalid('name', `is required: 1-${MAX_NAME_LENGTH} characters, no control characters`);
  }
  if (body.scope === undefined) throw invalid('scope', 'is required');
  const scope = checkScope(body.scope);

  const format = body.access_token_format ?? 'jwt';
  if (format !== 'jwt' && format !== 'opaque') throw invalid('access_token_format', 'must be jwt or opaque');

  const ttl = body.access_token_ttl ?? null;
  if (ttl !== null && (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < 1 || ttl > MAX_ACCESS_TOKEN_TTL)) {
    throw invalid('access_token_ttl', `must be a whole number of seconds from 1 to ${MAX_ACCESS_TOKEN_TTL}, or null for the server default`);
  }

  const introspector = body.introspection_client_id ?? null;
  if (introspector !== null) {
    if (typeof introspector !== 'string' || !storable(introspector) || introspector.length > 128) {
      throw invalid('introspection_client_id', 'must be a registered client id, or null');
    }
    if (!(await findClientRecord(tx, introspector))) throw invalid('introspection_client_id', `names no registered client: ${shown(introspector)}`);
  }

  const input: ResourceServerInput = {
    identifier, name: name.trim(), scope, accessTokenFormat: format,
    ...(ttl !== null ? { accessTokenTtl: ttl } : {}),
    ...(introspector !== null ? { introspectionClientId: introspector } : {}),
  };
  // The domain schema has the last word (the seed and the CLI use it too).
  const checked = ResourceServerSchema.safeParse(input);
  if (!checked.success) {
    const issue = checked.error.issues[0]!;
    const field = { accessTokenFormat: 'access_token_format', accessTokenTtl: 'access_token_ttl', introspectionClientId: 'introspection_client_id' }[String(issue.path[0])] ?? String(issue.path[0] ?? 'body');
    throw invalid(field, `is invalid: ${formatIssues(checked.error.issues)}`);
  }
  return input;
}

/** Locks the resource server row for this transaction and reads it; undefined when there is none. */
async function lockResourceServer(tx: Queryable, identifier: string | undefined): Promise<ResourceServer | undefined> {
  if (!storable(identifier)) return undefined;
  const { rows } = await tx.query('SELECT identifier FROM resource_servers WHERE identifier = $1 FOR UPDATE', [identifier]);
  return rows.length ? findResourceServer(tx, identifier) : undefined;
}

const refuseProtected = (identifier: string, verb: string) => {
  if (identifier === ADMIN_RESOURCE) {
    throw new AdminHttpError(409, 'conflict', `${ADMIN_RESOURCE} is the admin API's own resource server: it cannot be ${verb} through the admin API`);
  }
};

/** 409 when exchange policies or step-up rules still name this resource server as their audience. */
async function refuseReferenced(tx: Queryable, identifier: string): Promise<void> {
  const { rows: policies } = await tx.query<{ actor_client_id: string }>(
    'SELECT actor_client_id FROM exchange_policies WHERE audience = $1 ORDER BY actor_client_id', [identifier],
  );
  const { rows: [rules] } = await tx.query<{ n: number }>('SELECT count(*)::int AS n FROM step_up_rules WHERE audience = $1', [identifier]);
  const ruleCount = Number(rules?.n ?? 0);
  if (policies.length === 0 && ruleCount === 0) return;
  const named: string[] = [];
  if (policies.length) {
    const actors = policies.slice(0, 5).map((p) => p.actor_client_id).join(', ');
    named.push(`${policies.length} exchange polic${policies.length === 1 ? 'y' : 'ies'} (actor ${actors}${policies.length > 5 ? ', …' : ''})`);
  }
  if (ruleCount) named.push(`${ruleCount} step-up rule${ruleCount === 1 ? '' : 's'}`);
  throw new AdminHttpError(409, 'conflict', `resource server ${shown(identifier)} is still the audience of ${named.join(' and ')}: remove those first`);
}

export const resourceServerPath = (identifier: string) => `/admin/api/resource-servers/${encodeURIComponent(identifier)}`;

export function resourceServerRoutes(router: Router, deps: AdminApiDeps): void {
  router.get('/resource-servers', guarded(deps, ADMIN_READ, async (ctx) => {
    const body = { resource_servers: (await listResourceServers(deps.db)).map(resourceServerRepresentation) };
    send(ctx, 200, body, etagOf(body));
  }));

  router.post('/resource-servers', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    const answer = await idempotent(ctx, deps.db, principal.id, body, () => deps.db.transaction(async (tx) => {
      const input = await readInput(tx, body);
      const rs = ResourceServerSchema.parse(input);
      // Insert only (upsertResourceServer replaces): of two concurrent creates, the second gets 409.
      const { rowCount } = await tx.query(
        `INSERT INTO resource_servers (identifier, name, scope, access_token_format, access_token_ttl, introspection_client_id)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (identifier) DO NOTHING`,
        [rs.identifier, rs.name, rs.scope, rs.accessTokenFormat, rs.accessTokenTtl ?? null, rs.introspectionClientId ?? null],
      );
      if (rowCount === 0) throw new AdminHttpError(409, 'conflict', `resource server ${shown(rs.identifier)} already exists: change it with PUT`);
      const { representation, etag } = tagged((await findResourceServer(tx, rs.identifier))!);
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'admin.resource_server_created', target: { kind: 'resource_server', id: rs.identifier }, before: null, after: representation,
      });
      return { status: 201, body: { resource_server: representation }, etag };
    }));
    const created = (answer.body as { resource_server: { identifier: string } }).resource_server;
    ctx.set('Location', resourceServerPath(created.identifier));
    send(ctx, answer.status, answer.body, answer.etag);
  }));

  router.get('/resource-servers/:id', guarded(deps, ADMIN_READ, async (ctx) => {
    const id = ctx.params.id;
    const rs = storable(id) ? await findResourceServer(deps.db, id) : undefined;
    if (!rs) throw notFound('resource server');
    const { representation, etag } = tagged(rs);
    send(ctx, 200, { resource_server: representation }, etag);
  }));

  router.put('/resource-servers/:id', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    const result = await deps.db.transaction(async (tx) => {
      const current = await lockResourceServer(tx, ctx.params.id);
      if (!current) throw notFound('resource server');
      refuseProtected(current.identifier, 'changed');
      const before = tagged(current);
      requireIfMatch(ctx, before.etag);
      const input = await readInput(tx, body, current);
      try {
        await upsertResourceServer(tx, input);
      } catch (err) {
        if (err instanceof ZodError) throw new AdminHttpError(400, 'invalid_request', formatIssues(err.issues));
        throw err;
      }
      const after = tagged((await findResourceServer(tx, current.identifier))!);
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'admin.resource_server_updated', target: { kind: 'resource_server', id: current.identifier },
        before: before.representation, after: after.representation,
      });
      return after;
    });
    send(ctx, 200, { resource_server: result.representation }, result.etag);
  }));

  router.delete('/resource-servers/:id', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    await deps.db.transaction(async (tx) => {
      const current = await lockResourceServer(tx, ctx.params.id);
      if (!current) throw notFound('resource server');
      refuseProtected(current.identifier, 'deleted');
      const before = tagged(current);
      requireIfMatch(ctx, before.etag);
      await refuseReferenced(tx, current.identifier);
      await tx.query('DELETE FROM resource_servers WHERE identifier = $1', [current.identifier]);
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'admin.resource_server_deleted', severity: 'high', target: { kind: 'resource_server', id: current.identifier },
        before: before.representation, after: null,
      });
    });
    ctx.status = 204;
    ctx.set('Cache-Control', 'no-store');
  }));
}
