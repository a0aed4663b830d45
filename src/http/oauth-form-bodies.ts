// Form bodies of oidc-provider's endpoints, read before it does: strict percent-decoding (malformed
// bodies are refused, not guessed at). And, as a separate step placed after the rate limits, JWT
// access tokens at introspection/revocation swapped for a one-request handle that our
// JwtAccessTokenRegistry resolves.
import type Koa from 'koa';

import type { ProviderHandle } from './app.ts';
import { HttpError, readRawBody } from './body.ts';
import { providerEndpoint } from './endpoint.ts';

// oidc-provider's own form-body limit.
const BODY_LIMIT = 56 * 1024;
const TOKEN_MANAGEMENT_PATHS = new Set(['/token/introspection', '/token/revocation']);

type FormBody = Record<string, string | string[]>;

function decodeComponent(value: string): string {
  try {
    return decodeURIComponent(value.replace(/\+/g, ' '));
  } catch {
    throw new HttpError(400, 'invalid_request', 'malformed application/x-www-form-urlencoded body');
  }
}

/** Parses as oidc-provider does (repeated parameters become arrays, which it refuses) but strictly. */
export function parseFormStrict(raw: string): FormBody {
  const body: FormBody = Object.create(null);
  if (raw === '') return body;
  for (const pair of raw.split('&')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    const key = decodeComponent(eq === -1 ? pair : pair.slice(0, eq));
    const value = decodeComponent(eq === -1 ? '' : pair.slice(eq + 1));
    if (key.includes('\0') || value.includes('\0')) throw new HttpError(400, 'invalid_request', 'parameters must not contain NUL');
    const existing = body[key];
    body[key] = existing === undefined ? value : [...(Array.isArray(existing) ? existing : [existing]), value];
  }
  return body;
}

export function oauthFormBodies(): Koa.Middleware {
  return async (ctx, next) => {
    // Our own pages (interactions, account, admin console) read their forms themselves.
    if (ctx.method !== 'POST' || ctx.path.startsWith('/interaction/') || ctx.path.startsWith('/account/') || ctx.path.startsWith('/admin/') || !ctx.is('application/x-www-form-urlencoded')) {
      return next();
    }
    const charset = /;\s*charset\s*=\s*"?([^";\s]+)/i.exec(ctx.get('content-type'))?.[1];
    if (charset && !/^utf-?8$/i.test(charset)) {
      throw new HttpError(400, 'invalid_request', 'only UTF-8 form bodies are supported');
    }
    const raw = await readRawBody(ctx, BODY_LIMIT);
    // oidc-provider accepts a body parsed upstream (it logs a one-time notice about it).
    (ctx.request as unknown as { body: unknown }).body = parseFormStrict(raw.toString('utf8'));
    return next();
  };
}

/** Verifies a JWT access token presented for introspection/revocation (a signature check and a read). */
export function jwtAccessTokenHandles(deps: { issuer: string; current: () => ProviderHandle }): Koa.Middleware {
  return async (ctx, next) => {
    const body = (ctx.request as unknown as { body?: FormBody }).body;
    if (ctx.method !== 'POST' || !TOKEN_MANAGEMENT_PATHS.has(providerEndpoint(ctx.path)) || typeof body?.token !== 'string') {
      return next();
    }
    const { jwtAccessTokens, publicJwks } = deps.current();
    const handle = await jwtAccessTokens.substitute(body.token, publicJwks as never, deps.issuer);
    if (handle) body.token = handle;
    try {
      await next();
    } finally {
      if (handle) jwtAccessTokens.release(handle);
    }
  };
}
