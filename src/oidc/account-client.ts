// The account pages are a first-party relying party of this server: they sign users in through the
// same authorization endpoint (and so the same login, passkey and step-up rules) with response_type
// none, which only establishes the session; no code or token is ever issued to them.
export const ACCOUNT_CLIENT_ID = 'clinical-authz-account';
export const ACCOUNT_CALLBACK_PATH = '/account/callback';

import { errors, type ClientMetadata } from 'oidc-provider';

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

/**
 * `response_type=none` exists for the account pages only: any other client registering it is refused
 * (it would let a client establish sessions without ever redeeming a code). Called once per client
 * with its whole metadata (through the extra-metadata validator).
 */
export function refuseResponseTypeNone(metadata: Record<string, unknown>): void {
  const types = Array.isArray(metadata.response_types) ? metadata.response_types : [];
  if (types.includes('none') && metadata.client_id !== ACCOUNT_CLIENT_ID) {
    throw new errors.InvalidClientMetadata('response_types: only "code" is supported');
  }
}
