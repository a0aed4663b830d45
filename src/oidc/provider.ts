// oidc-provider configuration: what the server issues, to whom, for how long.
import type { JWK } from 'jose';
import Provider, { errors, interactionPolicy, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';

import type { AuditLog } from '../audit/log.ts';
import type { StorageAudit } from '../audit/storage-events.ts';
import { registerTokenExchange } from '../exchange/grant.ts';
import type { Config } from '../config.ts';
import type { Db } from '../db/index.ts';
import type { Logger } from '../log.ts';
import { errorPage, loggedOutPage, logoutPage } from '../../views/messages.ts';
import { accountFinder, CLAIMS } from './accounts.ts';
import { createAdapter } from './adapter.ts';
import { installClientSecretDigests } from './client-secrets.ts';
import { JwtAccessTokenRegistry } from './jwt-access-tokens.ts';
import { findUserById } from '../accounts/users.ts';
import { audParameter, GrantContexts, launchContextCheck, launchParameter } from './launch-context.ts';
import { RESOURCE_SCOPE_METADATA, validateResourceScopeMetadata } from './resource-scope-ceiling.ts';
import { introspectsFor } from './resource-servers.ts';
import { smartScopeHooks } from './smart-scopes.ts';
import type { TrustAnchors } from '../mtls/index.ts';
import { mtlsEndpointAliases, ROUTES } from './endpoints.ts';
import { mtlsFeature } from './mtls.ts';
import { stepUpCheck } from './step-up-check.ts';
import { accountClientMetadata, refuseResponseTypeNone } from './account-client.ts';
import { ACR_VALUES } from '../mfa/assurance.ts';
import { installInsufficientAuthenticationBodies } from './insufficient-authentication.ts';
import { enforceClientPolicy } from '../clients/metadata-policy.ts';
import { BREAK_GLASS_METADATA, BreakGlassGrants, validateBreakGlassMetadata } from './break-glass-grants.ts';
import { installRegistration, REGISTRATION_FEATURE, REGISTRATION_MANAGEMENT_FEATURE } from './registration.ts';

export interface ProviderDeps {
  config: Config;
  db: Db;
  jwks: { keys: JWK[] };
  cookieKeys: string[];
  clientSecretKey: string;
  logger: Logger;
  /** Records token/code/session changes in the audit log inside their own transactions. */
  storageAudit?: StorageAudit | undefined;
  /** CA bundle for tls_client_auth client certificates (none: no certificate is ever authorized). */
  clientTrust?: TrustAnchors | undefined;
  /** The audit log (token exchange records every decision). */
  audit?: AuditLog | undefined;
  /** One per server, shared by every provider build, so a key reload mid-request loses no handle. */
  jwtAccessTokens?: JwtAccessTokenRegistry | undefined;
}

export interface BuiltProvider {
  provider: Provider;
  jwtAccessTokens: JwtAccessTokenRegistry;
  breakGlass: BreakGlassGrants;
}

export const SIGNING_ALG = 'ES256';
export const CLIENT_AUTH_METHODS = [
  'client_secret_basic', 'client_secret_post', 'private_key_jwt', 'tls_client_auth', 'self_signed_tls_client_auth', 'none',
] as const;

/** OpenID and SMART launch scopes: they pass through to grants as they are (resource scopes do not). */
export const NAMED_SCOPES = [
  'openid', 'offline_access', 'online_access', 'profile', 'fhirUser', 'launch', 'launch/patient', 'launch/encounter',
];

type TokenForClaims = { extra?: Record<string, unknown>; grantId?: string; accountId?: string };

// Everything a token carries beyond the standard payload travels in token.extra; the default
// extraTokenClaims would replace it, so keep it and add the authentication context of the source,
// the clinician's FHIR identity and the patient in context (SMART).
function tokenClaims(db: Db, contexts: GrantContexts, breakGlass: BreakGlassGrants) {
  return async (ctx: KoaContextWithOIDC, token: TokenForClaims) => {
    const source = ctx?.oidc?.entities?.AuthorizationCode ?? ctx?.oidc?.entities?.RefreshToken;
    const claims: Record<string, unknown> = {};
    if (source?.acr) claims.acr = source.acr;
    if (source?.amr) claims.amr = source.amr;
    if (source?.authTime) claims.auth_time = source.authTime;
    if (token.accountId && source?.scopes.has('fhirUser')) {
      const user = await findUserById(db, token.accountId);
      if (user?.fhirUser) claims.fhirUser = user.fhirUser;
    }
    Object.assign(claims, await contexts.claims(ctx, token, source?.scope));
    Object.assign(claims, await breakGlass.claims(ctx, token));
    return { ...claims, ...(token.extra ?? {}) };
  };
}

function interactionPolicyFor(db: Db) {
  const policy = interactionPolicy.base();
  policy.get('login')!.checks.add(stepUpCheck(db));
  policy.get('consent')!.checks.add(launchContextCheck());
  return policy;
}

export function buildProvider(deps: ProviderDeps): BuiltProvider {
  const { config, db, logger } = deps;
  const jwtAccessTokens = deps.jwtAccessTokens ?? new JwtAccessTokenRegistry(db, deps.storageAudit);
  const breakGlass = new BreakGlassGrants(db, deps.audit);
  const smartScopes = smartScopeHooks(db, { isEmergency: (ctx) => breakGlass.isEmergency(ctx) });
  const grantContexts = new GrantContexts(db, (ctx, grantId) => breakGlass.grantsPatientAccess(ctx, grantId));

  const configuration: Configuration = {
    adapter: createAdapter(db, deps.storageAudit, { clientSecretKey: deps.clientSecretKey }),
    jwks: deps.jwks as Configuration['jwks'],
    findAccount: accountFinder(db),
    claims: CLAIMS,
    acrValues: [...ACR_VALUES],
    scopes: NAMED_SCOPES,
    // SMART: `launch` carries an EHR launch; `aud` names the FHIR server (it becomes the resource).
    extraParams: { launch: launchParameter(db), aud: audParameter },
    // `none` only for the first-party account pages (it establishes a session, nothing else).
    responseTypes: ['code', 'none'],
    clients: [accountClientMetadata(config.issuer)],
    pkce: { required: () => true },
    clientAuthMethods: [...CLIENT_AUTH_METHODS],
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      id_token_signed_response_alg: SIGNING_ALG,
      token_endpoint_auth_method: 'client_secret_basic',
    },
    enabledJWA: {
      // Client secrets are stored as digests, so no HMAC-keyed client algorithms.
      clientAuthSigningAlgValues: ['ES256', 'PS256', 'RS256', 'EdDSA'],
      idTokenSigningAlgValues: ['ES256', 'RS256'],
      userinfoSigningAlgValues: ['ES256', 'RS256'],
      introspectionSigningAlgValues: ['ES256', 'RS256'],
      authorizationSigningAlgValues: ['ES256', 'RS256'],
      requestObjectSigningAlgValues: ['ES256', 'PS256', 'RS256', 'EdDSA'],
    },
    cookies: {
      keys: deps.cookieKeys,
      long: { signed: true, httpOnly: true, sameSite: 'lax', secure: true },
      short: { signed: true, httpOnly: true, sameSite: 'lax', secure: true },
    },
    ttl: {
      // A resource server may ask for shorter tokens, never longer than the configured cap.
      AccessToken: (ctx, token) => {
        const capped = token.resourceServer?.accessTokenTTL ?? Infinity;
        // An emergency token lives exactly as long as its access (BREAK_GLASS_TTL, at most an hour), no longer.
        const emergency = breakGlass.accessTokenTtl(ctx);
        return Math.max(1, Math.min(capped, emergency ?? config.ttl.accessToken));
      },
      AuthorizationCode: config.ttl.authorizationCode,
      ClientCredentials: (_ctx, token) => Math.min(token.resourceServer?.accessTokenTTL ?? Infinity, config.ttl.clientCredentials),
      IdToken: config.ttl.idToken,
      // Absolute: a rotated refresh token inherits what was left of its predecessor's life.
      RefreshToken: (ctx) => {
        const rotated = ctx?.oidc?.entities?.RotatedRefreshToken as { remainingTTL?: number } | undefined;
        return Math.max(1, Math.min(config.ttl.refreshToken, rotated?.remainingTTL ?? Infinity));
      },
      Interaction: config.ttl.interaction,
      Session: config.ttl.session,
      Grant: config.ttl.grant,
    },
    rotateRefreshToken: true,
    issueRefreshToken: breakGlass.issueRefreshToken() as Configuration['issueRefreshToken'],
    loadExistingGrant: breakGlass.loadExistingGrant() as Configuration['loadExistingGrant'],
    allowOmittingSingleRegisteredRedirectUri: false,
    extraClientMetadata: {
      properties: [RESOURCE_SCOPE_METADATA, BREAK_GLASS_METADATA],
      validator: (ctx, key, value, metadata) => {
        validateResourceScopeMetadata(ctx, key, value);
        validateBreakGlassMetadata(key, value);
        // Once per client (this key is always validated): rules about the metadata as a whole.
        if (key === RESOURCE_SCOPE_METADATA) {
          refuseResponseTypeNone(metadata as Record<string, unknown>);
          enforceClientPolicy(metadata as Record<string, unknown>);
        }
      },
    },
    extraTokenClaims: tokenClaims(db, grantContexts, breakGlass) as Configuration['extraTokenClaims'],
    formats: {
      customizers: {
        jwt: async (_ctx, token, jwt) => {
          await jwtAccessTokens.record(token as never, jwt.payload);
        },
      },
    },
    routes: ROUTES,
    // RFC 8705 §5: clients send their certificate to the mTLS listener; browsers never meet it.
    discovery: { mtls_endpoint_aliases: mtlsEndpointAliases(config.mtlsBaseUrl) },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}`, policy: interactionPolicyFor(db) },
    features: {
      devInteractions: { enabled: false },
      mTLS: mtlsFeature(deps.clientTrust ?? { certificates: [] }),
      clientCredentials: { enabled: true },
      // RFC 7591/7592 with single-use initial access tokens (src/oidc/registration.ts).
      registration: REGISTRATION_FEATURE,
      registrationManagement: REGISTRATION_MANAGEMENT_FEATURE,
      introspection: {
        enabled: true,
        // Zero trust: a client introspects the tokens issued to itself, and a resource server's own
        // introspection client those whose audience is that resource server. Nothing else.
        allowedPolicy: async (_ctx, client, token) => {
          if (token.clientId === client.clientId) return true;
          const aud = (token as { aud?: string | string[] }).aud;
          return introspectsFor(db, client.clientId, Array.isArray(aud) ? aud : aud ? [aud] : []);
        },
      },
      revocation: {
        enabled: true,
        // A client revokes only its own tokens (RFC 7009 §2.1). A public client learns nothing about
        // another client's token (no refusal that would tell a live token from garbage).
        allowedPolicy: async (_ctx, client, token) => {
          if (token.clientId === client.clientId) return true;
          if (client.clientAuthMethod === 'none') return false;
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        },
      },
      userinfo: { enabled: true },
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: async (ctx, form) => {
          ctx.type = 'html';
          ctx.body = logoutPage(form);
        },
        postLogoutSuccessSource: async (ctx) => {
          ctx.type = 'html';
          ctx.body = loggedOutPage(ctx.oidc.client?.clientName);
        },
      },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, _client, oneOf) => {
          if (oneOf) return oneOf;
          // SMART apps name the FHIR server with `aud` rather than `resource`.
          const aud = ctx.oidc.params?.aud;
          if (typeof aud === 'string' && aud) return aud;
          await smartScopes.checkWithoutResource(ctx);
          return undefined;
        },
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, indicator, client) => {
          // Granted = requested ∩ resource server ∩ client ceiling ∩ user role (src/smart/scope-policy.ts).
          const { server: rs, scope } = await smartScopes.resourceServerInfo(ctx, indicator, client);
          // An emergency grant's token request: refused once the access ended; its lifetime set here.
          await breakGlass.forTokenRequest(ctx);
          return {
            scope,
            audience: rs.identifier,
            accessTokenFormat: rs.accessTokenFormat,
            ...(rs.accessTokenTtl ? { accessTokenTTL: rs.accessTokenTtl } : {}),
            ...(rs.accessTokenFormat === 'jwt' ? { jwt: { sign: { alg: SIGNING_ALG } } } : {}),
          };
        },
      },
    },
    renderError: async (ctx, out) => {
      ctx.type = 'html';
      ctx.body = errorPage(String(out.error), out.error_description ? String(out.error_description) : undefined);
    },
  };

  const provider = new Provider(config.issuer, configuration);
  provider.proxy = config.trustProxy;
  installClientSecretDigests(provider, deps.clientSecretKey);
  provider.use(grantContexts.tokenResponses());
  registerTokenExchange(provider, {
    db, issuer: config.issuer, audit: deps.audit, jwtAccessTokens, jwks: deps.jwks, signingAlg: SIGNING_ALG,
  });
  jwtAccessTokens.install(provider);
  installInsufficientAuthenticationBodies(provider);
  installRegistration(provider, { db, clientSecretKey: deps.clientSecretKey, audit: deps.audit, logger });

  provider.on('server_error', (ctx: KoaContextWithOIDC, err: Error) => {
    logger.error({ err: { name: err.name, message: err.message }, path: ctx.path, requestId: ctx.state?.requestId }, 'server_error');
  });

  return { provider, jwtAccessTokens, breakGlass };
}
