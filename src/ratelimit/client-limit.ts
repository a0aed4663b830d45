// Per-client rate limit at the token, introspection, revocation and registration endpoints.
//
// The key is the client id the request *claims* — nothing is verified and nothing is looked up before
// the counter, so a refused request costs one counter operation and no other database work. Runs
// after oauthFormBodies (which leaves form bodies in ctx.request.body) and before anything that
// reads or writes the database for the request (oidc-provider, the audit of its answers).
import { randomUUID } from 'node:crypto';

import { decodeJwt } from 'jose';
import type Koa from 'koa';

import type { AuditLog } from '../audit/log.ts';
import { currentRequestContext } from '../audit/request-context.ts';
import { consumePoint, counterKey, RateLimitUnavailableError, type RateLimiters } from './limiters.ts';

/** oidc-provider's default routes (POST) for the endpoints a client calls with its credentials. */
export const CLIENT_LIMITED_PATHS: ReadonlySet<string> = new Set(['/token', '/token/introspection', '/token/revocation', '/reg']);
// Same shape as http-events.ts accepts as an actor, so one client reads the same across event types.
const ACTOR_CLIENT_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const UNAVAILABLE_RETRY_AFTER_SECONDS = 5;

export interface ClaimedClient {
  /** Counter key: `c:<client id>` (hashed if odd), or `ip:<address>` when no client id is claimed. */
  key: string;
  clientId: string | undefined;
}

/**
 * The endpoint as oidc-provider's router would match it (ASCII case-insensitive, one trailing slash
 * tolerated), so `/TOKEN/` cannot slip past the limit; undefined for other paths.
 */
export function limitedEndpoint(path: string): string | undefined {
  const trimmed = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
  const folded = trimmed.replace(/[A-Z]/g, (c) => c.toLowerCase());
  return CLIENT_LIMITED_PATHS.has(folded) ? folded : undefined;
}

function basicUser(authorization: string): string | undefined {
  const match = /^basic\s+(\S+)\s*$/i.exec(authorization);
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  const user = decoded.slice(0, colon);
  // RFC 6749 §2.3.1: form-urlencoded; decoded as oidc-provider does ('+' is a space).
  try {
    return decodeURIComponent(user.replace(/\+/g, '%20'));
  } catch {
    return user; // oidc-provider refuses it; it still counts, under its raw form
  }
}

/** Client id claimed by Basic auth, else `client_id`, else the subject of an (unverified) client assertion. */
export function claimedClientId(ctx: Koa.Context): string | undefined {
  const fromBasic = basicUser(ctx.get('authorization'));
  if (fromBasic) return fromBasic;
  const body = (ctx.request as { body?: unknown }).body;
  if (!body || typeof body !== 'object') return undefined;
  const { client_id: clientId, client_assertion: assertion } = body as Record<string, unknown>;
  if (typeof clientId === 'string' && clientId !== '') return clientId;
  if (typeof assertion === 'string') {
    try {
      // oidc-provider identifies the client by `sub` (RFC 7523 §3: iss and sub are both the client id).
      const { sub, iss } = decodeJwt(assertion);
      const claimed = sub ?? iss;
      if (typeof claimed === 'string' && claimed !== '') return claimed;
    } catch {
      // not a JWT: oidc-provider refuses it; counted under the source address
    }
  }
  return undefined;
}

export function claimedClient(ctx: Koa.Context): ClaimedClient {
  const clientId = claimedClientId(ctx);
  return clientId !== undefined
    ? { key: counterKey('c', clientId), clientId }
    : { key: counterKey('ip', ctx.ip || 'unknown'), clientId: undefined };
}

function refuse(ctx: Koa.Context, status: number, retryAfterSeconds: number, description: string) {
  ctx.status = status;
  ctx.set('Retry-After', String(retryAfterSeconds));
  ctx.set('Cache-Control', 'no-store');
  ctx.body = { error: 'temporarily_unavailable', error_description: description };
}

export function clientRateLimit(limiters: RateLimiters, audit: AuditLog): Koa.Middleware {
  return async (ctx, next) => {
    if (!limiters.enabled || ctx.method !== 'POST') return next();
    const endpoint = limitedEndpoint(ctx.path);
    if (!endpoint) return next();

    const claim = claimedClient(ctx);
    let outcome;
    try {
      outcome = await consumePoint(limiters, 'client', claim.key);
    } catch (err) {
      if (!(err instanceof RateLimitUnavailableError)) throw err;
      return refuse(ctx, 503, UNAVAILABLE_RETRY_AFTER_SECONDS, err.error_description);
    }
    if (outcome.allowed) return next();

    // One event per key and window: a flood of refusals must not become a flood of audit writes.
    if (outcome.firstRefusal) {
      try {
        await audit.record({
          type: 'rate_limit.exceeded',
          outcome: 'denied',
          rule: 'rate_limit.client',
          actor: { clientId: claim.clientId !== undefined && ACTOR_CLIENT_ID.test(claim.clientId) ? claim.clientId : undefined },
          details: { limiter: 'client', endpoint },
        }, undefined, currentRequestContext() ?? { requestId: String(ctx.state.requestId ?? randomUUID()), sourceIp: ctx.ip || undefined });
      } catch (err) {
        // The refusal stands whatever the audit log says; the failure is reported, not hidden.
        limiters.logger?.error({ err: (err as Error).message, requestId: ctx.state.requestId }, 'rate_limit.exceeded audit event could not be written');
      }
    }
    refuse(ctx, 429, outcome.retryAfterSeconds, 'rate limit exceeded, retry later');
  };
}
