// Audit events read off oidc-provider's answers: client authentication failures, refused token
// requests, and introspection of tokens that are revoked, expired or unknown.
import type Koa from 'koa';

import type { AuditLog } from './log.ts';

const CLIENT_ID = /^[A-Za-z0-9._:-]{1,128}$/;
const TOKEN_PATHS = new Set(['/token', '/token/introspection', '/token/revocation']);

type OidcState = { oidc?: { client?: { clientId: string }; params?: Record<string, unknown> } };

/** The client id a request claims (Basic user part or client_id), only if it looks like one. */
export function claimedClientId(ctx: Koa.Context): string | undefined {
  const authorization = ctx.get('authorization');
  let claimed: unknown;
  if (/^basic /i.test(authorization)) {
    try {
      const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
      claimed = decodeURIComponent(decoded.slice(0, Math.max(0, decoded.indexOf(':'))));
    } catch {
      claimed = undefined;
    }
  } else {
    claimed = (ctx.request as { body?: Record<string, unknown> }).body?.client_id;
  }
  return typeof claimed === 'string' && CLIENT_ID.test(claimed) ? claimed : undefined;
}

export function auditResponses(audit: AuditLog, onError: (err: unknown) => void): Koa.Middleware {
  return async (ctx, next) => {
    await next();
    if (ctx.method !== 'POST' || !TOKEN_PATHS.has(ctx.path)) return;
    const body = ctx.body as { error?: unknown; active?: unknown } | undefined;
    if (!body || typeof body !== 'object') return;
    const authenticated = (ctx as unknown as OidcState).oidc?.client?.clientId;
    const endpoint = ctx.path;
    try {
      if (body.error === 'invalid_client') {
        await audit.record({
          type: 'client.authentication_failed',
          outcome: 'denied',
          rule: 'client_authentication',
          actor: { clientId: claimedClientId(ctx) },
          details: { endpoint },
        });
      } else if (typeof body.error === 'string' && endpoint === '/token') {
        const grantType = (ctx.request as { body?: Record<string, unknown> }).body?.grant_type;
        await audit.record({
          type: 'token.request_refused',
          outcome: 'denied',
          rule: `oauth.${body.error}`,
          actor: { clientId: authenticated ?? claimedClientId(ctx) },
          details: { error: body.error, grant_type: typeof grantType === 'string' && grantType.length < 100 ? grantType : undefined },
        });
      } else if (endpoint === '/token/introspection' && body.active === false) {
        await audit.record({
          type: 'introspection.inactive',
          outcome: 'failure',
          rule: 'oauth.introspection',
          actor: { clientId: authenticated },
        });
      }
    } catch (err) {
      // These answers are refusals already; a failed audit write must not turn them into successes,
      // and it must not hide them either: report it.
      onError(err);
    }
  };
}
