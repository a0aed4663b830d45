// Per-client rate limit at the token, introspection, revocation and registration endpoints.
//
// The key is the client id the request *claims* — nothing is verified and nothing is looked up before
// the counter, so a refused request costs one counter operation and no other database work. Runs
// after oauthFormBodies (which leaves form bodies in ctx.request.body) and before anything that
// reads or writes the database for the request (oidc-provider, the audit of its answers).
import { randomUUID } from 'node:crypto';

import type Koa from 'koa';

import type { AuditLog } from '../audit/log.ts';
import { auditableClientId, claimedClientId } from '../http/client-claim.ts';
import { providerEndpoint } from '../http/endpoint.ts';
import { currentRequestContext } from '../audit/request-context.ts';
import { consumePoint, counterKey, RateLimitUnavailableError, type RateLimiters } from './limiters.ts';

/** oidc-provider's default routes (POST) for the endpoints a client calls with its credentials. */
export const CLIENT_LIMITED_PATHS: ReadonlySet<string> = new Set(['/token', '/token/introspection', '/token/revocation', '/reg']);

export function limitedEndpoint(path: string): string | undefined {
  const endpoint = providerEndpoint(path);
  return CLIENT_LIMITED_PATHS.has(endpoint) ? endpoint : undefined;
}
// Same shape as http-events.ts accepts as an actor, so one client reads the same across event types.
const UNAVAILABLE_RETRY_AFTER_SECONDS = 5;

export interface ClaimedClient {
  /** Counter key: `c:<client id>` (hashed if odd), or `ip:<address>` when no client id is claimed. */
  key: string;
  clientId: string | undefined;
}

/**
 * Counted per (claimed client, source address): the claim is unverified at this point, so a budget
 * per claimed client alone would let anyone exhaust a real client's budget with wrong secrets.
 */
export function claimedClient(ctx: Koa.Context): ClaimedClient {
  const clientId = claimedClientId(ctx);
  const source = ctx.ip || 'unknown';
  return clientId !== undefined
    ? { key: counterKey('c', `${clientId}|${source}`), clientId }
    : { key: counterKey('ip', source), clientId: undefined };
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
          actor: { clientId: auditableClientId(claim.clientId) },
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
