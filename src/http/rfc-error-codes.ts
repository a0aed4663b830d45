// oidc-provider 9.13 answers two RFC 6749 §5.2 cases with invalid_request; we answer with the codes
// the RFC names, so clients and tests see one consistent vocabulary. Pinned to the exact messages of
// the pinned oidc-provider version; tests/refusals.test.ts fails if they change.
import type Koa from 'koa';

const REWRITES: ReadonlyArray<{ description: string; status: number; error: string }> = [
  // "no client authentication included" is invalid_client (401) in RFC 6749 §5.2.
  { description: 'no client authentication mechanism provided', status: 401, error: 'invalid_client' },
  // "not authorized to use this authorization grant type" is unauthorized_client.
  { description: 'requested grant type is not allowed for this client', status: 400, error: 'unauthorized_client' },
];

export const rfcErrorCodes: Koa.Middleware = async (ctx, next) => {
  await next();
  const body = ctx.body as { error?: unknown; error_description?: unknown } | undefined;
  if (!body || typeof body !== 'object' || body.error !== 'invalid_request') return;
  const rewrite = REWRITES.find((r) => r.description === body.error_description);
  if (!rewrite) return;
  ctx.status = rewrite.status;
  ctx.body = { ...body, error: rewrite.error };
};
