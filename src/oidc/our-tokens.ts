// One of this server's access tokens, presented back to it (token exchange, admin API): a JWT is
// verified and then looked up by its record, an opaque token is looked up. Expired, revoked, forged or
// foreign tokens are not found.
import type { JWK } from 'jose';
import type Provider from 'oidc-provider';
import type { AdapterPayload } from 'oidc-provider';

import type { AuditLog } from '../audit/log.ts';
import type { JwtAccessTokenRegistry } from './jwt-access-tokens.ts';

export type TokenRecord = AdapterPayload & { extra?: Record<string, unknown> };

export interface FoundToken {
  record: TokenRecord;
  /** How the audit log names it: a JWT's jti, an opaque token's keyed pseudonym (never the value). */
  ref: string;
  /** Whether its grant is still stored, when the lookup learnt it on the way (JWT records). */
  grantAlive?: boolean;
}

export interface OurTokenDeps {
  provider: Provider;
  issuer: string;
  jwtAccessTokens: JwtAccessTokenRegistry;
  /** The provider's signing keys (private parts are dropped before use). */
  jwks: { keys: JWK[] };
  audit?: AuditLog | undefined;
}

export function publicKeys(jwks: { keys: JWK[] }): { keys: JWK[] } {
  return { keys: jwks.keys.map(({ d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pub }) => pub) };
}

export function ourAccessTokens(deps: OurTokenDeps): (value: string) => Promise<FoundToken | undefined> {
  const jwks = publicKeys(deps.jwks);
  return async (value) => {
    if (value.split('.').length === 3) {
      const found = await deps.jwtAccessTokens.verifiedRecordWithGrant(value, jwks as never, deps.issuer);
      return found ? { record: found.record as TokenRecord, ref: String(found.record.jti), grantAlive: found.grantAlive } : undefined;
    }
    // Opaque: a user's access token, or a client credentials token (stored as a model of its own).
    const token = await deps.provider.AccessToken.find(value) ?? await deps.provider.ClientCredentials.find(value);
    if (!token || token.isExpired) return undefined;
    return { record: token as unknown as TokenRecord, ref: deps.audit?.pseudonym('token', value) ?? 'opaque' };
  };
}
