// The koa application: request ids, security headers, health checks, our pages, then oidc-provider.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import Koa from 'koa';
import mount from 'koa-mount';
import type Provider from 'oidc-provider';

import { runWithRequestContext } from '../audit/request-context.ts';
import type { Db } from '../db/index.ts';
import { OAuthStyleError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { JwtAccessTokenRegistry } from '../oidc/jwt-access-tokens.ts';
import { errorPage } from '../../views/messages.ts';
import { jwtAccessTokenHandles, oauthFormBodies } from './oauth-form-bodies.ts';
import { trustedProxies } from './trusted-proxies.ts';
import { rfcErrorCodes } from './rfc-error-codes.ts';

export interface ProviderHandle {
  provider: Provider;
  jwtAccessTokens: JwtAccessTokenRegistry;
  /** Public signing keys, to verify our own JWTs at introspection/revocation. */
  publicJwks: { keys: Record<string, unknown>[] };
}

export interface AppDeps {
  db: Db;
  logger: Logger;
  issuer: string;
  trustProxy: boolean;
  trustedProxies: string[];
  /** oidc-provider's cookie keys: mounted, it signs cookies through this app's context. */
  cookieKeys: string[];
  current: () => ProviderHandle;
  /** Run first on every request inside its audit context (client certificate extraction). */
  early?: Koa.Middleware[];
  /** Run on provider requests after the body is parsed (audit of answers, rate limits). */
  beforeProvider: Koa.Middleware[];
  routes: Koa.Middleware[];
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const require = createRequire(import.meta.url);
// Served by the server itself (no CDN): the page stylesheet and scripts, and the WebAuthn browser library.
const STATIC_FILES: Record<string, { file: string; type: string }> = {
  '/static/app.css': { file: fileURLToPath(new URL('../../views/static/app.css', import.meta.url)), type: 'text/css' },
  '/static/passkey.js': { file: fileURLToPath(new URL('../../views/static/passkey.js', import.meta.url)), type: 'application/javascript' },
  '/static/simplewebauthn-browser.js': {
    file: path.join(path.dirname(require.resolve('@simplewebauthn/browser')), '../dist/bundle/index.umd.min.js'),
    type: 'application/javascript',
  },
};

const CSP = [
  "default-src 'none'",
  "style-src 'self'",
  "img-src 'self'",
  "script-src 'self'",
  "connect-src 'self'",
  "base-uri 'none'",
  "frame-ancestors 'none'",
].join('; ');

function wantsHtml(ctx: Koa.Context) {
  return ctx.accepts('json', 'html') === 'html';
}

function sendError(ctx: Koa.Context, status: number, error: string, description: string) {
  ctx.status = status;
  ctx.set('Cache-Control', 'no-store');
  if (wantsHtml(ctx)) {
    ctx.type = 'html';
    ctx.body = errorPage(error, description);
  } else {
    ctx.body = { error, error_description: description };
  }
}

export function createApp(deps: AppDeps): Koa {
  const app = new Koa({ proxy: deps.trustProxy, keys: deps.cookieKeys });
  const mounted = new WeakMap<Provider, Koa.Middleware>();
  const providerMiddleware = (provider: Provider) => {
    let middleware = mounted.get(provider);
    if (!middleware) {
      middleware = mount(provider as unknown as Koa) as unknown as Koa.Middleware;
      mounted.set(provider, middleware);
    }
    return middleware;
  };
  const staticCache = new Map<string, Promise<Buffer>>();

  app.use(trustedProxies(deps.trustProxy, deps.trustedProxies));

  app.use(async (ctx, next) => {
    const incoming = ctx.get('X-Request-Id');
    const requestId = REQUEST_ID.test(incoming) ? incoming : randomUUID();
    ctx.state.requestId = requestId;
    ctx.set('X-Request-Id', requestId);
    ctx.set('Strict-Transport-Security', 'max-age=63072000; includeSubDomains');
    ctx.set('X-Content-Type-Options', 'nosniff');
    ctx.set('Referrer-Policy', 'no-referrer');
    ctx.set('Content-Security-Policy', CSP);
    ctx.set('X-Frame-Options', 'DENY');
    const started = performance.now();
    try {
      await runWithRequestContext({ requestId, sourceIp: ctx.ip || undefined }, next);
      // Unavailable (database, audit log): tell clients when to come back, whoever answered.
      if (ctx.status === 503 && !ctx.response.get('Retry-After')) ctx.set('Retry-After', '5');
    } finally {
      // Path only: query strings can carry codes and state, bodies carry secrets.
      deps.logger.info({
        requestId, method: ctx.method, path: ctx.path, status: ctx.status, ms: Math.round(performance.now() - started),
      }, 'request');
    }
  });

  for (const middleware of deps.early ?? []) app.use(middleware);

  // Our own routes fail with clear OAuth-style errors; oidc-provider handles its routes itself.
  app.use(async (ctx, next) => {
    try {
      await next();
    } catch (err) {
      if (err instanceof OAuthStyleError) return sendError(ctx, err.status, err.error, err.error_description);
      const e = err as { status?: number; expose?: boolean; error?: string; error_description?: string; message?: string };
      if (e.expose && e.status && e.status < 500) {
        return sendError(ctx, e.status, e.error ?? 'invalid_request', e.error_description ?? e.message ?? 'invalid request');
      }
      deps.logger.error({ err: { name: (err as Error).name, message: (err as Error).message }, requestId: ctx.state.requestId, path: ctx.path }, 'unhandled error');
      sendError(ctx, 500, 'server_error', 'the server could not complete the request');
    }
  });

  app.use(async (ctx, next) => {
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') return next();
    if (ctx.path === '/healthz') {
      ctx.body = { status: 'ok' };
      return;
    }
    if (ctx.path === '/readyz') {
      try {
        await deps.db.ping();
        ctx.body = { status: 'ready' };
      } catch {
        ctx.status = 503;
        ctx.body = { status: 'unavailable', error: 'temporarily_unavailable' };
      }
      return;
    }
    const file = Object.hasOwn(STATIC_FILES, ctx.path) ? STATIC_FILES[ctx.path] : undefined;
    if (file) {
      let content = staticCache.get(ctx.path);
      if (!content) staticCache.set(ctx.path, content = fs.readFile(file.file));
      ctx.type = file.type;
      ctx.set('Cache-Control', 'public, max-age=3600');
      ctx.body = await content;
      return;
    }
    return next();
  });

  app.use(oauthFormBodies());
  for (const middleware of deps.beforeProvider) app.use(middleware);
  app.use(jwtAccessTokenHandles({ issuer: deps.issuer, current: deps.current }));
  app.use(rfcErrorCodes);

  for (const route of deps.routes) app.use(route);

  app.use((ctx, next) => providerMiddleware(deps.current().provider)(ctx, next));

  return app;
}
