// Who may call the admin API: a bearer access token from this server for the admin resource
// (`urn:clinical-authz:admin`), bound to the TLS client certificate presented on this very request
// (RFC 8705), carrying the scope the call needs, and issued either to a user with the `admin` role who
// signed in with phishing-resistant MFA, or (client credentials) to an automation client that
// authenticates with mTLS. Everything else is refused with an RFC 6750 / RFC 9470 answer.
import type { Context } from 'koa';
import type Provider from 'oidc-provider';

import { findUserById } from '../accounts/users.ts';
import type { Queryable } from '../db/index.ts';
import { ACR_PHISHING_RESISTANT } from '../mfa/assurance.ts';
import { usableCertificate } from '../oidc/mtls.ts';
import type { FoundToken } from '../oidc/our-tokens.ts';

import { ADMIN_READ, ADMIN_RESOURCE, ADMIN_ROLE, ADMIN_WRITE } from './resource.ts';

export { ADMIN_READ, ADMIN_RESOURCE, ADMIN_ROLE, ADMIN_WRITE };
/** Automation must prove itself with a certificate the hospital's CA issued (a self-signed one proves nothing). */
const AUTOMATION_AUTH_METHOD = 'tls_client_auth';
/** A user's admin token must come from a passkey sign-in at most this old (refresh cannot stretch it). */
export const ADMIN_MAX_AUTH_AGE_SECONDS = 900;

export type AdminScope = typeof ADMIN_READ | typeof ADMIN_WRITE;

export interface AdminPrincipal {
  /** `user`: an administrator through an app; `automation`: a client acting for itself (client credentials). */
  kind: 'user' | 'automation';
  userId: string | undefined;
  clientId: string;
  certThumbprint: string;
  /** How the audit log names the token (jti or pseudonym). */
  tokenRef: string;
  /** A stable key for idempotency records. */
  id: string;
}

/** A refusal: HTTP status, RFC 6750 error and the WWW-Authenticate challenge to send. */
export class AdminAuthError extends Error {
  override name = 'AdminAuthError';
  constructor(
    readonly status: 401 | 403,
    readonly error: 'invalid_request' | 'invalid_token' | 'insufficient_scope' | 'insufficient_user_authentication',
    readonly description: string,
    readonly challengeParams: Record<string, string> = {},
  ) {
    super(description);
  }

  get challenge(): string {
    const params = { realm: 'admin', error: this.error, error_description: this.description, ...this.challengeParams };
    return `Bearer ${Object.entries(params).map(([k, v]) => `${k}="${v.replace(/["\\]/g, '')}"`).join(', ')}`;
  }
}

export interface AdminAuthDeps {
  db: Queryable;
  getProvider(): Provider;
  findToken(value: string): Promise<FoundToken | undefined>;
}

function bearer(ctx: Context): string {
  const values = ctx.req.headersDistinct.authorization ?? [];
  if (values.length !== 1) throw new AdminAuthError(401, values.length ? 'invalid_request' : 'invalid_token', 'one Bearer access token is required');
  const match = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/.exec(values[0]!);
  if (!match) throw new AdminAuthError(401, 'invalid_request', 'the Authorization header must be Bearer <token>');
  return match[1]!;
}

function audiences(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

export function adminAuthenticator(deps: AdminAuthDeps) {
  return async (ctx: Context, needed: AdminScope): Promise<AdminPrincipal> => {
    const found = await deps.findToken(bearer(ctx));
    if (!found) throw new AdminAuthError(401, 'invalid_token', 'the access token is not active');
    const { record } = found;
    if (!audiences(record.aud).includes(ADMIN_RESOURCE)) throw new AdminAuthError(401, 'invalid_token', 'not an admin API token');

    // Sender-constrained: the certificate of this connection must be the one the token is bound to.
    const bound = record['x5t#S256'];
    const cert = usableCertificate(ctx.req);
    if (typeof bound !== 'string') throw new AdminAuthError(401, 'invalid_token', 'admin tokens must be certificate-bound (RFC 8705)');
    if (!cert || cert.thumbprint !== bound) throw new AdminAuthError(401, 'invalid_token', 'the token is bound to another client certificate');

    const scopes = new Set(String(record.scope ?? '').split(' '));
    // Write implies read: an administrator who may change a record may see it.
    if (!scopes.has(needed) && !(needed === ADMIN_READ && scopes.has(ADMIN_WRITE))) {
      throw new AdminAuthError(403, 'insufficient_scope', `this call needs ${needed}`, { scope: needed });
    }
    // Delegated tokens (token exchange) never administer anything: only the administrator or workload itself.
    if (record.gty === 'token_exchange' || record.extra?.act !== undefined) {
      throw new AdminAuthError(401, 'invalid_token', 'delegated (exchanged) tokens are not accepted by the admin API');
    }
    const clientId = String(record.clientId);
    const provider = deps.getProvider();
    const common = { clientId, certThumbprint: cert.thumbprint, tokenRef: found.ref };

    if (typeof record.accountId === 'string') {
      // A user's token: its grant alive, the user an administrator, signed in with a passkey.
      const grant = typeof record.grantId === 'string' ? await provider.Grant.find(record.grantId) : undefined;
      if (!grant) throw new AdminAuthError(401, 'invalid_token', 'the access token is not active');
      const user = await findUserById(deps.db, record.accountId);
      if (!user || user.disabled) throw new AdminAuthError(401, 'invalid_token', 'the access token is not active');
      if (!user.roles.includes(ADMIN_ROLE)) throw new AdminAuthError(403, 'insufficient_scope', 'the admin role is required');
      const authTime = record.extra?.auth_time;
      const recent = typeof authTime === 'number' && Date.now() / 1000 - authTime <= ADMIN_MAX_AUTH_AGE_SECONDS;
      if (record.extra?.acr !== ACR_PHISHING_RESISTANT || !recent) {
        throw new AdminAuthError(401, 'insufficient_user_authentication', 'administration needs a recent phishing-resistant sign-in (passkey)', {
          acr_values: ACR_PHISHING_RESISTANT, max_age: String(ADMIN_MAX_AUTH_AGE_SECONDS),
        });
      }
      return { kind: 'user', userId: user.id, ...common, id: `user:${user.id}` };
    }
    // Client credentials: only a workload that proves itself with its certificate administers anything.
    const client = await provider.Client.find(clientId);
    if (!client || client.clientAuthMethod !== AUTOMATION_AUTH_METHOD) {
      throw new AdminAuthError(403, 'insufficient_scope', 'automation clients must authenticate with mTLS (tls_client_auth)');
    }
    return { kind: 'automation', userId: undefined, ...common, id: `client:${clientId}` };
  };
}
