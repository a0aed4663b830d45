// The admin API (`/admin/api`, JSON): one module per resource under ./api, sharing authentication,
// errors, preconditions and change records. Served on both listeners; tokens are certificate-bound,
// so in practice it is called on the mTLS listener with the caller's certificate.
import Router, { type RouterContext, type RouterMiddleware } from '@koa/router';
import type Koa from 'koa';
import type Provider from 'oidc-provider';

import type { LoginThrottle } from '../accounts/login-throttle.ts';
import type { AuditLog } from '../audit/log.ts';
import { ClientRegistrationError } from '../clients/register.ts';
import type { Db } from '../db/index.ts';
import { AdminAuthError, type AdminPrincipal, type AdminScope } from './auth.ts';
import { AdminHttpError } from './http.ts';
import { clientRoutes } from './api/clients.ts';
import { careTeamRoutes } from './api/care-teams.ts';
import { launchRoutes } from './api/launches.ts';
import { userRoutes } from './api/users.ts';
import { resourceServerAndExchangePolicyRoutes } from './api/exchange-policies.ts';
import { breakGlassRoutes } from './api/break-glass.ts';
import { auditRoutes } from './api/audit.ts';

export interface AdminApiDeps {
  db: Db;
  audit: AuditLog;
  getProvider(): Provider;
  clientSecretKey: string;
  /** The failed-login lock (unlock clears it). */
  loginThrottle: LoginThrottle;
  authenticate(ctx: Koa.Context, scope: AdminScope): Promise<AdminPrincipal>;
}

export type AdminHandler = (ctx: RouterContext, principal: AdminPrincipal) => Promise<void>;

/** A route: authenticated for `scope` first, then `handler`. */
export function guarded(deps: AdminApiDeps, scope: AdminScope, handler: AdminHandler): RouterMiddleware {
  return async (ctx: RouterContext) => handler(ctx, await deps.authenticate(ctx, scope));
}

function fail(ctx: Koa.Context, status: number, body: Record<string, unknown>): void {
  ctx.status = status;
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

/** Refusals as JSON with their RFC error codes; anything unexpected goes on to the app's 500 handler. */
async function adminErrors(ctx: Koa.Context, next: Koa.Next): Promise<void> {
  try {
    await next();
  } catch (err) {
    if (err instanceof AdminAuthError) {
      ctx.set('WWW-Authenticate', err.challenge);
      return fail(ctx, err.status, { error: err.error, error_description: err.description });
    }
    if (err instanceof AdminHttpError) return fail(ctx, err.status, { error: err.error, error_description: err.description, ...(err.field ? { field: err.field } : {}) });
    if (err instanceof ClientRegistrationError) {
      const exists = /already exists/.test(err.message);
      const error = exists ? 'conflict' : err.message.startsWith('redirect_uris') ? 'invalid_redirect_uri' : 'invalid_client_metadata';
      return fail(ctx, exists ? 409 : 400, { error, error_description: err.message });
    }
    // oidc-provider's own errors (InvalidClientMetadata from Client.validate, ...): their code and text.
    const e = err as { status?: number; error?: string; error_description?: string };
    if (typeof e.error === 'string' && typeof e.status === 'number' && e.status < 500) {
      return fail(ctx, e.status, { error: e.error, error_description: e.error_description ?? e.error });
    }
    throw err;
  }
}

export function adminApiRoutes(deps: AdminApiDeps): Koa.Middleware {
  const router = new Router({ prefix: '/admin/api' });
  router.use(adminErrors);
  clientRoutes(router, deps);
  userRoutes(router, deps);
  careTeamRoutes(router, deps);
  launchRoutes(router, deps);
  resourceServerAndExchangePolicyRoutes(router, deps);
  breakGlassRoutes(router, deps);
  auditRoutes(router, deps);
  const routes = router.routes();
  const methods = router.allowedMethods();
  return async (ctx, next) => {
    if (ctx.path !== '/admin/api' && !ctx.path.startsWith('/admin/api/')) return next();
    await routes(ctx as never, async () => {
      await methods(ctx as never, async () => undefined);
    });
    if (ctx.status === 404 && ctx.body === undefined) fail(ctx, 404, { error: 'not_found', error_description: 'no such admin API resource' });
    // allowedMethods answers 405/501 in plain text: the same JSON shape as every other refusal (Allow kept).
    if (ctx.status === 405 || ctx.status === 501) fail(ctx, ctx.status, { error: 'invalid_request', error_description: `method not allowed (allowed: ${ctx.response.get('Allow') || 'none'})` });
  };
}
