// The account pages are a first-party relying party of this server: they sign users in through the
// same authorization endpoint (and so the same login, passkey and step-up rules) with response_type
// none, which only establishes the session; no code or token is ever issued to them.
export const ACCOUNT_CLIENT_ID = 'clinical-authz-account';
export const ACCOUNT_CALLBACK_PATH = '/account/callback';

import type { ClientMetadata } from 'oidc-provider';

export function accountClientMetadata(issuer: string): ClientMetadata {
  return {
    client_id: ACCOUNT_CLIENT_ID,
    client_name: 'Your account',
    redirect_uris: [`${issuer}${ACCOUNT_CALLBACK_PATH}`],
    response_types: ['none'],
    grant_types: [],
    token_endpoint_auth_method: 'none',
    scope: 'openid',
  };
}
