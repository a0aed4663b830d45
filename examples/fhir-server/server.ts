// A tiny FHIR R4-shaped HTTPS API protected with src/resource (the resource-server library): the other
// end of DESIGN.md §2 step 8. Every request except `GET /metadata` must carry an access token for this
// server's audience, bound to the TLS client certificate of the connection (RFC 8705); reads and
// searches are checked against the token's SMART scopes and patient.
//
//   GET /metadata                                     CapabilityStatement (no token needed)
//   GET /Patient/:id                                  read
//   GET /Observation/:id   GET /MedicationRequest/:id read
//   GET /Observation?patient=<id>&category=<code>     search -> Bundle (searchset)
//   GET /MedicationRequest?patient=<id>               search -> Bundle (searchset)
//   (also GET /Patient?_id=..., `subject=Patient/<id>`, `category=system|code`, comma = OR)
//
// Decisions (see src/resource/index.ts for the library rules):
//   - A read needs a scope allowing `r` on the type, for the record's patient (patient/ scopes) and,
//     for category-restricted scopes, one of the record's categories. No scope for the type at all ->
//     403 even when the id does not exist; otherwise an unknown id is 404.
//   - A search needs a scope allowing `s`. A category-restricted scope allows a search without a
//     `category` parameter, and the results are filtered to the allowed categories; a search asking
//     only for categories no scope allows is 403. Without a `patient` parameter, a patient/ scope
//     limits the search to the token's patient. Every result passes the per-record check, and `total`
//     counts only what is returned.
//   - Unsupported search parameters are 400 (rather than silently ignored).
//   - Errors are OperationOutcome; 400/401/403 carry `WWW-Authenticate: Bearer realm="fhir", ...`,
//     503 (authorization server unreachable) carries Retry-After.
//
// Run: ISSUER=https://localhost:8443 FHIR_AUDIENCE=https://localhost:9443/r4 KEYS_DIR=keys \
//      node --import tsx examples/fhir-server/server.ts   (PORT, HOST, BASE_PATH, INTROSPECTION_* optional)
//   - Step-up (RFC 9470): the `stepUp` option (STEP_UP_TYPES, STEP_UP_MAX_AGE when run directly) names
//     resource types that need a passkey sign-in; a weaker or older token gets 401
//     insufficient_user_authentication with acr_values and max_age.
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pathToFileURL } from 'node:url';

import { Agent, fetch as undiciFetch } from 'undici';

import { loadOrCreateTls } from '../../src/keystore/pki.ts';
import { ACR_PHISHING_RESISTANT } from '../../src/mfa/assurance.ts';
import {
  createResourceVerifier,
  patientIdOf,
  peerCertificateDer,
  ResourceAccessError,
  type FetchLike,
  type IntrospectionOptions,
  type ResourceVerifier,
  type ResourceVerifierOptions,
  type VerifiedToken,
} from '../../src/resource/index.ts';

type Resource = { resourceType: string; id: string; [key: string]: unknown };
type Params = Record<string, string | string[]>;

export interface StepUpRequirement {
  resourceType: string;
  /** Only searches and reads in this category (e.g. `sensitive`); every one of the type when omitted. */
  category?: string;
  acrValues: string[];
  maxAgeSeconds?: number;
}

export interface ExampleFhirServerOptions {
  /** Default 0 (a free port). */
  port?: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Path prefix of the FHIR base, e.g. `/r4`. Default none. */
  basePath?: string;
  issuer: string;
  /** This server's resource identifier: the `aud` its tokens must carry. */
  audience: string;
  /** Server certificate and key; `caPem`: CA names advertised to clients for their certificates. */
  tls: { certPem: string; keyPem: string; caPem?: string };
  /** fetch that trusts the issuer's TLS certificate. */
  fetch?: FetchLike;
  introspection?: IntrospectionOptions;
  /** Any other verifier option (jwksUri, cooldown, clock tolerance, ...). */
  verifier?: Partial<ResourceVerifierOptions>;
  /** A FHIR Bundle (collection) of resources; default ./data.json. */
  data?: { entry?: Array<{ resource?: Resource }> };
  /** Realm of the WWW-Authenticate challenges. Default `fhir`. */
  realm?: string;
  /**
   * Resource types (optionally one category) that need a stronger or more recent sign-in: a weaker
   * token gets RFC 9470's 401 insufficient_user_authentication with acr_values and max_age.
   */
  stepUp?: StepUpRequirement[];
  /** Called once per request with the decision (never with token values or query strings). */
  onAccess?: (event: AccessEvent) => void;
}

export interface AccessEvent {
  method: string;
  path: string;
  status: number;
  clientId?: string;
  subject?: string;
  /** The scope(s) that allowed the request. */
  scope?: string;
  /** Emergency (break-glass) access: the token's HL7 PurposeOfUse, so the access is labelled in the log. */
  purposeOfUse?: string;
  error?: string;
}

export interface RunningExampleFhirServer {
  /** The FHIR base URL, e.g. `https://127.0.0.1:40123` (+ basePath). */
  url: string;
  port: number;
  verifier: ResourceVerifier;
  stop(): Promise<void>;
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const SEARCH_PARAMS: Record<string, ReadonlySet<string>> = {
  Patient: new Set(['_id']),
  Observation: new Set(['_id', 'patient', 'subject', 'category']),
  MedicationRequest: new Set(['_id', 'patient', 'subject', 'category']),
};

export async function startExampleFhirServer(options: ExampleFhirServerOptions): Promise<RunningExampleFhirServer> {
  const verifier = createResourceVerifier({
    issuer: options.issuer,
    audience: options.audience,
    ...(options.fetch ? { fetch: options.fetch } : {}),
    ...(options.introspection ? { introspection: options.introspection } : {}),
    ...options.verifier,
  });
  const store = new Store(options.data ?? JSON.parse(await readFile(new URL('./data.json', import.meta.url), 'utf8')));
  const basePath = (options.basePath ?? '').replace(/\/+$/, '');
  const realm = options.realm ?? 'fhir';
  let origin = '';
  let baseUrl = '';

  const server = https.createServer({
    cert: options.tls.certPem,
    key: options.tls.keyPem,
    ...(options.tls.caPem ? { ca: options.tls.caPem } : {}),
    // Ask every client for its certificate, but let the verifier decide: the token's binding (its
    // x5t#S256) is what proves which workload is speaking.
    requestCert: true,
    rejectUnauthorized: false,
    minVersion: 'TLSv1.2',
  }, (req, res) => {
    const event: AccessEvent = { method: req.method ?? 'GET', path: '', status: 500 };
    handle(req, res, event)
      .catch((err: unknown) => {
        if (err instanceof ResourceAccessError) return sendAccessError(res, err, realm, event);
        event.error = 'exception';
        return send(res, 500, outcome('exception', 'internal error'));
      })
      .finally(() => {
        event.status = res.statusCode;
        options.onAccess?.(event);
      });
  });

  const handle = async (req: IncomingMessage, res: ServerResponse, event: AccessEvent): Promise<void> => {
    // Concatenated, not resolved: a request target like `//other.host/x` stays a path of ours.
    const url = new URL(`${origin}${req.url ?? '/'}`);
    // Logs never carry patient ids (DESIGN.md §5): ids in the path are replaced by `:id`.
    event.path = withoutIds(url.pathname, basePath);
    if (!url.pathname.startsWith(`${basePath}/`)) return send(res, 404, outcome('not-found', 'not a FHIR endpoint'));
    const segments = url.pathname.slice(basePath.length + 1).split('/').filter(Boolean);
    const write = req.method === 'GET' ? undefined : WRITE_INTERACTIONS[req.method ?? ''];
    if (req.method !== 'GET' && !write) return send(res, 405, outcome('not-supported', 'only GET is supported'), { allow: 'GET' });
    if (segments.length === 1 && segments[0] === 'metadata' && !write) return send(res, 200, capabilityStatement(baseUrl, options.issuer));

    const token = await verifier.authenticate({
      authorization: req.headersDistinct.authorization,
      clientCertificateDer: peerCertificateDer(req.socket),
    });
    event.clientId = token.clientId;
    if (token.subject !== undefined) event.subject = token.subject;
    if (token.purposeOfUse !== undefined) event.purposeOfUse = token.purposeOfUse;

    const [type, id, ...rest] = segments;
    if (type === undefined || !store.has(type) || rest.length > 0) {
      return send(res, 404, outcome('not-found', 'unknown resource type or path'));
    }
    if (write) {
      // Scopes first: a token that may not write is told so (403 insufficient_scope), whatever the record.
      const existing = id === undefined ? undefined : store.get(type, id);
      // A create is checked as a write into the token's patient's record (the body is not read here).
      const record = existing ? recordOf(existing) : token.patient !== undefined ? { patientId: token.patient } : {};
      const decision = verifier.authorize(token, { resourceType: type, interaction: write, ...record });
      event.scope = decision.scope;
      return send(res, 405, outcome('not-supported', 'this example server holds read-only data'), { allow: 'GET' });
    }
    const categories = url.searchParams.getAll('category');
    for (const rule of options.stepUp ?? []) {
      if (rule.resourceType !== type) continue;
      // A category rule covers searches that name it and searches that could return it (no category).
      if (rule.category !== undefined && id === undefined && categories.length > 0 && !categories.some((c) => c.split(',').includes(rule.category!))) continue;
      verifier.requireAuthentication(token, { acrValues: rule.acrValues, ...(rule.maxAgeSeconds !== undefined ? { maxAgeSeconds: rule.maxAgeSeconds } : {}) });
    }
    if (id !== undefined) {
      const resource = store.get(type, id);
      if (!resource) {
        requireTypeAccess(verifier, token, type, 'r');
        return send(res, 404, outcome('not-found', `${type}/${id} is not known`));
      }
      const decision = verifier.authorize(token, { resourceType: type, interaction: 'r', ...recordOf(resource) });
      event.scope = decision.scope;
      return send(res, 200, resource);
    }
    return search(res, url, type, token, event);
  };

  const search = (res: ServerResponse, url: URL, type: string, token: VerifiedToken, event: AccessEvent): void => {
    const params: Params = {};
    for (const name of new Set(url.searchParams.keys())) {
      const values = url.searchParams.getAll(name);
      params[name] = values.length === 1 ? values[0]! : values;
    }
    const unsupported = Object.keys(params).filter((name) => !SEARCH_PARAMS[type]?.has(name));
    if (unsupported.length) return send(res, 400, outcome('not-supported', `unsupported search parameter: ${unsupported.join(', ')}`));

    const patientParam = single(params.patient) ?? single(params.subject);
    const requestedPatient = patientParam === undefined ? undefined : patientIdOf(patientParam);
    const authParams: Params = { ...params };
    if (params.category !== undefined) authParams.category = store.categoryForms(type, values(params.category));
    const decision = verifier.authorizeSearch(token, {
      resourceType: type,
      params: authParams,
      ...(requestedPatient !== undefined ? { patientId: requestedPatient } : {}),
    });
    event.scope = decision.scopes.join(' ');
    const patient = requestedPatient ?? decision.patient;

    const matches = store.all(type).filter((resource) => {
      const record = recordOf(resource);
      if (patient !== undefined && record.patientId !== patient) return false;
      if (params._id !== undefined && !values(params._id).flatMap(orValues).includes(resource.id)) return false;
      if (params.category !== undefined && !values(params.category).every((v) => matchesToken(record.params.category, v))) return false;
      return decision.permits(record);
    });
    return send(res, 200, {
      resourceType: 'Bundle',
      type: 'searchset',
      total: matches.length,
      link: [{ relation: 'self', url: url.href }],
      entry: matches.map((resource) => ({
        fullUrl: `${baseUrl}/${resource.resourceType}/${resource.id}`,
        resource,
        search: { mode: 'match' },
      })),
    });
  };

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
  const { port } = server.address() as AddressInfo;
  const host = options.host ?? '127.0.0.1';
  origin = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
  baseUrl = `${origin}${basePath}`;

  return {
    url: baseUrl,
    port,
    verifier,
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

// ---- data ----

class Store {
  private readonly byType = new Map<string, Map<string, Resource>>();
  /** Coding systems of each type's categories, to match `category=code` against `system|code` scopes. */
  private readonly categorySystems = new Map<string, Set<string>>();

  constructor(bundle: { entry?: Array<{ resource?: Resource }> }) {
    for (const name of Object.keys(SEARCH_PARAMS)) this.byType.set(name, new Map());
    for (const { resource } of bundle.entry ?? []) {
      if (!resource || !this.byType.has(resource.resourceType)) continue;
      this.byType.get(resource.resourceType)!.set(resource.id, resource);
      for (const coding of categoryCodings(resource)) {
        if (!coding.system) continue;
        const systems = this.categorySystems.get(resource.resourceType) ?? new Set<string>();
        systems.add(coding.system);
        this.categorySystems.set(resource.resourceType, systems);
      }
    }
  }

  has(type: string): boolean {
    return this.byType.has(type);
  }

  get(type: string, id: string): Resource | undefined {
    return this.byType.get(type)?.get(id);
  }

  all(type: string): Resource[] {
    return [...(this.byType.get(type)?.values() ?? [])];
  }

  /**
   * The spellings of searched categories a scope might use: `code` and `system|code` for this type's
   * category systems (only for the search check: every result is checked on its own categories).
   */
  categoryForms(type: string, searched: string[]): string[] {
    const forms = new Set<string>();
    for (const value of searched) {
      forms.add(value);
      const bar = value.indexOf('|');
      if (bar >= 0) forms.add(value.slice(bar + 1));
      else for (const system of this.categorySystems.get(type) ?? []) forms.add(`${system}|${value}`);
    }
    return [...forms];
  }
}

interface Coding { system?: string; code?: string }

function categoryCodings(resource: Resource): Coding[] {
  const categories = resource.category;
  if (!Array.isArray(categories)) return [];
  return categories.flatMap((c: { coding?: Coding[] }) => c.coding ?? []);
}

/** FHIR RESTful writes and the SMART v2 permission each needs. */
const WRITE_INTERACTIONS: Record<string, 'c' | 'u' | 'd'> = { POST: 'c', PUT: 'u', PATCH: 'u', DELETE: 'd' };

/** What the verifier needs to know about one record: its patient and its categories (both spellings). */
function recordOf(resource: Resource): { patientId?: string; params: { category: string[] } } {
  const category = categoryCodings(resource).flatMap((c) =>
    c.code === undefined ? [] : c.system ? [c.code, `${c.system}|${c.code}`] : [c.code]);
  const reference = (resource.subject as { reference?: string } | undefined)?.reference;
  const patientId = resource.resourceType === 'Patient'
    ? resource.id
    : reference?.startsWith('Patient/') ? patientIdOf(reference) : undefined;
  return { ...(patientId !== undefined ? { patientId } : {}), params: { category } };
}

/** FHIR token search, `code` (any system) or `system|code`; a comma means OR. */
function matchesToken(have: string[], searched: string): boolean {
  return orValues(searched).some((value) => have.includes(value));
}

function orValues(value: string): string[] {
  return value.split(',').filter(Boolean);
}

function values(value: string | string[] | undefined): string[] {
  return value === undefined ? [] : Array.isArray(value) ? value : [value];
}

function single(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/** 403 (with the scope to ask for) when no scope of the token could ever allow this interaction on the type. */
function requireTypeAccess(verifier: ResourceVerifier, token: VerifiedToken, type: string, interaction: 'r' | 's'): void {
  const some = token.scopes.some((s) => s.kind === 'resource'
    && (s.resourceType === '*' || s.resourceType === type) && s.permissions.includes(interaction));
  if (!some) verifier.authorize(token, { resourceType: type, interaction }); // throws 403 insufficient_scope
}

// ---- responses ----

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) return;
  res.writeHead(status, { 'content-type': FHIR_JSON, 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

function sendAccessError(res: ServerResponse, err: ResourceAccessError, realm: string, event: AccessEvent): void {
  event.error = err.error ?? 'missing_token';
  const headers: Record<string, string> = {};
  if (err.challenges) headers['www-authenticate'] = err.wwwAuthenticate(realm);
  if (err.retryAfter !== undefined) headers['retry-after'] = String(err.retryAfter);
  const code = { 400: 'invalid', 401: 'login', 403: 'forbidden', 503: 'transient' }[err.status] as string;
  send(res, err.status, outcome(code, err.description), headers);
}

function outcome(code: string, diagnostics: string): Record<string, unknown> {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, diagnostics }] };
}

function capabilityStatement(baseUrl: string, issuer: string): Record<string, unknown> {
  const readSearch = [{ code: 'read' }, { code: 'search-type' }];
  const patientParams = [
    { name: 'patient', type: 'reference', documentation: 'The patient (Patient/<id> or <id>)' },
    { name: 'subject', type: 'reference' },
  ];
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2024-06-01',
    publisher: 'clinical-authz example',
    kind: 'instance',
    software: { name: 'clinical-authz example FHIR server' },
    implementation: { description: 'Example FHIR API protected by certificate-bound SMART access tokens', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['json'],
    rest: [{
      mode: 'server',
      security: {
        cors: false,
        service: [{
          coding: [{ system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'SMART-on-FHIR' }],
        }],
        description: `Bearer access tokens from ${issuer}, bound to the client's TLS certificate (RFC 8705), with SMART v2 scopes.`,
      },
      resource: [
        { type: 'Patient', interaction: readSearch, searchParam: [{ name: '_id', type: 'token' }] },
        {
          type: 'Observation',
          interaction: readSearch,
          searchParam: [...patientParams, { name: 'category', type: 'token' }, { name: '_id', type: 'token' }],
        },
        {
          type: 'MedicationRequest',
          interaction: readSearch,
          searchParam: [...patientParams, { name: 'category', type: 'token' }, { name: '_id', type: 'token' }],
        },
      ],
    }],
  };
}

// ---- run directly ----

async function main(): Promise<void> {
  const env = process.env;
  // Defaults fit `npm start` with the demo seed: its FHIR resource server is https://localhost:9443/r4.
  const port = Number(env.PORT ?? 9443);
  const basePath = env.BASE_PATH ?? '/r4';
  const issuer = env.ISSUER ?? 'https://localhost:3000';
  const audience = env.FHIR_AUDIENCE ?? `https://localhost:${port}${basePath}`;
  const tls = await loadOrCreateTls(env.KEYS_DIR ?? 'keys', { allowGenerate: false });
  const dispatcher = new Agent({ connect: { ca: tls.caPem } });
  const introspection = env.INTROSPECTION_CLIENT_ID && env.INTROSPECTION_CLIENT_SECRET
    ? {
      endpoint: env.INTROSPECTION_ENDPOINT ?? `${issuer.replace(/\/+$/, '')}/token/introspection`,
      clientId: env.INTROSPECTION_CLIENT_ID,
      clientSecret: env.INTROSPECTION_CLIENT_SECRET,
    }
    : undefined;
  const fetch: FetchLike = (url, init) => undiciFetch(url, { ...init, dispatcher });
  const server = await startExampleFhirServer({
    port,
    host: env.HOST ?? '127.0.0.1',
    ...(basePath ? { basePath } : {}),
    issuer,
    audience,
    tls: { certPem: tls.certPem, keyPem: tls.keyPem, caPem: tls.clientCaPem },
    fetch,
    ...(introspection ? { introspection: { ...introspection, fetch } } : {}),
    // Demo: MedicationRequest needs a passkey sign-in within the last 15 minutes (STEP_UP_TYPES="" for none).
    stepUp: (env.STEP_UP_TYPES ?? 'MedicationRequest').split(',').filter(Boolean).map((resourceType) => ({
      resourceType, acrValues: [ACR_PHISHING_RESISTANT], maxAgeSeconds: Number(env.STEP_UP_MAX_AGE ?? 900),
    })),
    onAccess: (e) => console.log(JSON.stringify({ time: new Date().toISOString(), ...e })),
  });
  console.log(`example FHIR server on ${server.url} (audience ${audience}, issuer ${issuer})`);
  const stop = () => { void server.stop().then(() => dispatcher.close()).then(() => process.exit(0)); };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err: unknown) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  });
}

/** `/r4/Patient/p1` -> `/r4/Patient/:id`: the resource type stays, the logical id does not. */
export function withoutIds(pathname: string, basePath: string): string {
  if (!pathname.startsWith(`${basePath}/`)) return pathname.length > 64 ? `${pathname.slice(0, 64)}…` : pathname;
  const segments = pathname.slice(basePath.length + 1).split('/');
  return `${basePath}/${segments.map((segment, i) => (i % 2 === 1 && segment ? ':id' : segment)).join('/')}`;
}
