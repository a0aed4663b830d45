// Access-token checks for resource servers: who is calling (authenticate: bearer token, signature or
// introspection, issuer, audience, type, expiry, certificate binding) and may it do this (authorize:
// SMART scopes and patient context). See index.ts for the public API and an example.
import {
  createRemoteJWKSet,
  customFetch,
  decodeProtectedHeader,
  errors as joseErrors,
  jwtVerify,
  type JWTPayload,
  type JWTVerifyGetKey,
} from 'jose';

import {
  allows,
  parseScopeList,
  parseScope,
  type FhirAccess,
  type ParsedScope,
  type Permission,
  type ResourceScope,
  type SmartContext,
} from '../smart/scopes.ts';
import { checkCertificateBinding } from './binding.ts';
import {
  insufficientScope,
  invalidRequest,
  invalidToken,
  missingToken,
  ResourceAccessError,
  temporarilyUnavailable,
} from './errors.ts';
import { createIntrospector, type FetchLike, type IntrospectionOptions, type Introspector } from './introspection.ts';

export interface ResourceVerifierOptions {
  /** Expected `iss`, exactly as the authorization server publishes it. */
  issuer: string;
  /** This resource server's identifier (RFC 8707 resource indicator): the expected `aud`. */
  audience: string;
  /** Default: `jwks_uri` of `${issuer}/.well-known/openid-configuration` (fetched once, then cached). */
  jwksUri?: string;
  /** For HTTPS to an issuer with a private CA: undici's fetch with a dispatcher. Used for discovery and JWKS. */
  fetch?: FetchLike;
  /** Accepted JWS algorithms. Default ['ES256']. Never include 'none' or HMAC algorithms. */
  algorithms?: string[];
  /** Default 5 seconds. */
  clockToleranceSeconds?: number;
  /** Default true (zero trust): a token without `cnf` is refused. */
  requireCertificateBinding?: boolean;
  /** An unknown `kid` refetches the JWKS at most this often. Default 30 seconds. */
  jwksCooldownSeconds?: number;
  /** Keys are refetched at least this often. Default 600 seconds. */
  jwksMaxAgeSeconds?: number;
  /** Timeout for discovery and JWKS requests. Default 5000 ms. */
  httpTimeoutMs?: number;
  /** For opaque (non-JWT) access tokens. Without it, opaque tokens are refused. */
  introspection?: IntrospectionOptions;
}

export interface AuthenticateRequest {
  /** The Authorization header: a string, or every value when the header was repeated (`req.headersDistinct`). */
  authorization: string | readonly string[] | undefined;
  /** DER of the TLS client certificate of this connection (see `peerCertificateDer`). */
  clientCertificateDer: Buffer | undefined;
}

export interface VerifiedToken {
  format: 'jwt' | 'opaque';
  /** `sub`: the user, or the client itself for client credentials. */
  subject: string | undefined;
  clientId: string;
  /** The scope claim as issued. */
  scope: string;
  /** Parsed SMART scopes (resource and named); tokens that are not SMART scopes are left out. */
  scopes: ParsedScope[];
  /** The launch patient, as a bare id (a `Patient/` prefix is removed). */
  patient?: string;
  fhirUser?: string;
  acr?: string;
  amr?: string[];
  /** `auth_time`, seconds since the epoch. */
  authTime?: number;
  audience: string[];
  /** `exp`, seconds since the epoch. */
  expiresAt: number;
  issuedAt?: number;
  tokenId?: string;
  /**
   * HL7 PurposeOfUse code of an emergency (break-glass) token, e.g. `ETREAT` or `BTG`: label and log
   * every access made with it. Absent for ordinary tokens.
   */
  purposeOfUse?: string;
  /** RFC 8693 `act`: the workload acting for the subject. */
  actor?: Record<string, unknown>;
  /** The `x5t#S256` the token is bound to (equal to the presented certificate's). */
  certThumbprint?: string;
  /** Every claim (JWT payload or introspection response). Never contains the token itself. */
  claims: Record<string, unknown>;
}

export interface ResourceAccess extends FhirAccess {
  /** The patient whose record this is (`x` or `Patient/x`); patient/ scopes allow only the token's patient. */
  patientId?: string;
}

export interface AccessDecision {
  /** The granted scope that allowed the operation (canonical text). */
  scope: string;
  context: SmartContext;
}

export interface SearchAccess {
  resourceType: string;
  /** The search parameters (as URLSearchParams gives them). */
  params?: Record<string, string | string[]>;
  /** The patient the search is limited to (its `patient` parameter), if any. */
  patientId?: string;
  context?: SmartContext;
}

export interface SearchDecision {
  /** The scopes that may let results through (canonical texts). */
  scopes: string[];
  /**
   * Set when only patient/ scopes allow the search: every result must belong to this patient, so the
   * server can limit its query to it (results are filtered by `permits` anyway).
   */
  patient?: string;
  /** Whether one search result may be returned. Always apply it: the search check alone is not enough. */
  permits(record: { patientId?: string; params?: Record<string, string | string[]> }): boolean;
}

export interface ResourceVerifier {
  /** Who is calling: the bearer token and its certificate binding. Throws ResourceAccessError (400/401/503). */
  authenticate(request: AuthenticateRequest): Promise<VerifiedToken>;
  /** May this token do this one operation? Throws ResourceAccessError 403 insufficient_scope. */
  authorize(token: VerifiedToken, access: ResourceAccess): AccessDecision;
  /**
   * May this token search? Throws 403 insufficient_scope when no result could ever be returned;
   * otherwise every result must pass `permits` (category-restricted scopes filter results).
   */
  authorizeSearch(token: VerifiedToken, search: SearchAccess): SearchDecision;
  /**
   * RFC 9470 step-up: throws 401 insufficient_user_authentication unless the token's `acr` is one of
   * `acrValues` and (with `maxAgeSeconds`) `auth_time` is recent enough.
   */
  requireAuthentication(token: VerifiedToken, requirement: { acrValues?: string[]; maxAgeSeconds?: number }): void;
}

const DEFAULT_ALGORITHMS = ['ES256'];
const FORBIDDEN_ALGORITHMS = new Set(['none', 'HS256', 'HS384', 'HS512']);
/** RFC 6750 §2.1 b64token. */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
const JWS_COMPACT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;
const MAX_TOKEN_LENGTH = 16 * 1024;
/** The order scopes are tried in (the narrowest context first: it names the allowing scope). */
const CONTEXT_ORDER: readonly SmartContext[] = ['patient', 'user', 'system'];

export function createResourceVerifier(options: ResourceVerifierOptions): ResourceVerifier {
  const issuer = options.issuer;
  const audience = options.audience;
  if (!issuer || !audience) throw new TypeError('issuer and audience are required');
  const algorithms = options.algorithms ?? DEFAULT_ALGORITHMS;
  if (algorithms.length === 0 || algorithms.some((a) => FORBIDDEN_ALGORITHMS.has(a))) {
    throw new TypeError('algorithms must be asymmetric JWS algorithms');
  }
  const clockTolerance = options.clockToleranceSeconds ?? 5;
  const requireBinding = options.requireCertificateBinding ?? true;
  const timeoutMs = options.httpTimeoutMs ?? 5000;
  const doFetch: FetchLike = options.fetch ?? (globalThis.fetch as unknown as FetchLike);
  const introspect: Introspector | undefined = options.introspection
    ? createIntrospector(options.introspection, { issuer, audience, clockToleranceSeconds: clockTolerance })
    : undefined;

  let keys: Promise<JWTVerifyGetKey> | undefined;
  const getKeys = (): Promise<JWTVerifyGetKey> => {
    if (keys) return keys;
    const pending = resolveJwksUri().then((uri) =>
      createRemoteJWKSet(new URL(uri), {
        cooldownDuration: (options.jwksCooldownSeconds ?? 30) * 1000,
        cacheMaxAge: (options.jwksMaxAgeSeconds ?? 600) * 1000,
        timeoutDuration: timeoutMs,
        [customFetch]: (url, init) =>
          doFetch(url, {
            method: 'GET',
            headers: Object.fromEntries(init.headers),
            signal: init.signal,
            redirect: 'manual',
          }) as unknown as Promise<Response>,
      }),
    );
    keys = pending;
    // A failed discovery is retried by the next request instead of being remembered.
    pending.catch(() => { if (keys === pending) keys = undefined; });
    return pending;
  };

  const resolveJwksUri = async (): Promise<string> => {
    if (options.jwksUri) return options.jwksUri;
    const url = `${issuer.replace(/\/+$/, '')}/.well-known/openid-configuration`;
    let metadata: unknown;
    try {
      const response = await doFetch(url, {
        method: 'GET',
        headers: { accept: 'application/json' },
        signal: AbortSignal.timeout(timeoutMs),
        redirect: 'manual',
      });
      if (response.status !== 200) throw new Error(`discovery answered HTTP ${response.status}`);
      metadata = await response.json();
    } catch (err) {
      throw temporarilyUnavailable('authorization server metadata unavailable', err);
    }
    const { issuer: published, jwks_uri: jwksUri } = (metadata ?? {}) as Record<string, unknown>;
    // OpenID Connect Discovery §4.3: the metadata must name exactly the issuer we asked about.
    if (published !== issuer || typeof jwksUri !== 'string' || !isHttpUrl(jwksUri)) {
      throw temporarilyUnavailable('authorization server metadata does not match the configured issuer');
    }
    return jwksUri;
  };

  const verifyJwt = async (token: string): Promise<{ claims: JWTPayload; format: 'jwt' }> => {
    // Garbage and forbidden algorithms are refused before any network request for keys.
    let header: ReturnType<typeof decodeProtectedHeader>;
    try {
      header = decodeProtectedHeader(token);
    } catch (err) {
      throw invalidToken('malformed token', err);
    }
    if (typeof header.alg !== 'string' || !algorithms.includes(header.alg)) {
      throw invalidToken('token signing algorithm not allowed');
    }
    const getKey = await getKeys();
    try {
      const { payload } = await jwtVerify(token, getKey, {
        issuer,
        audience,
        algorithms,
        typ: 'at+jwt', // RFC 9068 §4: refuse ID tokens and other JWTs presented as access tokens
        clockTolerance,
        requiredClaims: ['exp', 'iat', 'jti', 'client_id'],
      });
      if (typeof payload.iat === 'number' && payload.iat > Date.now() / 1000 + clockTolerance) {
        throw invalidToken('token issued in the future');
      }
      return { claims: payload, format: 'jwt' };
    } catch (err) {
      throw jwtError(err);
    }
  };

  const authenticate = async (request: AuthenticateRequest): Promise<VerifiedToken> => {
    const token = bearerToken(request.authorization);
    let claims: Record<string, unknown>;
    let format: 'jwt' | 'opaque';
    if (JWS_COMPACT.test(token)) {
      ({ claims, format } = await verifyJwt(token));
    } else if (introspect) {
      claims = await introspect(token);
      format = 'opaque';
    } else {
      throw invalidToken('unsupported token format');
    }
    const verified = toVerifiedToken(claims, format);
    const thumbprint = checkCertificateBinding(claims.cnf, request.clientCertificateDer, requireBinding);
    if (thumbprint !== undefined) verified.certThumbprint = thumbprint;
    return verified;
  };

  return {
    authenticate,
    authorize,
    authorizeSearch,
    requireAuthentication,
  };
}

// ---- Authorization header ----

/** RFC 6750 §2.1: exactly one `Bearer <b64token>` credential in the Authorization header. */
export function bearerToken(header: string | readonly string[] | undefined): string {
  let value: string | undefined;
  if (typeof header === 'string' || header === undefined) value = header;
  else if (header.length > 1) throw invalidRequest('more than one Authorization header');
  else value = header[0];
  if (value === undefined || value.trim() === '') throw missingToken();

  const space = value.indexOf(' ');
  const scheme = space < 0 ? value : value.slice(0, space);
  if (scheme.toLowerCase() !== 'bearer') throw invalidRequest('the Authorization scheme must be Bearer');
  const credentials = space < 0 ? '' : value.slice(space + 1).replace(/^ +/, '');
  if (credentials === '') throw invalidRequest('the Bearer credentials are missing');
  if (credentials.length > MAX_TOKEN_LENGTH) throw invalidToken('token too large');
  if (!B64TOKEN.test(credentials)) {
    throw invalidRequest(/[\s,]/.test(credentials)
      ? 'exactly one bearer token is allowed'
      : 'the bearer token has characters outside the b64token syntax');
  }
  return credentials;
}

// ---- claims ----

function toVerifiedToken(claims: Record<string, unknown>, format: 'jwt' | 'opaque'): VerifiedToken {
  const str = (name: string, required = false): string | undefined => {
    const v = claims[name];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'string' || v === '') throw invalidToken(`malformed or missing ${name} claim`);
    return v;
  };
  const num = (name: string, required = false): number | undefined => {
    const v = claims[name];
    if (v === undefined && !required) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw invalidToken(`malformed or missing ${name} claim`);
    return v;
  };
  const clientId = str('client_id', true)!;
  const scope = claims.scope === undefined ? '' : str('scope') ?? '';
  const aud = claims.aud;
  const audience = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud.filter((a): a is string => typeof a === 'string') : [];
  const amr = claims.amr;
  if (amr !== undefined && (!Array.isArray(amr) || amr.some((m) => typeof m !== 'string'))) {
    throw invalidToken('malformed amr claim');
  }
  const act = claims.act;
  if (act !== undefined && (typeof act !== 'object' || act === null || Array.isArray(act))) {
    throw invalidToken('malformed act claim');
  }
  // RFC 7662 makes exp optional in introspection answers; a token that never expires is refused here.
  const expiresAt = num('exp', true)!;

  const verified: VerifiedToken = {
    format,
    subject: str('sub'),
    clientId,
    scope,
    // Non-SMART scopes (e.g. `tools/run`) stay in `scope`; only SMART ones are parsed.
    scopes: parseScopeList(scope.split(' ').filter(Boolean).join(' ')).scopes,
    audience,
    expiresAt,
    claims: { ...claims },
  };
  const patient = str('patient');
  if (patient !== undefined) verified.patient = patientIdOf(patient);
  const fhirUser = str('fhirUser');
  if (fhirUser !== undefined) verified.fhirUser = fhirUser;
  const acr = str('acr');
  if (acr !== undefined) verified.acr = acr;
  const purposeOfUse = str('purpose_of_use');
  if (purposeOfUse !== undefined) verified.purposeOfUse = purposeOfUse;
  const tokenId = str('jti');
  if (tokenId !== undefined) verified.tokenId = tokenId;
  const authTime = num('auth_time');
  if (authTime !== undefined) verified.authTime = authTime;
  const issuedAt = num('iat');
  if (issuedAt !== undefined) verified.issuedAt = issuedAt;
  if (amr !== undefined) verified.amr = amr as string[];
  if (act !== undefined) verified.actor = act as Record<string, unknown>;
  return verified;
}

/** `Patient/x`, a full URL ending in `/Patient/x`, or `x` → `x`. */
export function patientIdOf(reference: string): string {
  const match = /(?:^|\/)Patient\/([^/]+)$/.exec(reference);
  return match ? match[1]! : reference;
}

function isHttpUrl(value: string): boolean {
  try {
    const { protocol } = new URL(value);
    return protocol === 'https:' || protocol === 'http:';
  } catch {
    return false;
  }
}

/** Maps jose's failures to RFC 6750 errors without echoing anything from the token. */
function jwtError(err: unknown): ResourceAccessError {
  if (err instanceof ResourceAccessError) return err;
  if (err instanceof joseErrors.JWTExpired) return invalidToken('token expired', err);
  if (err instanceof joseErrors.JWTClaimValidationFailed) {
    const what: Record<string, string> = {
      aud: 'token audience is not this resource server',
      iss: 'token issuer is not trusted',
      typ: 'token type is not at+jwt',
      nbf: 'token not yet valid',
    };
    return invalidToken(what[err.claim] ?? `invalid or missing ${err.claim} claim`, err);
  }
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return invalidToken('token signing algorithm not allowed', err);
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return invalidToken('token signature is invalid', err);
  if (err instanceof joseErrors.JWKSNoMatchingKey) return invalidToken('token signing key is unknown', err);
  if (err instanceof joseErrors.JWKSMultipleMatchingKeys) return invalidToken('token signing key is ambiguous', err);
  // The key set could not be fetched or read: the token may be fine, we cannot tell. Fail closed.
  if (err instanceof joseErrors.JWKSTimeout || err instanceof joseErrors.JWKSInvalid) {
    return temporarilyUnavailable('signing keys unavailable', err);
  }
  if (err instanceof joseErrors.JOSEError && err.code === 'ERR_JOSE_GENERIC') {
    return temporarilyUnavailable('signing keys unavailable', err);
  }
  if (err instanceof joseErrors.JOSEError) return invalidToken('malformed token', err);
  // Not jose's verdict on the token (network failure fetching keys, ...): fail closed, as unavailable.
  return temporarilyUnavailable('signing keys unavailable', err);
}

// ---- authorization ----

function resourceScopes(token: VerifiedToken): ResourceScope[] {
  return token.scopes.filter((s): s is ResourceScope => s.kind === 'resource');
}

/** Whether scopes of this context may apply: patient/ ones only to the token's own patient. */
function contextApplies(token: VerifiedToken, context: SmartContext, patientId: string | undefined): boolean {
  if (context !== 'patient') return true;
  return token.patient !== undefined && patientId !== undefined && patientIdOf(patientId) === token.patient;
}

function contextsOf(requested: SmartContext | undefined): readonly SmartContext[] {
  return requested === undefined ? CONTEXT_ORDER : [requested];
}

function fhirAccess(access: ResourceAccess, context: SmartContext): FhirAccess {
  const out: FhirAccess = { resourceType: access.resourceType, interaction: access.interaction, context };
  if (access.params !== undefined) out.params = access.params;
  return out;
}

function decide(token: VerifiedToken, scopes: readonly ResourceScope[], access: ResourceAccess): AccessDecision | undefined {
  for (const context of contextsOf(access.context)) {
    if (!contextApplies(token, context, access.patientId)) continue;
    const allowing = allows(scopes, fhirAccess(access, context));
    if (allowing) return { scope: allowing.text, context };
  }
  return undefined;
}

function authorize(token: VerifiedToken, access: ResourceAccess): AccessDecision {
  const scopes = resourceScopes(token);
  const decision = decide(token, scopes, access);
  if (decision) return decision;
  const patientScopeWouldAllow = (access.context ?? 'patient') === 'patient'
    && allows(scopes, fhirAccess(access, 'patient')) !== undefined;
  throw refusal(token, access, patientScopeWouldAllow);
}

/**
 * 403 with the minimal scope that would allow the operation, e.g. `patient/MedicationRequest.r`
 * (context: the one asked for, else the token's own kind of scopes; no query part).
 */
function refusal(
  token: VerifiedToken,
  access: { context?: SmartContext; resourceType: string; interaction: Permission },
  patientScopeWouldAllow: boolean,
): ResourceAccessError {
  const context = access.context ?? suggestedContext(token);
  const description = !patientScopeWouldAllow
    ? `the token does not allow ${INTERACTION_NAMES[access.interaction]} on ${access.resourceType}`
    : token.patient === undefined
      ? 'patient/ scopes need a patient in the token'
      : 'the record is outside the token\'s patient context';
  const suggestion = parseScope(`${context}/${access.resourceType}.${access.interaction}`);
  // Not a FHIR R4 type (or not a letter of cruds): no SMART scope could name it, so no hint.
  return insufficientScope(description, suggestion.ok ? suggestion.scope.text : undefined);
}

function suggestedContext(token: VerifiedToken): SmartContext {
  const contexts = new Set(resourceScopes(token).map((s) => s.context));
  if (contexts.has('patient') || (contexts.size === 0 && token.patient !== undefined)) return 'patient';
  if (contexts.has('user')) return 'user';
  if (contexts.has('system')) return 'system';
  return token.subject !== undefined && token.subject !== token.clientId ? 'user' : 'system';
}

const INTERACTION_NAMES: Record<Permission, string> = { c: 'create', r: 'read', u: 'update', d: 'delete', s: 'search' };

/**
 * The scopes of one context that may return results for this search: those the search's parameters
 * satisfy, and those filtering on parameters the search does not constrain (e.g. a category-restricted
 * scope and a search without `category`: results are then filtered to the scope's categories).
 */
function searchScopes(scopes: readonly ResourceScope[], context: SmartContext, resourceType: string, params: Params): ResourceScope[] {
  return scopes.filter((s) =>
    allows([s], { resourceType, interaction: 's', params, context }) !== undefined
    || (s.context === context
      && (s.resourceType === '*' || s.resourceType === resourceType)
      && s.permissions.includes('s')
      && s.query.every(([name]) => !Object.hasOwn(params, name))));
}

type Params = Record<string, string | string[]>;

function authorizeSearch(token: VerifiedToken, search: SearchAccess): SearchDecision {
  const scopes = resourceScopes(token);
  const params = search.params ?? {};
  // With no patient parameter, a patient/ scope can still allow the search: results are limited to
  // the token's patient (by `permits`, and the server may narrow its query with `patient`).
  const patientId = search.patientId ?? token.patient;
  const usable = contextsOf(search.context)
    .filter((context) => contextApplies(token, context, patientId))
    .flatMap((context) => searchScopes(scopes, context, search.resourceType, params));
  if (usable.length === 0) {
    const patientScopeWouldAllow = (search.context ?? 'patient') === 'patient'
      && searchScopes(scopes, 'patient', search.resourceType, params).length > 0;
    throw refusal(token, { ...search, interaction: 's' }, patientScopeWouldAllow);
  }
  const decision: SearchDecision = {
    scopes: [...new Set(usable.map((s) => s.text))],
    permits: (record) => {
      const access: ResourceAccess = { resourceType: search.resourceType, interaction: 's' };
      if (record.params !== undefined) access.params = record.params;
      if (record.patientId !== undefined) access.patientId = record.patientId;
      if (search.context !== undefined) access.context = search.context;
      return decide(token, usable, access) !== undefined;
    },
  };
  if (usable.every((s) => s.context === 'patient') && token.patient !== undefined) decision.patient = token.patient;
  return decision;
}

function requireAuthentication(token: VerifiedToken, requirement: { acrValues?: string[]; maxAgeSeconds?: number }): void {
  const { acrValues, maxAgeSeconds } = requirement;
  const acrOk = !acrValues?.length || (token.acr !== undefined && acrValues.includes(token.acr));
  const now = Date.now() / 1000;
  const ageOk = maxAgeSeconds === undefined || (token.authTime !== undefined && now - token.authTime <= maxAgeSeconds);
  if (acrOk && ageOk) return;
  throw new ResourceAccessError(
    401,
    'insufficient_user_authentication',
    acrOk ? 'more recent authentication is required' : 'a stronger authentication level is required',
    {
      ...(acrValues?.length ? { acrValues } : {}),
      ...(maxAgeSeconds !== undefined ? { maxAge: maxAgeSeconds } : {}),
    },
  );
}
