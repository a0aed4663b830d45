// Applies the SMART scope decision (src/smart/scope-policy.ts) inside oidc-provider. oidc-provider keeps
// a requested scope only if getResourceServerInfo lists it verbatim, so at the authorization endpoint
// (and for client credentials) the request's scope parameter is rewritten to its normalised, narrowed
// form first, as oidc-provider's own checkScope rewrites it; codes and refresh tokens then carry those
// exact strings, and later requests only ever keep or drop them, never widen.
import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import { findUserById } from '../accounts/users.ts';
import { ADMIN_RESOURCE, ADMIN_ROLE } from '../admin/resource.ts';
import type { Queryable } from '../db/index.ts';
import { decideScopes, ScopePolicyError, type ScopePolicyDecision, type ScopeFlow } from '../smart/scope-policy.ts';
import { parseScopeList } from '../smart/scopes.ts';
import { breakGlassResourceScopes, breakGlassScope } from '../break-glass/scopes.ts';
import { roleScopeCeiling } from '../smart/roles.ts';
import { findResourceServer, type ResourceServer } from './resource-servers.ts';
import { resourceScopeCeiling } from './resource-scope-ceiling.ts';

type Client = NonNullable<KoaContextWithOIDC['oidc']['client']>;

/** Routes where the scope parameter is the request itself (rewritten); elsewhere a code/refresh token holds it. */
const AUTHORIZATION_ROUTES = new Set(['authorization', 'resume', 'pushed_authorization_request']);

interface Source { scope?: string | undefined; accountId?: string | undefined }

function grantType(ctx: KoaContextWithOIDC): string | undefined {
  const value = ctx.oidc.params?.grant_type;
  return typeof value === 'string' ? value : undefined;
}

function flowOf(ctx: KoaContextWithOIDC): ScopeFlow {
  return ctx.oidc.route === 'token' && grantType(ctx) === 'client_credentials' ? 'system' : 'user';
}

/** True where this module rewrites params.scope (the request is the source of the scope). */
function rewritesRequest(ctx: KoaContextWithOIDC): boolean {
  return AUTHORIZATION_ROUTES.has(ctx.oidc.route) || flowOf(ctx) === 'system';
}

function sourceOf(ctx: KoaContextWithOIDC): Source {
  if (rewritesRequest(ctx)) {
    return { scope: ctx.oidc.params?.scope as string | undefined, accountId: ctx.oidc.session?.accountId };
  }
  const entities = ctx.oidc.entities as { AuthorizationCode?: Source; RefreshToken?: Source };
  const token = entities.AuthorizationCode ?? entities.RefreshToken;
  const requested = ctx.oidc.params?.scope;
  return { scope: typeof requested === 'string' && requested ? requested : token?.scope, accountId: token?.accountId };
}

function requestedResources(ctx: KoaContextWithOIDC, indicator: string | undefined): string[] {
  const resource = ctx.oidc.params?.resource as string | string[] | undefined;
  const list = Array.isArray(resource) ? resource : resource ? [resource] : [];
  return [...new Set(indicator && !list.includes(indicator) ? [...list, indicator] : list)];
}

async function roleCeilingFor(db: Queryable, accountId: string | undefined, flow: ScopeFlow): Promise<string[] | undefined> {
  if (flow === 'system' || !accountId) return undefined;
  const user = await findUserById(db, accountId);
  // Deny by default: a vanished or disabled account permits nothing.
  if (!user || user.disabled) return [];
  return roleScopeCeiling(db, user.roles);
}

/**
 * Admin API tokens are issued only to administrators (role `admin`; the passkey is a step-up rule on
 * this audience, migration 013) or, by client credentials, to workloads that authenticate with mTLS.
 */
async function checkAdminAudience(db: Queryable, flow: ScopeFlow, accountId: string | undefined, client: Client): Promise<void> {
  if (flow === 'system') {
    if (client.clientAuthMethod !== 'tls_client_auth') throw new errors.InvalidTarget('the admin API is for automation clients with a CA-issued certificate (tls_client_auth)');
    return;
  }
  if (!accountId) return; // nobody signed in yet: checked again at the resume and at the token endpoint
  const user = await findUserById(db, accountId);
  if (!user || user.disabled || !user.roles.includes(ADMIN_ROLE)) throw new errors.AccessDenied('the admin role is required for the admin API');
}

function toProviderError(err: unknown): never {
  if (err instanceof ScopePolicyError) {
    if (err.error === 'access_denied') throw new errors.AccessDenied(err.description);
    if (err.error === 'invalid_target') throw new errors.InvalidTarget(err.description);
    throw new errors.InvalidScope(err.description, err.scope);
  }
  throw err;
}

export interface SmartScopeHooks {
  /** features.resourceIndicators.getResourceServerInfo */
  resourceServerInfo(ctx: KoaContextWithOIDC, indicator: string, client: Client): Promise<{ server: ResourceServer; scope: string }>;
  /** Validates the scope of a request that names no resource (and so no SMART scope can be granted). */
  checkWithoutResource(ctx: KoaContextWithOIDC): Promise<void>;
}

/** An emergency (break-glass) authorization keeps only the read-only, one-patient part of the decision. */
function emergencyDecision(decision: ScopePolicyDecision): ScopePolicyDecision {
  return {
    ...decision,
    scope: breakGlassScope(decision.scope),
    perResource: new Map([...decision.perResource].map(([id, scope]) => [id, breakGlassResourceScopes(scope).join(' ')])),
  };
}

export interface SmartScopeOptions {
  /** True for requests whose scopes fall under the break-glass rule (see src/oidc/break-glass-grants.ts). */
  isEmergency?: ((ctx: KoaContextWithOIDC) => Promise<boolean>) | undefined;
}

export function smartScopeHooks(db: Queryable, options: SmartScopeOptions = {}): SmartScopeHooks {
  // One decision per request: getResourceServerInfo runs once per resource indicator.
  const decisions = new WeakMap<KoaContextWithOIDC, Promise<{ decision: ScopePolicyDecision; servers: Map<string, ResourceServer> }>>();

  const decide = (ctx: KoaContextWithOIDC, client: Client, indicator: string | undefined) => {
    let pending = decisions.get(ctx);
    if (!pending) {
      pending = (async () => {
        const servers = new Map<string, ResourceServer>();
        for (const identifier of requestedResources(ctx, indicator)) {
          const server = await findResourceServer(db, identifier);
          if (!server) throw new errors.InvalidTarget('unknown resource indicator');
          servers.set(identifier, server);
        }
        const flow = flowOf(ctx);
        const source = sourceOf(ctx);
        if (servers.has(ADMIN_RESOURCE)) await checkAdminAudience(db, flow, source.accountId, client);
        let final: ScopePolicyDecision;
        try {
          final = decideScopes({
            requested: source.scope ?? '',
            resourceServers: [...servers.values()],
            clientCeiling: resourceScopeCeiling(client as unknown as Record<string, unknown>),
            roleCeiling: await roleCeilingFor(db, source.accountId, flow),
            flow,
          });
        } catch (err) {
          return toProviderError(err);
        }
        if (await options.isEmergency?.(ctx)) final = emergencyDecision(final);
        if (rewritesRequest(ctx) && ctx.oidc.params) ctx.oidc.params.scope = final.scope || undefined;
        return { decision: final, servers };
      })();
      decisions.set(ctx, pending);
    }
    return pending;
  };

  return {
    async resourceServerInfo(ctx, indicator, client) {
      const { decision, servers } = await decide(ctx, client, indicator);
      const server = servers.get(indicator) ?? await findResourceServer(db, indicator);
      if (!server) throw new errors.InvalidTarget('unknown resource indicator');
      return { server, scope: decision.perResource.get(indicator) ?? '' };
    },

    async checkWithoutResource(ctx) {
      if (!rewritesRequest(ctx)) return;
      const { scopes, invalid } = parseScopeList(String(ctx.oidc.params?.scope ?? ''));
      const bad = invalid[0];
      if (bad) throw new errors.InvalidScope(`${bad.reason} scope: ${bad.detail}`, bad.token);
      // With no audience, resource scopes could reach no token: say so rather than drop them silently.
      if (scopes.some((s) => s.kind === 'resource')) {
        throw new errors.InvalidTarget('resource scopes need a resource (or aud) parameter naming the resource server');
      }
    },
  };
}
