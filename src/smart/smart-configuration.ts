// GET /.well-known/smart-configuration (SMART App Launch 2.x, "Conformance"): how SMART apps find our
// endpoints and what we support. Built from the same route table and auth methods as OIDC discovery.
import type Koa from 'koa';

import type { Queryable } from '../db/index.ts';
import { mtlsEndpointAliases, ROUTES } from '../oidc/endpoints.ts';

export const SMART_CONFIGURATION_PATH = '/.well-known/smart-configuration';

export interface SmartConfigurationOptions {
  issuer: string;
  mtlsBaseUrl: string;
  db: Queryable;
  /** Named scopes (openid, launch/patient, ...) the server accepts. */
  namedScopes: readonly string[];
  tokenEndpointAuthMethods: readonly string[];
}

/** What we support, in SMART's capability vocabulary (each is exercised by the test suite). */
export const SMART_CAPABILITIES = [
  'launch-ehr',
  'launch-standalone',
  'authorize-post',
  'client-public',
  'client-confidential-symmetric',
  'client-confidential-asymmetric',
  'context-ehr-patient',
  'context-ehr-encounter',
  'context-standalone-patient',
  'context-banner',
  'sso-openid-connect',
  'permission-offline',
  'permission-patient',
  'permission-user',
  'permission-v1',
  'permission-v2',
] as const;

async function resourceServerScopes(db: Queryable): Promise<string[]> {
  const { rows } = await db.query<{ scope: string }>('SELECT scope FROM resource_servers ORDER BY identifier');
  return rows.flatMap((r) => r.scope.split(' ').filter(Boolean));
}

export async function smartConfiguration(options: SmartConfigurationOptions): Promise<Record<string, unknown>> {
  const url = (path: string) => `${options.issuer}${path}`;
  return {
    issuer: options.issuer,
    jwks_uri: url(ROUTES.jwks),
    authorization_endpoint: url(ROUTES.authorization),
    token_endpoint: url(ROUTES.token),
    introspection_endpoint: url(ROUTES.introspection),
    revocation_endpoint: url(ROUTES.revocation),
    userinfo_endpoint: url(ROUTES.userinfo),
    // RFC 7591 (with an initial access token from an administrator).
    registration_endpoint: url(ROUTES.registration),
    grant_types_supported: ['authorization_code', 'client_credentials', 'refresh_token'],
    token_endpoint_auth_methods_supported: [...options.tokenEndpointAuthMethods],
    token_endpoint_auth_signing_alg_values_supported: ['ES256', 'PS256', 'RS256', 'EdDSA'],
    scopes_supported: [...new Set([...options.namedScopes, ...await resourceServerScopes(options.db)])],
    response_types_supported: ['code'],
    code_challenge_methods_supported: ['S256'],
    capabilities: [...SMART_CAPABILITIES],
    // RFC 8705: confidential clients get certificate-bound tokens from the mTLS aliases.
    tls_client_certificate_bound_access_tokens: true,
    mtls_endpoint_aliases: mtlsEndpointAliases(options.mtlsBaseUrl),
  };
}

export function smartConfigurationRoute(options: SmartConfigurationOptions): Koa.Middleware {
  return async (ctx, next) => {
    if (ctx.path !== SMART_CONFIGURATION_PATH) return next();
    if (ctx.method !== 'GET' && ctx.method !== 'HEAD') {
      ctx.status = 405;
      ctx.set('Allow', 'GET, HEAD');
      ctx.body = { error: 'invalid_request', error_description: 'method not allowed' };
      return;
    }
    // Browser-based SMART apps read this document cross-origin.
    ctx.set('Access-Control-Allow-Origin', '*');
    ctx.set('Cache-Control', 'public, max-age=300');
    ctx.body = await smartConfiguration(options);
  };
}
