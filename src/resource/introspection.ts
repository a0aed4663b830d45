// Token introspection (RFC 7662) for opaque access tokens, as a resource server: client_secret_basic,
// fail closed (an unreachable or misbehaving endpoint is 503, never "accept"), and a short cache of
// positive answers keyed by the token's SHA-256 (the token itself is never kept as a key or logged).
import { createHash } from 'node:crypto';

import { invalidToken, temporarilyUnavailable } from './errors.ts';

/**
 * The part of `fetch` this library uses. Both the global `fetch` and undici's `fetch` fit; to trust a
 * private CA, pass `(url, init) => undiciFetch(url, { ...init, dispatcher: new Agent({ connect: { ca } }) })`.
 */
export type FetchLike = (
  url: string,
  init: {
    method: 'GET' | 'POST';
    headers: Record<string, string>;
    body?: string;
    signal: AbortSignal;
    redirect: 'manual';
  },
) => Promise<FetchResponseLike>;

export interface FetchResponseLike {
  readonly status: number;
  json(): Promise<unknown>;
}

export interface IntrospectionOptions {
  /** The authorization server's introspection endpoint (its `introspection_endpoint`). */
  endpoint: string;
  /** This resource server's client credentials at the authorization server (client_secret_basic). */
  clientId: string;
  clientSecret: string;
  fetch?: FetchLike;
  /** Default 5000 ms. */
  timeoutMs?: number;
  /** Upper bound for caching an active answer; default and maximum 30 s. 0 disables the cache. */
  cacheSeconds?: number;
}

export interface IntrospectionExpectations {
  issuer: string;
  audience: string;
  clockToleranceSeconds: number;
}

const MAX_CACHE_SECONDS = 30;
const MAX_CACHE_ENTRIES = 10_000;

export type Introspector = (token: string) => Promise<Record<string, unknown>>;

/**
 * Returns a function that introspects a token and answers its claims (the introspection response)
 * when the token is active, for this audience, a bearer token and not expired; otherwise throws
 * 401 invalid_token (503 temporarily_unavailable when the endpoint cannot answer).
 */
export function createIntrospector(options: IntrospectionOptions, expect: IntrospectionExpectations): Introspector {
  const endpoint = new URL(options.endpoint).href;
  const doFetch: FetchLike = options.fetch ?? (globalThis.fetch as unknown as FetchLike);
  const timeoutMs = options.timeoutMs ?? 5000;
  const cacheMs = Math.max(0, Math.min(options.cacheSeconds ?? MAX_CACHE_SECONDS, MAX_CACHE_SECONDS)) * 1000;
  const authorization = `Basic ${Buffer.from(
    `${formEncode(options.clientId)}:${formEncode(options.clientSecret)}`,
  ).toString('base64')}`;
  const cache = new Map<string, { claims: Record<string, unknown>; until: number }>();

  const call = async (token: string): Promise<Record<string, unknown>> => {
    let status: number;
    let body: unknown;
    try {
      const response = await doFetch(endpoint, {
        method: 'POST',
        headers: {
          authorization,
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
        },
        body: new URLSearchParams({ token, token_type_hint: 'access_token' }).toString(),
        signal: AbortSignal.timeout(timeoutMs),
        redirect: 'manual',
      });
      status = response.status;
      body = status === 200 ? await response.json() : undefined;
    } catch (err) {
      throw temporarilyUnavailable('token introspection failed', err);
    }
    // A 401 here means our own credentials were refused: a configuration fault, not the caller's.
    if (status !== 200) throw temporarilyUnavailable(`token introspection answered HTTP ${status}`);
    if (typeof body !== 'object' || body === null || Array.isArray(body)) {
      throw temporarilyUnavailable('token introspection answered a non-object');
    }
    return body as Record<string, unknown>;
  };

  return async (token) => {
    const key = createHash('sha256').update(token).digest('base64url');
    const now = Date.now();
    const hit = cache.get(key);
    if (hit && hit.until > now) return hit.claims;
    if (hit) cache.delete(key);

    const claims = await call(token);
    checkIntrospectionClaims(claims, expect);

    const exp = claims.exp as number | undefined;
    const until = Math.min(now + cacheMs, exp === undefined ? Infinity : exp * 1000);
    if (until > now) {
      if (cache.size >= MAX_CACHE_ENTRIES) evict(cache, now);
      cache.set(key, { claims, until });
    }
    return claims;
  };
}

function checkIntrospectionClaims(claims: Record<string, unknown>, expect: IntrospectionExpectations): void {
  if (claims.active !== true) throw invalidToken('token is not active');
  const tokenType = claims.token_type;
  if (tokenType !== undefined && (typeof tokenType !== 'string' || tokenType.toLowerCase() !== 'bearer')) {
    throw invalidToken('token is not a bearer token');
  }
  if (claims.iss !== undefined && claims.iss !== expect.issuer) throw invalidToken('token issuer is not trusted');
  const aud = claims.aud;
  const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
  if (!audiences.includes(expect.audience)) throw invalidToken('token audience is not this resource server');
  const now = Math.floor(Date.now() / 1000);
  if (claims.exp !== undefined) {
    if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) throw invalidToken('malformed token expiry');
    if (claims.exp <= now - expect.clockToleranceSeconds) throw invalidToken('token expired');
  }
  if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || claims.nbf > now + expect.clockToleranceSeconds)) {
    throw invalidToken('token not yet valid');
  }
}

/** Drops expired entries, then the oldest ones, until there is room. */
function evict(cache: Map<string, { until: number }>, now: number): void {
  for (const [key, entry] of cache) if (entry.until <= now) cache.delete(key);
  for (const key of cache.keys()) {
    if (cache.size < MAX_CACHE_ENTRIES) break;
    cache.delete(key);
  }
}

/** RFC 6749 §2.3.1: client id and secret are form-urlencoded before Basic encoding. */
function formEncode(value: string): string {
  return encodeURIComponent(value).replace(/%20/g, '+');
}
