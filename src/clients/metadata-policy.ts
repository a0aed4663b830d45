// Our client registration policy, on top of oidc-provider's own client schema. It runs inside
// oidc-provider's metadata validation (extraClientMetadata.validator), so every path that creates or
// changes a client meets it: seed, CLI, admin API, RFC 7591/7592 registration, and clients loaded from
// the database. Every message starts with the field it is about; oidc-provider answers
// `invalid_redirect_uri` for `redirect_uris ...` and `invalid_client_metadata` for the rest.
import { errors } from 'oidc-provider';

import { TOKEN_EXCHANGE_GRANT } from '../exchange/decision.ts';
import { parseScope } from '../smart/scopes.ts';

/** RFC 8252 §7.3: loopback IP literals (not `localhost`, which may resolve elsewhere). */
const LOOPBACK_HOSTS = new Set(['127.0.0.1', '[::1]']);
const MTLS_METHODS = new Set(['tls_client_auth', 'self_signed_tls_client_auth']);
const SMART_CONTEXT = /^(patient|user|system)\//;
/** RFC 8252 §7.1: a private-use scheme of a native app is a reverse domain name (e.g. `org.hospital.app`). */
const PRIVATE_USE_SCHEME = /^[a-z][a-z0-9+-]*(\.[a-z0-9+-]+)+:$/;

interface Metadata {
  application_type?: unknown;
  redirect_uris?: unknown;
  post_logout_redirect_uris?: unknown;
  jwks_uri?: unknown;
  grant_types?: unknown;
  token_endpoint_auth_method?: unknown;
  tls_client_certificate_bound_access_tokens?: unknown;
  dpop_bound_access_tokens?: unknown;
  resource_scope?: unknown;
  break_glass_allowed?: unknown;
  [key: string]: unknown;
}

const invalid = (description: string): never => {
  throw new errors.InvalidClientMetadata(description);
};

const strings = (value: unknown): string[] => (Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : []);
const shown = (value: string) => (value.length > 80 ? `${value.slice(0, 80)}…` : value);

/** Exact, absolute, https redirect URIs; loopback http and private-use schemes only for native apps. */
function checkRedirectUris(label: 'redirect_uris' | 'post_logout_redirect_uris', uris: string[], native: boolean): void {
  for (const uri of uris) {
    // Wildcards would let one registration cover hosts or paths nobody reviewed.
    if (uri.includes('*')) invalid(`${label} must be exact: no wildcards (${shown(uri)})`);
    const url = URL.parse(uri);
    if (!url) return invalid(`${label} must only contain absolute URIs (${shown(uri)})`);
    if (uri.includes('#')) invalid(`${label} must not contain fragments (${shown(uri)})`);
    if (url.username || url.password) invalid(`${label} must not contain user information (${shown(uri)})`);
    if (url.protocol === 'https:') {
      if (LOOPBACK_HOSTS.has(url.hostname) || url.hostname === 'localhost') {
        if (native) invalid(`${label} of native apps use http for loopback, not https (${shown(uri)})`);
      }
      continue;
    }
    if (url.protocol === 'http:') {
      if (native && LOOPBACK_HOSTS.has(url.hostname)) continue;
      invalid(`${label} must use https (http only for a native app's loopback 127.0.0.1 or [::1], RFC 8252) (${shown(uri)})`);
    }
    if (native && PRIVATE_USE_SCHEME.test(url.protocol)) continue;
    invalid(`${label} must use https${native ? ', loopback http or a reverse-domain private-use scheme' : ''} (${shown(uri)})`);
  }
}

/** Tokens that name a SMART context must be valid SMART scopes; other tokens are resource servers' own scopes. */
function checkResourceScope(value: unknown): void {
  if (value === undefined) return;
  if (typeof value !== 'string') return invalid('resource_scope must be a space-separated list of scopes');
  for (const token of value.split(' ').filter(Boolean)) {
    if (!SMART_CONTEXT.test(token)) continue;
    const parsed = parseScope(token);
    if (!parsed.ok) invalid(`resource_scope has an invalid SMART scope: ${shown(token)} (${parsed.reason}: ${parsed.detail})`);
  }
}

/** Grant types, authentication method and token binding that make sense together. */
function checkGrantsAndAuth(m: Metadata): void {
  const grants = strings(m.grant_types);
  const method = typeof m.token_endpoint_auth_method === 'string' ? m.token_endpoint_auth_method : 'client_secret_basic';
  if (grants.includes(TOKEN_EXCHANGE_GRANT) && !MTLS_METHODS.has(method)) {
    invalid('token_endpoint_auth_method must be tls_client_auth or self_signed_tls_client_auth for token exchange (the workload proves itself with its certificate)');
  }
  if (method === 'none') {
    if (grants.includes('client_credentials')) invalid('grant_types: client_credentials needs an authenticated client, not token_endpoint_auth_method none');
    if (grants.includes(TOKEN_EXCHANGE_GRANT)) invalid('grant_types: token exchange needs an mTLS-authenticated client');
    // A public client's refresh token is a bearer secret unless bound to a key the app holds.
    if (grants.includes('refresh_token') && m.tls_client_certificate_bound_access_tokens !== true && m.dpop_bound_access_tokens !== true) {
      invalid('grant_types: a public client gets refresh tokens only when they are bound (tls_client_certificate_bound_access_tokens or dpop_bound_access_tokens)');
    }
  }
  // Automation over the admin API: a workload whose certificate the hospital's CA issued, nothing weaker.
  const resourceScopes = typeof m.resource_scope === 'string' ? m.resource_scope.split(' ') : [];
  if (grants.includes('client_credentials') && resourceScopes.some((s) => s.startsWith('admin:')) && method !== 'tls_client_auth') {
    invalid('token_endpoint_auth_method must be tls_client_auth (a CA-issued certificate) for a client holding admin scopes by client credentials');
  }
  if (m.break_glass_allowed === true && !grants.includes('authorization_code')) {
    invalid('break_glass_allowed needs the authorization_code grant (a clinician in front of the app)');
  }
}

export function enforceClientPolicy(m: Metadata): void {
  const native = m.application_type === 'native';
  checkRedirectUris('redirect_uris', strings(m.redirect_uris), native);
  checkRedirectUris('post_logout_redirect_uris', strings(m.post_logout_redirect_uris), native);
  if (typeof m.jwks_uri === 'string' && !m.jwks_uri.startsWith('https://')) invalid('jwks_uri must use https');
  checkGrantsAndAuth(m);
  checkResourceScope(m.resource_scope);
}
