// RFC 7591 dynamic client registration and RFC 7592 management, on oidc-provider's endpoints
// (`/reg`, `/reg/:clientId`). Nobody registers without an initial access token (IAT) made by an
// administrator (`npm run cli -- iat create`): single use, expiring, optionally restricted to a
// template. The registration access token it yields reads, updates (rotating it) and deletes that one
// registration. Client secrets are shown once and stored only as digests; every change is audited.
//
// How it fits oidc-provider: templates and the baseline are its registration `policies` (they run on
// the submitted metadata before its own validation and ours, src/clients/metadata-policy.ts, which
// runs for every client anyway). installRegistration wraps the client store, so that consuming the IAT,
// storing the client (secret digested) and the audit record commit in one transaction.
import { ADMIN_READ, ADMIN_WRITE } from '../admin/resource.ts';
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';

import type Koa from 'koa';
import Provider, { errors, type Adapter, type AdapterPayload, type ClientMetadata, type Configuration, type KoaContextWithOIDC } from 'oidc-provider';

import type { AuditDetailValue } from '../audit/event.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Db } from '../db/index.ts';
import { TOKEN_EXCHANGE_GRANT } from '../exchange/decision.ts';
import { readRawBody } from '../http/body.ts';
import { auditableClientId } from '../http/client-claim.ts';
import { providerEndpoint } from '../http/endpoint.ts';
import type { Logger } from '../log.ts';
import { covers, parseScope, parseScopeList } from '../smart/scopes.ts';
import { storeClient } from './adapter.ts';
import { digestClientSecret, generateClientSecret, isClientSecretDigest } from './client-secrets.ts';
import { ROUTES } from './endpoints.ts';

// ---- templates ----------------------------------------------------------------------------------

interface RegistrationTemplate {
  /** Allowed token_endpoint_auth_method values; the first is the default when none is given. */
  authMethods: readonly string[];
  grantTypes: readonly string[];
  /** grant_types when none are given. */
  defaultGrantTypes: readonly string[];
  /** Allowed response_types, and the default. */
  responseTypes: readonly string[];
  applicationTypes: readonly string[];
  /** OpenID/SMART launch scopes the client may list in `scope` (and gets when it lists none); '': none. */
  scope: string;
  /** Ceiling of `resource_scope` (SMART scopes): every listed scope must be within it. */
  resourceScopeCeiling: string;
  /** Access tokens must be bound to the client's certificate (RFC 8705). */
  certificateBound?: boolean;
}

/**
 * What a hospital lets a registrant choose by itself. Everything is read-only and deny-by-default: a
 * client that needs more (writes, other resource servers' scopes, break-glass, token exchange policies)
 * is registered or widened by an administrator (`client add`, the admin API).
 */
export const REGISTRATION_TEMPLATES = {
  /** A SMART app on a device (native or browser-based): no secret to keep, code + PKCE only. */
  'smart-public-app': {
    authMethods: ['none'],
    grantTypes: ['authorization_code'],
    defaultGrantTypes: ['authorization_code'],
    responseTypes: ['code'],
    applicationTypes: ['native', 'web'],
    scope: 'openid fhirUser launch launch/patient offline_access',
    resourceScopeCeiling: 'patient/*.rs',
  },
  /** A SMART web app with a server side: client secret or private_key_jwt, code + refresh tokens. */
  'smart-confidential-app': {
    authMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
    grantTypes: ['authorization_code', 'refresh_token'],
    defaultGrantTypes: ['authorization_code', 'refresh_token'],
    responseTypes: ['code'],
    applicationTypes: ['web'],
    scope: 'openid fhirUser profile launch launch/patient offline_access',
    resourceScopeCeiling: 'patient/*.rs user/*.rs',
  },
  /**
   * A backend workload proving itself with its certificate (chained to the configured client CA, or
   * self-signed and pinned by its JWKS). Token exchange is only usable once an administrator sets an
   * exchange policy for it (deny by default).
   */
  'mtls-workload': {
    authMethods: ['tls_client_auth', 'self_signed_tls_client_auth'],
    grantTypes: ['client_credentials', TOKEN_EXCHANGE_GRANT],
    defaultGrantTypes: ['client_credentials'],
    responseTypes: [],
    applicationTypes: ['web'],
    scope: '',
    resourceScopeCeiling: 'system/*.rs',
    certificateBound: true,
  },
} as const satisfies Record<string, RegistrationTemplate>;

export type RegistrationTemplateName = keyof typeof REGISTRATION_TEMPLATES;
export const REGISTRATION_TEMPLATE_NAMES = Object.keys(REGISTRATION_TEMPLATES) as RegistrationTemplateName[];

export function isRegistrationTemplate(name: string): name is RegistrationTemplateName {
  return Object.hasOwn(REGISTRATION_TEMPLATES, name);
}

/** Rules for every dynamic registration, with or without a template: an IAT's last policy (after the template's defaults). */
export const BASELINE_POLICY = 'registration-baseline';

const SECRET_METHODS = new Set(['client_secret_basic', 'client_secret_post']);

type Metadata = Record<string, unknown>;

const invalid = (description: string): never => {
  throw new errors.InvalidClientMetadata(description);
};
const strings = (value: unknown): string[] => (Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : []);
const shown = (value: string) => (value.length > 80 ? `${value.slice(0, 80)}…` : value);
const authMethod = (m: Metadata) => m.token_endpoint_auth_method ?? 'client_secret_basic'; // clientDefaults

/** A client that authenticates otherwise keeps no secret (none generated, an old one dropped on update). */
function dropUnusedSecret(m: Metadata): void {
  if (SECRET_METHODS.has(String(authMethod(m)))) return;
  delete m.client_secret;
  delete m.client_secret_expires_at;
}

const ADMIN_SCOPES: ReadonlySet<string> = new Set([ADMIN_READ, ADMIN_WRITE]);

function baselinePolicy(_ctx: KoaContextWithOIDC, metadata: ClientMetadata): void {
  const m = metadata as Metadata;
  // oidc-provider would fetch it while validating: no request of a registrant's choosing leaves the server.
  if (m.sector_identifier_uri !== undefined) {
    invalid('sector_identifier_uri is not accepted at dynamic registration (no pairwise subjects; the server fetches no registrant URL)');
  }
  if (m.break_glass_allowed !== undefined && m.break_glass_allowed !== false) {
    invalid('break_glass_allowed is granted by an administrator, never at dynamic registration');
  }
  // Administration is granted by administrators: no registrant gives itself the admin API's scopes.
  if (typeof m.resource_scope === 'string' && m.resource_scope.split(' ').some((s) => ADMIN_SCOPES.has(s))) {
    invalid('resource_scope: the admin API\'s scopes are granted by an administrator, never at dynamic registration');
  }
  // As for clients registered by an administrator (withCertificateBindingDefault): a confidential client
  // gets certificate-bound tokens unless it says otherwise. Set here, or oidc-provider's default (false)
  // would be stored with the registration.
  if (authMethod(m) !== 'none') m.tls_client_certificate_bound_access_tokens ??= true;
  dropUnusedSecret(m);
}

function templatePolicy(name: RegistrationTemplateName) {
  const t: RegistrationTemplate = REGISTRATION_TEMPLATES[name];
  const by = `the ${name} template`;
  const ceiling = parseScopeList(t.resourceScopeCeiling).scopes;
  const allowedScopes = new Set(t.scope.split(' ').filter(Boolean));
  const oneOf = (values: readonly string[]) => (values.length ? values.join(', ') : 'none');

  /** Each listed value must be allowed; absent, the template's default applies. */
  const listed = (m: Metadata, field: string, allowed: readonly string[], fallback: readonly string[]) => {
    if (m[field] === undefined) m[field] = [...fallback];
    // Not a list of strings: oidc-provider's own validation refuses it with its message.
    for (const value of strings(m[field])) {
      if (!allowed.includes(value)) invalid(`${field}: ${shown(value)} is not allowed by ${by} (allowed: ${oneOf(allowed)})`);
    }
  };

  return (_ctx: KoaContextWithOIDC, metadata: ClientMetadata): void => {
    const m = metadata as Metadata;
    m.token_endpoint_auth_method ??= t.authMethods[0];
    if (!t.authMethods.includes(m.token_endpoint_auth_method as string)) {
      invalid(`token_endpoint_auth_method must be ${t.authMethods.length > 1 ? 'one of ' : ''}${t.authMethods.join(', ')} for ${by}`);
    }
    listed(m, 'grant_types', t.grantTypes, t.defaultGrantTypes);
    listed(m, 'response_types', t.responseTypes, t.responseTypes);
    if (t.responseTypes.length === 0 && strings(m.redirect_uris).length > 0) {
      invalid(`redirect_uris must be empty for ${by} (no browser flow)`);
    }
    m.application_type ??= 'web';
    if (!t.applicationTypes.includes(m.application_type as string)) {
      invalid(`application_type must be ${t.applicationTypes.join(' or ')} for ${by}`);
    }
    if (m.scope === undefined) {
      if (t.scope) m.scope = t.scope;
    } else if (typeof m.scope === 'string') {
      for (const scope of m.scope.split(' ').filter(Boolean)) {
        if (!allowedScopes.has(scope)) invalid(`scope: ${shown(scope)} is not allowed by ${by} (allowed: ${oneOf([...allowedScopes])})`);
      }
    }
    if (typeof m.resource_scope === 'string') {
      for (const token of m.resource_scope.split(' ').filter(Boolean)) {
        const parsed = parseScope(token);
        if (!parsed.ok || !covers(ceiling, parsed.scope)) {
          invalid(`resource_scope: ${shown(token)} is outside ${by}'s ceiling (${t.resourceScopeCeiling})`);
        }
      }
    }
    if (t.certificateBound) {
      m.tls_client_certificate_bound_access_tokens ??= true;
      if (m.tls_client_certificate_bound_access_tokens !== true) {
        invalid(`tls_client_certificate_bound_access_tokens must be true for ${by}`);
      }
    }
  };
}

type Policy = (ctx: KoaContextWithOIDC, metadata: ClientMetadata) => void;
const POLICIES: Record<string, Policy> = {
  [BASELINE_POLICY]: baselinePolicy,
  ...Object.fromEntries(REGISTRATION_TEMPLATE_NAMES.map((name) => [name, templatePolicy(name)])),
};

type Features = NonNullable<Configuration['features']>;

/** `features.registration`: initial access tokens only (no open registration). */
export const REGISTRATION_FEATURE: Features['registration'] = {
  enabled: true,
  initialAccessToken: true,
  policies: POLICIES,
  // Same shapes as `client add` generates (src/clients/register.ts).
  idFactory: () => `client-${randomBytes(16).toString('base64url')}`,
  secretFactory: () => generateClientSecret(),
  issueRegistrationAccessToken: true,
};

/** `features.registrationManagement`: RFC 7592 read/update/delete; each update rotates the token. */
export const REGISTRATION_MANAGEMENT_FEATURE: Features['registrationManagement'] = {
  enabled: true,
  rotateRegistrationAccessToken: true,
};

/** The template an IAT or registration access token carries (the baseline is not one). */
function templateOf(token: { policies?: string[] | undefined } | undefined): string | null {
  return token?.policies?.find((p) => p !== BASELINE_POLICY) ?? null;
}

// ---- initial access tokens --------------------------------------------------------------------------

export const DEFAULT_IAT_TTL_SECONDS = 3600;
export const MAX_IAT_TTL_SECONDS = 86_400;

/** Input an IAT cannot be made from (unknown template, lifetime out of range). */
export class InitialAccessTokenError extends Error {
  override name = 'InitialAccessTokenError';
}

export interface CreatedInitialAccessToken {
  initialAccessToken: string;
  expiresAt: string;
  template: RegistrationTemplateName | null;
}

export interface InitialAccessTokenOptions {
  template?: string | undefined;
  ttlSeconds?: number | undefined;
  /** Rule and details of the audit event (the CLI names itself). */
  rule?: string | undefined;
  details?: Record<string, AuditDetailValue> | undefined;
}

/**
 * Creates an IAT (stored through the provider's adapter, expiring) and records it. The value is
 * returned to be shown once; the audit log holds only its pseudonym. Recorded first: an IAT whose
 * record cannot be written never exists.
 */
export async function createInitialAccessToken(
  provider: Provider, audit: AuditLog, options: InitialAccessTokenOptions = {},
): Promise<CreatedInitialAccessToken> {
  const { template } = options;
  if (template !== undefined && !isRegistrationTemplate(template)) {
    throw new InitialAccessTokenError(`unknown template '${shown(template)}' (known: ${REGISTRATION_TEMPLATE_NAMES.join(', ')})`);
  }
  const ttl = options.ttlSeconds ?? DEFAULT_IAT_TTL_SECONDS;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_IAT_TTL_SECONDS) {
    throw new InitialAccessTokenError(`the lifetime must be 1 to ${MAX_IAT_TTL_SECONDS} seconds`);
  }
  // The value is the id (oidc-provider's opaque format): 256 random bits.
  const jti = randomBytes(32).toString('base64url');
  const exp = Math.floor(Date.now() / 1000) + ttl;
  const expiresAt = new Date(exp * 1000).toISOString();
  await audit.record({
    type: 'registration.iat_created',
    outcome: 'success',
    rule: options.rule ?? 'registration.initial_access_token',
    details: { ...options.details, token_ref: audit.pseudonym('token', jti), template: template ?? null, ttl_seconds: ttl, expires_at: expiresAt },
  });
  const token = new provider.InitialAccessToken({ jti, exp, policies: [...(template ? [template] : []), BASELINE_POLICY] });
  const value = await token.save();
  return { initialAccessToken: value, expiresAt, template: template ?? null };
}

// ---- the endpoints ----------------------------------------------------------------------------------

export interface RegistrationDeps {
  db: Db;
  clientSecretKey: string;
  /** Without it (CLI provider contexts, which serve no requests) nothing is recorded. */
  audit?: AuditLog | undefined;
  logger?: Logger | undefined;
}

type Operation = 'create' | 'read' | 'update' | 'delete';
const OPERATIONS: Record<string, Operation> = { registration: 'create', client: 'read', client_update: 'update', client_delete: 'delete' };
const ERROR_EVENTS = ['registration_create.error', 'registration_read.error', 'registration_update.error', 'registration_delete.error'] as const;
const REFUSAL = Symbol('registration refusal');
// oidc-provider's own JSON body limit.
const BODY_LIMIT = 56 * 1024;

interface Refusal { error: string; field: string | undefined }
type RegistrationContext = KoaContextWithOIDC & { [REFUSAL]?: Refusal };

/** The metadata field a client-metadata refusal names first (our messages and oidc-provider's start with it). */
function refusedField(error: string, description: unknown): string | undefined {
  if (error !== 'invalid_client_metadata' && error !== 'invalid_redirect_uri') return undefined;
  return typeof description === 'string' ? /^([a-z][a-z0-9_]{1,63})\b/.exec(description)?.[1] : undefined;
}

/** Facts about a client for its audit events: never its secret. */
function clientFacts(payload: AdapterPayload): Record<string, AuditDetailValue | undefined> {
  const grants = strings(payload.grant_types);
  return {
    token_endpoint_auth_method: typeof payload.token_endpoint_auth_method === 'string' ? payload.token_endpoint_auth_method : undefined,
    grant_types: grants.length ? grants : undefined,
    application_type: typeof payload.application_type === 'string' ? payload.application_type : undefined,
    resource_scope: typeof payload.resource_scope === 'string' ? payload.resource_scope : undefined,
    /** A clear secret reaching the store is a new one (shown once in this answer). */
    credential_issued: typeof payload.client_secret === 'string' && !isClientSecretDigest(payload.client_secret),
  };
}

/**
 * RFC 7592 §2.2: a client MAY send its current secret with an update, and it must match. oidc-provider
 * compares it with the stored value, a digest: hand it the digest of what was presented (the body is
 * parsed here, as oidc-provider accepts an upstream-parsed body).
 */
async function digestPresentedSecret(ctx: Koa.Context, clientSecretKey: string): Promise<void> {
  if (!ctx.is('application/json')) return;
  const raw = (await readRawBody(ctx, BODY_LIMIT)).toString('utf8');
  let body: unknown;
  try {
    body = JSON.parse(raw);
  } catch {
    // oidc-provider parses the text itself and refuses it with its own error.
    (ctx.request as unknown as { body: unknown }).body = raw;
    return;
  }
  if (body && typeof body === 'object' && typeof (body as Metadata).client_secret === 'string') {
    (body as Metadata).client_secret = digestClientSecret(clientSecretKey, (body as Metadata).client_secret as string);
  }
  (ctx.request as unknown as { body: unknown }).body = body;
}

/**
 * Wires registration into a provider built with REGISTRATION_FEATURE: single-use IATs, digested secrets
 * (never answered back), audit events for every change and refusal, tokens of a deleted client revoked.
 */
export function installRegistration(provider: Provider, deps: RegistrationDeps): void {
  const { db, audit, clientSecretKey } = deps;
  const requests = new AsyncLocalStorage<RegistrationContext>();
  const registrationPath = (path: string) => {
    const endpoint = providerEndpoint(path);
    return endpoint === ROUTES.registration || endpoint.startsWith(`${ROUTES.registration}/`);
  };

  // Only IATs made by createInitialAccessToken register (they carry the baseline); any other is unknown.
  const InitialAccessToken = provider.InitialAccessToken as unknown as {
    find(value: unknown, options?: unknown): Promise<{ policies?: string[] | undefined } | undefined>;
  };
  const findInitialAccessToken = InitialAccessToken.find.bind(InitialAccessToken);
  InitialAccessToken.find = async (value, options) => {
    const token = await findInitialAccessToken(value, options);
    return token?.policies?.includes(BASELINE_POLICY) ? token : undefined;
  };

  // oidc-provider renders its refusals itself (JSON or an HTML page): note the error for the audit event.
  type Listener = (ctx: RegistrationContext, err: { error?: unknown; error_description?: unknown }) => void;
  const on = provider.on.bind(provider) as unknown as (event: string, listener: Listener) => void;
  for (const event of ERROR_EVENTS) {
    on(event, (ctx, err) => {
      const error = typeof err?.error === 'string' ? err.error : 'invalid_request';
      ctx[REFUSAL] = { error, field: refusedField(error, err?.error_description) };
    });
  }

  provider.use(async (ctx, next) => {
    if (!registrationPath(ctx.path)) return next();
    if (ctx.method === 'PUT') await digestPresentedSecret(ctx, clientSecretKey);
    const rctx = ctx as unknown as RegistrationContext;
    await requests.run(rctx, next);

    const operation = OPERATIONS[(rctx as { oidc?: { route?: string } }).oidc?.route ?? ''];
    if (!operation) return;
    // A stored secret is a digest: never part of an answer (a new secret, shown once, is not a digest).
    const body = ctx.body as Metadata | undefined;
    if (body && typeof body === 'object' && !Buffer.isBuffer(body) && isClientSecretDigest(body.client_secret)) {
      delete body.client_secret;
    }
    const refusal = rctx[REFUSAL];
    if (refusal && audit) {
      const { entities } = rctx.oidc;
      try {
        await audit.record({
          type: 'client.registration_refused',
          outcome: 'denied',
          rule: `oauth.${refusal.error}`,
          actor: { clientId: entities.RegistrationAccessToken?.clientId },
          target: { clientId: auditableClientId((ctx as unknown as { params?: Record<string, string> }).params?.clientId) },
          details: {
            operation,
            error: refusal.error,
            field: refusal.field,
            template: templateOf(entities.InitialAccessToken ?? entities.RegistrationAccessToken),
            iat_ref: entities.InitialAccessToken?.jti ? audit.pseudonym('token', entities.InitialAccessToken.jti) : undefined,
          },
        });
      } catch (err) {
        // The refusal stands; a failed audit write is reported, not hidden.
        deps.logger?.error({ err: (err as Error).message, requestId: ctx.state.requestId }, 'registration refusal audit event could not be written');
      }
    }
  });

  // oidc-provider stores, updates and deletes registered clients through the Client adapter: in a
  // registration request, those writes become one transaction each with their IAT and audit event.
  const store = (provider.Client as unknown as { adapter: Adapter }).adapter;
  const upsert = store.upsert.bind(store);
  const destroy = store.destroy.bind(store);

  store.upsert = async (id, payload, expiresIn) => {
    const ctx = requests.getStore();
    const route = ctx?.oidc.route;
    if (ctx && route === 'registration') {
      const iat = ctx.oidc.entities.InitialAccessToken;
      const template = templateOf(iat);
      await db.transaction(async (tx) => {
        // Single use, atomically: of two registrations racing with one IAT, the second finds it gone.
        const claimed = iat?.jti && await tx.query(
          `DELETE FROM oidc_payloads WHERE model = 'InitialAccessToken' AND id = $1
             AND (expires_at IS NULL OR expires_at > now()) RETURNING id`,
          [iat.jti],
        );
        if (!claimed || claimed.rowCount === 0) throw new errors.InvalidToken('initial access token not found');
        if (!await storeClient(tx, id, payload, clientSecretKey, { create: true })) throw new Error('generated client_id already exists');
        await audit?.record({
          type: 'client.registered',
          outcome: 'success',
          rule: 'registration.initial_access_token',
          actor: { clientId: id },
          target: { clientId: id },
          details: { ...clientFacts(payload), template, iat_ref: audit.pseudonym('token', iat!.jti!) },
        }, tx);
      });
      return;
    }
    if (ctx && route === 'client_update') {
      const rat = ctx.oidc.entities.RegistrationAccessToken;
      await db.transaction(async (tx) => {
        await storeClient(tx, id, payload, clientSecretKey);
        await audit?.record({
          type: 'client.registration_updated',
          outcome: 'success',
          rule: 'registration.access_token',
          actor: { clientId: id },
          target: { clientId: id },
          details: { ...clientFacts(payload), template: templateOf(rat) },
        }, tx);
      });
      return;
    }
    return upsert(id, payload, expiresIn);
  };

  store.destroy = async (id) => {
    const ctx = requests.getStore();
    if (ctx?.oidc.route !== 'client_delete') return destroy(id);
    const rat = ctx.oidc.entities.RegistrationAccessToken;
    await db.transaction(async (tx) => {
      // RFC 7592 §2.3: its grants and tokens (registration access token included) go with it.
      const revoked = await tx.query(`DELETE FROM oidc_payloads WHERE payload->>'clientId' = $1`, [id]);
      await tx.query('DELETE FROM clients WHERE client_id = $1', [id]);
      await audit?.record({
        type: 'client.registration_deleted',
        outcome: 'success',
        severity: 'warning',
        rule: 'registration.access_token',
        actor: { clientId: id },
        target: { clientId: id },
        details: { template: templateOf(rat), revoked_artefacts: revoked.rowCount },
      }, tx);
    });
  };
}
