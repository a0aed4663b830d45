// oidc-provider's endpoint paths, set explicitly so discovery, the mTLS aliases and SMART's
// configuration document name the same URLs.
export const ROUTES = {
  authorization: '/auth',
  token: '/token',
  introspection: '/token/introspection',
  revocation: '/token/revocation',
  jwks: '/jwks',
  userinfo: '/me',
  end_session: '/session/end',
  registration: '/reg',
  pushed_authorization_request: '/request',
} as const;

/** Endpoints a client calls with its certificate (RFC 8705 §5): served on the mTLS listener too. */
export const MTLS_ALIASED = ['token', 'introspection', 'revocation', 'userinfo', 'pushed_authorization_request'] as const;

export function mtlsEndpointAliases(mtlsBaseUrl: string): Record<string, string> {
  const base = mtlsBaseUrl.replace(/\/+$/, '');
  const names: Record<(typeof MTLS_ALIASED)[number], string> = {
    token: 'token_endpoint',
    introspection: 'introspection_endpoint',
    revocation: 'revocation_endpoint',
    userinfo: 'userinfo_endpoint',
    pushed_authorization_request: 'pushed_authorization_request_endpoint',
  };
  return Object.fromEntries(MTLS_ALIASED.map((route) => [names[route], `${base}${ROUTES[route]}`]));
}
