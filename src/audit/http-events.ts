// Audit events read off oidc-provider's answers: client authentication failures, refused token
// requests, and introspection of tokens that are revoked, expired or unknown.
import type Koa from 'koa';

import { auditableClientId, claimedClientId } from '../http/client-claim.ts';
import { providerEndpoint } from '../http/endpoint.ts';
import type { AuditLog } from './log.ts';

const TOKEN_PATHS = new Set(['/token', '/token/introspection', '/token/revocation']);

type OidcState = { oidc?: { client?: { clientId: string }; params?: Record<string, unknown> } };

export function auditResponses(audit: AuditLog, onError: (err: unknown) => void): Koa.Middleware {
  return async (ctx, next) => {
    await next();
    const endpoint = providerEndpoint(ctx.path);
    if (ctx.method !== 'POST' || !TOKEN_PATHS.has(endpoint)) return;
    const body = ctx.body as { error?: unknown; active?: unknown } | undefined;
    if (!body || typeof body !== 'object') return;
    // The service could not answer (database or counter store unavailable): nothing was decided, the
    // audit log is most likely unwritable too, and the failure is logged where it happened.
    if (body.error === 'temporarily_unavailable') return;
    const authenticated = (ctx as unknown as OidcState).oidc?.client?.clientId;
    try {
      if (body.error === 'invalid_client') {
        await audit.record({
          type: 'client.authentication_failed',
          outcome: 'denied',
          rule: 'client_authentication',
          actor: { clientId: auditableClientId(claimedClientId(ctx)) },
          details: { endpoint },
        });
      } else if (typeof body.error === 'string' && endpoint === '/token') {
        const grantType = (ctx.request as { body?: Record<string, unknown> }).body?.grant_type;
        await audit.record({
          type: 'token.request_refused',
          outcome: 'denied',
          rule: `oauth.${body.error}`,
          actor: { clientId: authenticated ?? auditableClientId(claimedClientId(ctx)) },
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
