// Hostile input (issue 9, part 5): fast-check fuzzing of the token endpoint (client credentials,
// authorization code, refresh token, token exchange, unknown grants), introspection, revocation, dynamic
// registration (with and without an initial access token), the admin API and the login form, against
// the real server over real TLS. Every answer: no 5xx, within the deadline, no token unless the case is
// a valid control, JSON or HTML as the endpoint speaks. Then targeted cases, each with its exact refusal:
// forged JWTs (alg none, HS256 keyed with the server's public key), oversized bodies, deeply nested
// JSON, repeated parameters, confusable usernames, SQL metacharacters, header injection and open
// redirects. Afterwards, no audit record holds a password or secret the fuzzer sent.
//
// FUZZ_RUNS scales the number of cases (default 250 per unit; see RUNS below), FUZZ_SEED replays a run,
// FUZZ_REQUEST_TIMEOUT_MS is the per-request deadline.
import assert from 'node:assert/strict';
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import fc from 'fast-check';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { Agent } from 'undici';

import { findUserByUsername } from '../src/accounts/users.ts';
import { ADMIN_RESOURCE } from '../src/admin/auth.ts';
import { TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN } from '../src/exchange/decision.ts';
import { createInitialAccessToken } from '../src/oidc/registration.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import {
  assertSafe, basicRaw, encodeForm, extraHeaders, extraPairs, forgeJwt, forgedJwt, formContentType, FUZZ_RUNS, FUZZ_SEED,
  headerValue, hostileAuthorization, pct, hostileString, jsonContentType, rawFormTail, send, SQL_INJECTIONS, worthTracking,
  type Answer, type Pairs, type Req,
} from './support/fuzz.ts';
import { Browser } from './support/login-flow.ts';
import { devCa, issueClientCertificate } from './support/pki.ts';
import { APP, basicAuth, CLINICIAN, FHIR, OTHER, SERVICE, startTestServer, TOOLS, type TestServer } from './support/test-server.ts';

/** The token-exchange actor (tls_client_auth, its own CA-issued certificate). */
const ACTOR = 'fuzz-actor';
/** Administers through the admin API with its own CA-issued certificate. */
const OPS = 'fuzz-ops';
/** Authenticates with private_key_jwt. */
const JWT_CLIENT = 'fuzz-jwt-client';
/** A username with an `a` and a `k` (confusables: Cyrillic а, Kelvin sign K). */
const NURSE = { username: 'nurse.kate', password: 'nurse-kate-password-0123', displayName: 'Nurse Kate' };
/** The account the login fuzzer aims at (it gets locked; nobody else signs in with it). */
const TARGET = { username: 'fuzz.target', password: 'fuzz-target-password-0123' };
const LABS = 'patient/Observation.rs';
const REGISTERED_RESOURCES = new Set([FHIR, TOOLS, OTHER, ADMIN_RESOURCE]);
const ASSERTION_TYPE = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

const RUNS = {
  token: FUZZ_RUNS * 4,
  introspection: FUZZ_RUNS,
  revocation: FUZZ_RUNS,
  registration: FUZZ_RUNS * 2,
  admin: FUZZ_RUNS * 2,
  /** Batches of up to 10 concurrent attempts: each failed login waits out the throttle's delay. */
  login: Math.max(1, Math.ceil(FUZZ_RUNS / 5)),
};

let ts: TestServer;
let opsAgent: Agent;
/** Presents ACTOR's certificate (CN=fuzz-actor). */
let actorAgent: Agent;
let adminToken: string;
let serviceToken: string;
let jwtClientKey: Awaited<ReturnType<typeof generateKeyPair>>['privateKey'];
let material: { pem: string; jwkJson: string; kid: string };
let clinicianId: string;
let interactionUrl: string;
let interactionBrowser: Browser;
/** Every password and client secret the fuzzer sent: none may reach the audit log. */
const sentSecrets = new Set<string>();
const counts: Record<string, number> = {};
const count = (what: string, n = 1) => { counts[what] = (counts[what] ?? 0) + n; };

function fcParams<T>(numRuns: number): fc.Parameters<T> {
  return { numRuns, ...(FUZZ_SEED !== undefined ? { seed: FUZZ_SEED } : {}), endOnFailure: true };
}

/** Token endpoints answer JSON; our own refusals (malformed bodies) answer HTML to a client that prefers it. */
function tokenFormat(req: Req): 'json' | 'json-or-html' {
  const accept = req.headers.accept;
  return accept !== undefined && /html|text\/\*/i.test(accept) ? 'json-or-html' : 'json';
}

/** Fixed vocabulary the generators also use as passwords: it appears in records for its own reasons. */
const NOT_SECRETS = new Set<string>();

function track(...values: Array<string | undefined>) {
  for (const v of values) if (v !== undefined && worthTracking(v) && !NOT_SECRETS.has(v)) sentSecrets.add(v);
}

function formReq(url: string, pairs: Pairs, raw: string, headers: Record<string, string | undefined>, dispatcher = ts.dispatcher): Req {
  return { url, method: 'POST', body: encodeForm(pairs, raw), headers, dispatcher };
}

const mtls = (path: string) => `${ts.mtlsBaseUrl}${path}`;
const onIssuer = (path: string) => `${ts.issuer}${path}`;

/** The claims a real access token of the clinician through test-app would carry. */
function realisticClaims(): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return { iss: ts.issuer, sub: clinicianId, aud: FHIR, client_id: APP.client_id, scope: LABS, patient: 'p1', iat: now, exp: now + 300, acr: 'urn:clinical-authz:acr:phr' };
}

async function clientAssertion(alg: 'ES256', key: typeof jwtClientKey, claims: Record<string, unknown> = {}): Promise<string> {
  return new SignJWT({ ...claims }).setProtectedHeader({ alg }).setIssuer(JWT_CLIENT).setSubject(JWT_CLIENT).setAudience(ts.issuer)
    .setJti(randomBytes(12).toString('base64url')).setIssuedAt().setExpirationTime('60s').sign(key);
}

async function ccToken(agent: Agent, params: Record<string, string>, authorization?: string): Promise<Answer> {
  return send({
    url: mtls('/token'), method: 'POST', dispatcher: agent, body: new URLSearchParams(params).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded', authorization },
  }, 'client credentials');
}

before(async () => {
  ts = await startTestServer({
    env: {
      // The fuzzer should meet the endpoints, not the rate limiter (which has its own tests).
      RATE_LIMIT_CLIENT_POINTS: '10000000',
      RATE_LIMIT_LOGIN_IP_POINTS: '10000000',
      RATE_LIMIT_LOGIN_USER_POINTS: '10000000',
      // Locks the fuzzed username sooner (its growing delays stay short).
      LOGIN_MAX_FAILURES: '3',
      CLIENT_CREDENTIALS_TTL: '3600',
      INTERACTION_TTL: '3600',
    },
  });
  const ca = await devCa(ts.keysDir);
  const opsCert = await issueClientCertificate(ca, OPS);
  opsAgent = new Agent({ connect: { ca: ts.caPem, cert: opsCert.certPem, key: opsCert.keyPem } });
  const actorCert = await issueClientCertificate(ca, ACTOR);
  actorAgent = new Agent({ connect: { ca: ts.caPem, cert: actorCert.certPem, key: actorCert.keyPem } });
  const jwtKeys = await generateKeyPair('ES256', { extractable: true });
  jwtClientKey = jwtKeys.privateKey;
  await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
    users: [
      { username: NURSE.username, password: NURSE.password, displayName: NURSE.displayName, roles: ['clinician'] },
      { username: TARGET.username, password: TARGET.password, roles: ['clinician'] },
    ],
    clients: [
      {
        client_id: ACTOR, token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: `CN=${ACTOR}`,
        grant_types: [TOKEN_EXCHANGE_GRANT], response_types: [], redirect_uris: [],
      },
      {
        client_id: OPS, token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: `CN=${OPS}`,
        grant_types: ['client_credentials'], response_types: [], redirect_uris: [], resource_scope: 'admin:read admin:write',
      },
      {
        client_id: JWT_CLIENT, token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [{ ...await exportJWK(jwtKeys.publicKey), alg: 'ES256', use: 'sig' }] },
        grant_types: ['client_credentials'], response_types: [], redirect_uris: [], resource_scope: 'system/Patient.rs',
      },
    ],
    exchangePolicies: [{ actor: ACTOR, audience: FHIR, subjectClients: [APP.client_id], scope: LABS, maxDepth: 1 }],
  }));
  clinicianId = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!.id;

  const jwks = (await (await ts.fetch(`${ts.issuer}/jwks`)).json()) as { keys: Array<Record<string, unknown>> };
  const serverKey = jwks.keys[0]!;
  material = {
    pem: createPublicKey({ key: serverKey as never, format: 'jwk' }).export({ type: 'spki', format: 'pem' }).toString(),
    jwkJson: JSON.stringify(serverKey),
    kid: String(serverKey.kid),
  };

  const admin = await ccToken(opsAgent, { grant_type: 'client_credentials', client_id: OPS, resource: ADMIN_RESOURCE, scope: 'admin:read admin:write' });
  assert.equal(admin.status, 200, admin.text);
  adminToken = String(admin.json!.access_token);
  const service = await ccToken(ts.dispatcher, { grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }, basicAuth(SERVICE.client_id, SERVICE.client_secret));
  assert.equal(service.status, 200, service.text);
  serviceToken = String(service.json!.access_token);

  // One login interaction for the login fuzzer: failed attempts leave it at the login step.
  interactionBrowser = new Browser(ts);
  const page = await interactionBrowser.follow(await interactionBrowser.get(authUrl()));
  const action = /action="(\/interaction\/[^"]+\/login)"/.exec(page.body)?.[1];
  assert.ok(action, `a login page: ${page.status} ${page.body.slice(0, 200)}`);
  interactionUrl = onIssuer(action);
});

after(async () => {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  console.log(`fuzz-endpoints: ${total} requests (FUZZ_RUNS=${FUZZ_RUNS}${FUZZ_SEED !== undefined ? `, FUZZ_SEED=${FUZZ_SEED}` : ''}): ${JSON.stringify(counts)}`);
  await opsAgent?.close();
  await actorAgent?.close();
  await ts?.stop();
});

function authUrl(params: Record<string, string> = {}): URL {
  const verifier = randomBytes(32).toString('base64url');
  const url = new URL(`${ts.issuer}/auth`);
  for (const [k, v] of Object.entries({
    client_id: APP.client_id, response_type: 'code', redirect_uri: APP.redirect_uri, scope: 'openid', state: 'fuzz-state',
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256', ...params,
  })) url.searchParams.set(k, v);
  return url;
}

// ---- the token endpoint ----------------------------------------------------------------------------------

interface TokenCase { label: string; req: Req; control: boolean }

function tokenCases(): fc.Arbitrary<TokenCase> {
  const serviceAuth = basicAuth(SERVICE.client_id, SERVICE.client_secret);
  const appAuth = basicAuth(APP.client_id, APP.client_secret);
  const jwt = forgedJwt(material, realisticClaims());
  const common = { raw: rawFormTail, extra: extraPairs, ct: formContentType, hdrs: extraHeaders, issuerListener: fc.boolean() };
  const headersOf = (c: { ct: string | undefined; hdrs: Record<string, string> }, authorization: string | undefined) =>
    ({ ...c.hdrs, 'content-type': c.ct, authorization });
  const url = (c: { issuerListener: boolean }) => (c.issuerListener ? onIssuer('/token') : mtls('/token'));
  const hostileResource = fc.oneof(hostileString, fc.webUrl()).filter((r) => !REGISTERED_RESOURCES.has(r));

  const control = fc.constant(null).map((): TokenCase => ({
    label: 'control: client credentials',
    control: true,
    req: formReq(mtls('/token'), [['grant_type', 'client_credentials'], ['resource', FHIR], ['scope', 'system/Patient.rs']], '', {
      'content-type': 'application/x-www-form-urlencoded', authorization: serviceAuth,
    }),
  }));

  // Valid client authentication only with a resource nobody registered: a token would be a bug.
  const clientCredentials = fc.record({
    ...common,
    auth: fc.oneof(fc.constant(serviceAuth), hostileAuthorization),
    resource: fc.oneof(fc.constant(FHIR), hostileResource),
    scope: fc.option(fc.oneof(fc.constant('system/Patient.rs'), hostileString), { nil: undefined }),
  }).filter((c) => c.auth !== serviceAuth || (c.resource !== FHIR && c.resource.trim() !== '' && !c.raw.includes('resource=')
    && !c.extra.some(([k]) => k === 'resource' || k === 'audience'))).map((c): TokenCase => {
    const pairs: Pairs = [['grant_type', 'client_credentials'], ['resource', c.resource], ...(c.scope !== undefined ? [['scope', c.scope] as [string, string]] : []), ...c.extra];
    return { label: 'client_credentials', control: false, req: formReq(url(c), pairs, c.raw, headersOf(c, c.auth)) };
  });

  const authorizationCode = fc.record({
    ...common,
    auth: fc.oneof(fc.constant(appAuth), hostileAuthorization),
    code: fc.oneof(hostileString, jwt),
    redirect: fc.oneof(fc.constant(APP.redirect_uri), hostileString),
    verifier: fc.option(hostileString, { nil: undefined }),
  }).map((c): TokenCase => {
    const pairs: Pairs = [['grant_type', 'authorization_code'], ['code', c.code], ['redirect_uri', c.redirect], ...(c.verifier !== undefined ? [['code_verifier', c.verifier] as [string, string]] : []), ...c.extra];
    return { label: 'authorization_code', control: false, req: formReq(url(c), pairs, c.raw, headersOf(c, c.auth)) };
  });

  const refresh = fc.record({
    ...common,
    auth: fc.oneof(fc.constant(appAuth), hostileAuthorization),
    token: fc.oneof(hostileString, jwt),
    scope: fc.option(hostileString, { nil: undefined }),
  }).map((c): TokenCase => {
    const pairs: Pairs = [['grant_type', 'refresh_token'], ['refresh_token', c.token], ...(c.scope !== undefined ? [['scope', c.scope] as [string, string]] : []), ...c.extra];
    return { label: 'refresh_token', control: false, req: formReq(url(c), pairs, c.raw, headersOf(c, c.auth)) };
  });

  const exchange = fc.record({
    ...common,
    clientId: fc.oneof({ weight: 4, arbitrary: fc.constant(ACTOR) }, { weight: 1, arbitrary: hostileString }),
    auth: fc.oneof({ weight: 4, arbitrary: fc.constant(undefined) }, { weight: 1, arbitrary: hostileAuthorization }),
    subject: fc.oneof(jwt, hostileString, fc.constant(serviceToken)),
    subjectType: fc.oneof(fc.constantFrom(TOKEN_TYPE_ACCESS_TOKEN, 'urn:ietf:params:oauth:token-type:jwt'), hostileString),
    target: fc.oneof(fc.constant(['resource', FHIR] as [string, string]), fc.tuple(fc.constantFrom('resource', 'audience'), hostileString)),
    scope: fc.oneof(fc.constant(LABS), hostileString),
    actorToken: fc.option(fc.tuple(fc.oneof(jwt, hostileString), fc.oneof(fc.constant(TOKEN_TYPE_ACCESS_TOKEN), hostileString)), { nil: undefined }),
    requested: fc.option(hostileString, { nil: undefined }),
  }).map((c): TokenCase => {
    const pairs: Pairs = [
      ['grant_type', TOKEN_EXCHANGE_GRANT], ['client_id', c.clientId], ['subject_token', c.subject], ['subject_token_type', c.subjectType],
      c.target, ['scope', c.scope],
      ...(c.actorToken ? [['actor_token', c.actorToken[0]], ['actor_token_type', c.actorToken[1]]] as Pairs : []),
      ...(c.requested !== undefined ? [['requested_token_type', c.requested] as [string, string]] : []),
      ...c.extra,
    ];
    return { label: 'token_exchange', control: false, req: formReq(url(c), pairs, c.raw, headersOf(c, c.auth), actorAgent) };
  });

  const assertion = fc.record({
    ...common,
    assertion: fc.oneof(jwt, hostileString, fc.constant(forgeJwt({ alg: 'none' }, { iss: JWT_CLIENT, sub: JWT_CLIENT, aud: ts.issuer, exp: 9_999_999_999, jti: 'x' }, 'none', material))),
    type: fc.oneof(fc.constant(ASSERTION_TYPE), hostileString),
    clientId: fc.option(fc.oneof(fc.constant(JWT_CLIENT), hostileString), { nil: undefined }),
  }).map((c): TokenCase => {
    const pairs: Pairs = [['grant_type', 'client_credentials'], ['resource', FHIR], ['scope', 'system/Patient.rs'], ['client_assertion_type', c.type], ['client_assertion', c.assertion],
      ...(c.clientId !== undefined ? [['client_id', c.clientId] as [string, string]] : []), ...c.extra];
    return { label: 'client_assertion', control: false, req: formReq(url(c), pairs, c.raw, headersOf(c, undefined)) };
  });

  const unknownGrant = fc.record({ ...common, grant: hostileString, auth: fc.oneof(fc.constant(serviceAuth), hostileAuthorization) })
    .filter((c) => !['client_credentials', 'authorization_code', 'refresh_token', TOKEN_EXCHANGE_GRANT].includes(c.grant))
    .map((c): TokenCase => ({ label: 'unknown grant', control: false, req: formReq(url(c), [['grant_type', c.grant], ['resource', FHIR], ...c.extra], c.raw, headersOf(c, c.auth)) }));

  return fc.oneof(
    { weight: 1, arbitrary: control },
    { weight: 4, arbitrary: clientCredentials },
    { weight: 3, arbitrary: authorizationCode },
    { weight: 3, arbitrary: refresh },
    { weight: 5, arbitrary: exchange },
    { weight: 2, arbitrary: assertion },
    { weight: 1, arbitrary: unknownGrant },
  );
}

function secretsIn(req: Req): Array<string | undefined> {
  const out: Array<string | undefined> = [];
  for (const [k, v] of new URLSearchParams(req.body ?? '')) if (/secret|password/.test(k)) out.push(v);
  const auth = req.headers.authorization;
  if (auth?.startsWith('Basic ')) {
    const decoded = Buffer.from(auth.slice(6), 'base64').toString('utf8');
    out.push(decoded.slice(decoded.indexOf(':') + 1));
  }
  return out;
}

// Concurrently: the login fuzzer mostly waits out the throttle's delays while the others run.
describe('fuzz', { concurrency: true }, () => {
  test(`token endpoint: ${RUNS.token} cases (client credentials, code, refresh, token exchange, client assertions, unknown grants)`, async () => {
    await fc.assert(fc.asyncProperty(tokenCases(), async (c) => {
      count(`token ${c.label}`);
      track(...secretsIn(c.req));
      const a = await send(c.req, `POST /token (${c.label})`);
      if (c.control) {
        assert.equal(a.status, 200, `control: ${a.text}`);
        assert.equal(typeof a.json?.access_token, 'string', 'the control gets a token (the check can see one)');
        return;
      }
      assertSafe(`POST /token (${c.label}) ${c.req.body?.slice(0, 200)}`, a, tokenFormat(c.req));
      assert.ok(a.status >= 400, `refused: ${a.status} ${a.text.slice(0, 200)}`);
    }), fcParams(RUNS.token));
  });

  test(`introspection: ${RUNS.introspection} cases`, async () => {
    const serviceAuth = basicAuth(SERVICE.client_id, SERVICE.client_secret);
    const cases = fc.record({
      control: fc.integer({ min: 0, max: 9 }).map((n) => n === 0),
      auth: fc.oneof(fc.constant(serviceAuth), fc.constant(basicAuth(APP.client_id, APP.client_secret)), hostileAuthorization),
      token: fc.oneof(hostileString, forgedJwt(material, realisticClaims())),
      hint: fc.option(fc.oneof(fc.constantFrom('access_token', 'refresh_token'), hostileString), { nil: undefined }),
      raw: rawFormTail, extra: extraPairs, ct: formContentType, hdrs: extraHeaders,
    });
    await fc.assert(fc.asyncProperty(cases, async (c) => {
      count('introspection');
      if (c.control) {
        const a = await send(formReq(mtls('/token/introspection'), [['token', serviceToken]], '', { 'content-type': 'application/x-www-form-urlencoded', authorization: serviceAuth }), 'control');
        assert.equal(a.json?.active, true, `control: ${a.text}`);
        return;
      }
      const req = formReq(mtls('/token/introspection'), [['token', c.token], ...(c.hint !== undefined ? [['token_type_hint', c.hint] as [string, string]] : []), ...c.extra], c.raw,
        { ...c.hdrs, 'content-type': c.ct, authorization: c.auth });
      track(...secretsIn(req));
      const a = await send(req, 'POST /token/introspection');
      assertSafe(`POST /token/introspection ${req.body?.slice(0, 200)}`, a, tokenFormat(req));
      if (a.status === 200) assert.deepEqual(a.json, { active: false });
    }), fcParams(RUNS.introspection));
  });

  test(`revocation: ${RUNS.revocation} cases`, async () => {
    const cases = fc.record({
      auth: fc.oneof(fc.constant(basicAuth(SERVICE.client_id, SERVICE.client_secret)), fc.constant(basicAuth(APP.client_id, APP.client_secret)), hostileAuthorization),
      token: fc.oneof(hostileString, forgedJwt(material, realisticClaims())),
      hint: fc.option(fc.oneof(fc.constantFrom('access_token', 'refresh_token'), hostileString), { nil: undefined }),
      raw: rawFormTail, extra: extraPairs, ct: formContentType, hdrs: extraHeaders,
    });
    await fc.assert(fc.asyncProperty(cases, async (c) => {
      count('revocation');
      const req = formReq(mtls('/token/revocation'), [['token', c.token], ...(c.hint !== undefined ? [['token_type_hint', c.hint] as [string, string]] : []), ...c.extra], c.raw,
        { ...c.hdrs, 'content-type': c.ct, authorization: c.auth });
      track(...secretsIn(req));
      const a = await send(req, 'POST /token/revocation');
      assertSafe(`POST /token/revocation ${req.body?.slice(0, 200)}`, a, tokenFormat(req), { emptyOk: a.status === 200 });
    }), fcParams(RUNS.revocation));
    // The service's own token survived every revocation attempt by others' garbage.
    const still = await send(formReq(mtls('/token/introspection'), [['token', serviceToken]], '', {
      'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret),
    }), 'introspection after revocation fuzz');
    assert.equal(still.json?.active, true);
  });

  const REG_KEYS = [
    'client_name', 'redirect_uris', 'grant_types', 'response_types', 'token_endpoint_auth_method', 'scope', 'resource_scope', 'jwks', 'jwks_uri',
    'application_type', 'client_id', 'client_secret', 'post_logout_redirect_uris', 'tls_client_auth_subject_dn', 'contacts', 'logo_uri',
    'sector_identifier_uri', 'request_uris', 'software_statement', 'break_glass', 'tls_client_certificate_bound_access_tokens', 'id_token_signed_response_alg',
  ];
  const METADATA_CONSTANTS: unknown[] = [['client_credentials'], ['authorization_code'], [TOKEN_EXCHANGE_GRANT], [], ['code'], 'none', 'private_key_jwt', 'tls_client_auth',
      'client_secret_basic', ['https://app.test/callback'], ['https://evil.example/cb'], 'system/Patient.rs', 'admin:write', 'system/*.cruds', 'CN=test-client',
      { keys: [{ kty: 'oct', k: 'AAAA' }] }, { keys: [{ kty: 'EC', crv: 'P-256', x: '', y: '' }] }, 'native', 'web', true, false, null, 0, -1, 1e308];
  for (const c of METADATA_CONSTANTS) if (typeof c === 'string') NOT_SECRETS.add(c);
  const metadataValue = fc.oneof(
    hostileString,
    fc.array(hostileString, { maxLength: 3 }),
    fc.jsonValue({ maxDepth: 3 }),
    fc.constantFrom(...METADATA_CONSTANTS),
  );
  const metadata = fc.dictionary(fc.oneof({ weight: 5, arbitrary: fc.constantFrom(...REG_KEYS) }, { weight: 1, arbitrary: hostileString }), metadataValue, { maxKeys: 6, noNullPrototype: true });
  const jsonBody = fc.oneof(
    { weight: 5, arbitrary: metadata.map((m) => JSON.stringify(m)) },
    { weight: 1, arbitrary: fc.jsonValue({ maxDepth: 4 }).map((v) => JSON.stringify(v)) },
    { weight: 1, arbitrary: hostileString },
    {
      weight: 1,
      arbitrary: fc.constantFrom('{"__proto__":{"admin":true},"client_name":"x"}', '{"constructor":{"prototype":{"x":1}}}', '{', '[]', 'null', '"x"', '1',
        '{"client_name":"a","client_name":"b"}', '{"redirect_uris":"https://app.test/callback"}', '\ufeff{}', '{"a":1}garbage'),
    },
  );

  test(`dynamic registration: ${RUNS.registration} cases (no token, garbage tokens, a fresh initial access token)`, async () => {
    const cases = fc.record({
      token: fc.oneof({ weight: 3, arbitrary: fc.constant('iat' as const) }, fc.constant(undefined), headerValue, forgedJwt(material, realisticClaims())),
      scheme: fc.constantFrom('Bearer', 'bearer', 'Basic', 'DPoP', ''),
      body: jsonBody, ct: jsonContentType, hdrs: extraHeaders,
      method: fc.oneof({ weight: 8, arbitrary: fc.constant('POST') }, { weight: 1, arbitrary: fc.constantFrom('PUT', 'GET', 'DELETE', 'PATCH') }),
      path: fc.oneof({ weight: 8, arbitrary: fc.constant('/reg') }, { weight: 1, arbitrary: hostileString.map((s) => `/reg/${pct(s)}`) }),
    });
    await fc.assert(fc.asyncProperty(cases, async (c) => {
      count('registration');
      const token = c.token === 'iat'
        ? (await createInitialAccessToken(ts.server.provider(), ts.server.audit)).initialAccessToken
        : c.token;
      const req: Req = {
        url: onIssuer(c.path), method: c.method, dispatcher: ts.dispatcher,
        body: c.method === 'GET' || c.method === 'DELETE' ? undefined : c.body,
        headers: { ...c.hdrs, 'content-type': c.ct, authorization: token === undefined ? undefined : `${c.scheme} ${token}`.trim() },
      };
      try { const parsed = JSON.parse(c.body) as Record<string, unknown>; if (parsed && typeof parsed === 'object') track(typeof parsed.client_secret === 'string' ? parsed.client_secret : undefined); } catch { /* not JSON */ }
      const a = await send(req, `${c.method} ${c.path}`);
      assertSafe(`${c.method} ${c.path} ${c.body.slice(0, 200)}`, a, 'json-or-html', { emptyOk: a.status === 204 });
      if (a.status === 201) {
        count('registration accepted');
        assert.equal(typeof a.json?.client_id, 'string');
      }
    }), fcParams(RUNS.registration));
  });

  test(`admin API: ${RUNS.admin} cases (clients and users: create, read, list, update, actions)`, async () => {
    const userBody = fc.dictionary(
      fc.oneof({ weight: 5, arbitrary: fc.constantFrom('username', 'password', 'display_name', 'fhir_user', 'roles') }, { weight: 1, arbitrary: hostileString }),
      metadataValue, { maxKeys: 5, noNullPrototype: true },
    ).map((m) => ({ username: `fz${Object.keys(m).length}`, password: undefined as unknown, ...m }));
    const cases = fc.record({
      op: fc.constantFrom('create-client', 'create-user', 'update-client', 'get-client', 'list-clients', 'action', 'patch-user', 'list-users'),
      id: fc.oneof(fc.constantFrom('test-app', OPS, "' OR 1=1 --"), hostileString),
      body: jsonBody,
      user: userBody,
      auth: fc.oneof({ weight: 8, arbitrary: fc.constant(`Bearer ${adminToken}`) }, { weight: 1, arbitrary: hostileAuthorization },
        { weight: 1, arbitrary: forgedJwt(material, { ...realisticClaims(), aud: ADMIN_RESOURCE, client_id: OPS, scope: 'admin:read admin:write' }).map((t) => `Bearer ${t}`) }),
      ct: jsonContentType, hdrs: extraHeaders,
      ifMatch: fc.option(headerValue, { nil: undefined }),
      idempotencyKey: fc.option(headerValue, { nil: undefined }),
      search: fc.option(hostileString, { nil: undefined }),
      limit: fc.option(fc.oneof(hostileString, fc.integer().map(String)), { nil: undefined }),
      action: fc.constantFrom('disable', 'enable', 'secret', 'unlock', 'passkeys/reset', 'break-glass/revoke'),
    });
    await fc.assert(fc.asyncProperty(cases, async (c) => {
      count(`admin ${c.op}`);
      const id = pct(c.id);
      const query = new URLSearchParams();
      if (c.search !== undefined) query.set('search', c.search);
      if (c.limit !== undefined) query.set('limit', c.limit);
      let method = 'GET';
      let path = '/admin/api/clients';
      let body: string | undefined;
      switch (c.op) {
        case 'create-client': method = 'POST'; body = c.body; break;
        case 'create-user': {
          method = 'POST'; path = '/admin/api/users';
          body = JSON.stringify(c.user);
          track(typeof c.user.password === 'string' ? c.user.password : undefined);
          break;
        }
        case 'update-client': method = 'PUT'; path = `/admin/api/clients/${id}`; body = c.body; break;
        case 'get-client': path = `/admin/api/clients/${id}`; break;
        case 'list-clients': path = `/admin/api/clients?${query}`; break;
        case 'list-users': path = `/admin/api/users?${query}`; break;
        case 'patch-user': method = 'PATCH'; path = `/admin/api/users/${id}`; body = c.body; break;
        case 'action': method = 'POST'; path = `/admin/api/${c.action.includes('/') || c.action === 'unlock' ? 'users' : 'clients'}/${id}/${c.action}`; break;
      }
      const a = await send({
        url: mtls(path), method, body, dispatcher: opsAgent,
        headers: {
          ...c.hdrs, accept: 'application/json', authorization: c.auth, ...(body !== undefined ? { 'content-type': c.ct } : {}),
          ...(c.ifMatch !== undefined ? { 'if-match': c.ifMatch } : {}), ...(c.idempotencyKey !== undefined ? { 'idempotency-key': c.idempotencyKey } : {}),
        },
      }, `${method} ${path}`);
      assertSafe(`${method} ${path} ${body?.slice(0, 200)}`, a, 'json');
      if (a.status === 201) count('admin created');
    }), fcParams(RUNS.admin));
  });

  test(`login form: ${RUNS.login} batches of concurrent attempts`, async () => {
    const attempt = fc.record({
      username: fc.oneof(
        { weight: 3, arbitrary: fc.constantFrom(TARGET.username, TARGET.username.toUpperCase(), ` ${TARGET.username} `, 'fuzz.tаrget', 'ｆｕｚｚ.ｔａｒｇｅｔ', 'fuzz.target\u200b') },
        { weight: 4, arbitrary: hostileString },
      ),
      password: fc.oneof({ weight: 4, arbitrary: hostileString }, { weight: 1, arbitrary: fc.string({ minLength: 12, maxLength: 80 }) }),
      raw: rawFormTail,
      ct: fc.oneof({ weight: 8, arbitrary: fc.constant('application/x-www-form-urlencoded') }, { weight: 1, arbitrary: formContentType }),
      accept: fc.constantFrom('text/html', 'application/json', '*/*', 'text/html;q=0.1, application/json'),
      extra: extraPairs, hdrs: extraHeaders,
    }).filter((c) => c.password !== TARGET.password);
    await fc.assert(fc.asyncProperty(fc.array(attempt, { minLength: 1, maxLength: 10 }), async (batch) => {
      count('login', batch.length);
      await Promise.all(batch.map(async (c) => {
        track(c.password);
        const req = formReq(interactionUrl, [['username', c.username], ['password', c.password], ...c.extra], c.raw, {
          ...c.hdrs, cookie: interactionBrowser.jar.header(), accept: c.accept, 'content-type': c.ct,
        });
        const a = await send(req, 'POST /interaction/:uid/login');
        assertSafe(`login ${req.body?.slice(0, 200)}`, a, 'json-or-html');
        assert.ok(a.status >= 400, `never signed in: ${a.status} ${a.headers.get('location')}`);
        assert.equal(a.headers.get('location'), null, 'no redirect');
        if (a.status === 401 || a.status === 429) assert.match(a.text, /Sign-in failed/);
      }));
    }), fcParams(RUNS.login));
  });
});

// ---- targeted cases -----------------------------------------------------------------------------------------

describe('forged JWTs: alg none and HS256 keyed with the server\'s public key', () => {
  const forgeries = () => {
    const claims = realisticClaims();
    const header = { typ: 'at+jwt', kid: material.kid };
    return {
      'alg none': forgeJwt({ ...header, alg: 'none' }, claims, 'none', material),
      'HS256 with the public key (PEM)': forgeJwt({ ...header, alg: 'HS256' }, claims, 'public-pem', material),
      'HS256 with the public key (JWK JSON)': forgeJwt({ ...header, alg: 'HS256' }, claims, 'public-jwk', material),
    };
  };

  test('as subject_token: 400 invalid_grant (subject token is not active), audited, nothing issued', async () => {
    for (const [name, jwt] of Object.entries(forgeries())) {
      const a = await send(formReq(mtls('/token'), [
        ['grant_type', TOKEN_EXCHANGE_GRANT], ['client_id', ACTOR], ['subject_token', jwt], ['subject_token_type', TOKEN_TYPE_ACCESS_TOKEN],
        ['resource', FHIR], ['scope', LABS],
      ], '', { 'content-type': 'application/x-www-form-urlencoded' }, actorAgent), name);
      assert.equal(a.status, 400, `${name}: ${a.text}`);
      assert.equal(a.json?.error, 'invalid_grant', name);
      assert.equal(a.json?.error_description, 'subject token is not active', name);
      assert.equal(a.json?.access_token, undefined);
      const { rows } = await ts.testDb.db.query<{ rule: string }>("SELECT rule FROM audit_events WHERE type = 'exchange.refused' ORDER BY seq DESC LIMIT 1");
      assert.equal(rows[0]?.rule, 'subject_token_inactive', name);
    }
  });

  test('as the token to introspect: 200 {"active": false}', async () => {
    for (const [name, jwt] of Object.entries(forgeries())) {
      const a = await send(formReq(mtls('/token/introspection'), [['token', jwt]], '', {
        'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret),
      }), name);
      assert.equal(a.status, 200, name);
      assert.deepEqual(a.json, { active: false }, name);
    }
  });

  test('as a Bearer token at userinfo and the admin API: 401 invalid_token', async () => {
    for (const [name, jwt] of Object.entries(forgeries())) {
      const me = await send({ url: mtls('/me'), method: 'GET', headers: { authorization: `Bearer ${jwt}` }, dispatcher: ts.dispatcher }, name);
      assert.equal(me.status, 401, `${name}: ${me.text}`);
      assert.equal(me.json?.error, 'invalid_token', name);
      const admin = await send({ url: mtls('/admin/api/clients'), method: 'GET', headers: { authorization: `Bearer ${jwt}`, accept: 'application/json' }, dispatcher: opsAgent }, name);
      assert.equal(admin.status, 401, `${name}: ${admin.text}`);
      assert.equal(admin.json?.error, 'invalid_token', name);
    }
  });

  test('as a client assertion (private_key_jwt client): 401 invalid_client; the real signature works', async () => {
    const now = Math.floor(Date.now() / 1000);
    const claims = { iss: JWT_CLIENT, sub: JWT_CLIENT, aud: ts.issuer, iat: now, exp: now + 60 };
    const assertions: Record<string, string> = {
      'alg none': forgeJwt({ alg: 'none' }, { ...claims, jti: 'none-1' }, 'none', material),
      'alg none (with a kid)': forgeJwt({ alg: 'none', kid: material.kid }, { ...claims, jti: 'none-2' }, 'none', material),
      'HS256 with the server\'s public key (PEM)': forgeJwt({ alg: 'HS256' }, { ...claims, jti: 'hs-1' }, 'public-pem', material),
      'HS256 with the server\'s public key (JWK JSON)': forgeJwt({ alg: 'HS256' }, { ...claims, jti: 'hs-2' }, 'public-jwk', material),
    };
    const params = (assertion: string): Pairs => [
      ['grant_type', 'client_credentials'], ['resource', FHIR], ['scope', 'system/Patient.rs'], ['client_id', JWT_CLIENT],
      ['client_assertion_type', ASSERTION_TYPE], ['client_assertion', assertion],
    ];
    for (const [name, assertion] of Object.entries(assertions)) {
      const a = await send(formReq(mtls('/token'), params(assertion), '', { 'content-type': 'application/x-www-form-urlencoded' }), name);
      assert.equal(a.status, 401, `${name}: ${a.text}`);
      assert.equal(a.json?.error, 'invalid_client', name);
      assert.equal(a.json?.access_token, undefined);
    }
    // Control: the same request with an assertion signed by the client's own key gets a token.
    const good = await send(formReq(mtls('/token'), params(await clientAssertion('ES256', jwtClientKey)), '', { 'content-type': 'application/x-www-form-urlencoded' }), 'control');
    assert.equal(good.status, 200, good.text);
    assert.equal(typeof good.json?.access_token, 'string');
  });
});

describe('oversized bodies: 413 (or 400) invalid_request, never a crash', () => {
  const big = (n: number) => 'a'.repeat(n);
  const form = { 'content-type': 'application/x-www-form-urlencoded' };

  test('token, introspection, revocation (> 56 KiB form)', async () => {
    for (const path of ['/token', '/token/introspection', '/token/revocation']) {
      const a = await send({
        url: mtls(path), method: 'POST', dispatcher: ts.dispatcher, headers: { ...form, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) },
        body: `grant_type=client_credentials&token=x&padding=${big(57 * 1024)}`,
      }, path);
      assert.ok([400, 413].includes(a.status), `${path}: ${a.status} ${a.text.slice(0, 200)}`);
      assert.equal(a.json?.error, 'invalid_request', path);
    }
  });

  test('registration and the admin API (> 64 KiB JSON)', async () => {
    const iat = (await createInitialAccessToken(ts.server.provider(), ts.server.audit)).initialAccessToken;
    const reg = await send({
      url: onIssuer('/reg'), method: 'POST', dispatcher: ts.dispatcher, headers: { 'content-type': 'application/json', authorization: `Bearer ${iat}` },
      body: JSON.stringify({ client_name: big(65 * 1024), grant_types: ['client_credentials'], response_types: [], redirect_uris: [] }),
    }, '/reg');
    assert.ok([400, 413].includes(reg.status), `/reg: ${reg.status} ${reg.text.slice(0, 200)}`);
    assert.match(String(reg.json?.error), /^invalid_(request|client_metadata)$/);
    const admin = await send({
      url: mtls('/admin/api/clients'), method: 'POST', dispatcher: opsAgent,
      headers: { 'content-type': 'application/json', accept: 'application/json', authorization: `Bearer ${adminToken}` },
      body: JSON.stringify({ client_name: big(65 * 1024) }),
    }, '/admin/api/clients');
    assert.equal(admin.status, 413, admin.text.slice(0, 200));
    assert.equal(admin.json?.error, 'invalid_request');
  });

  test('login form (> 16 KiB)', async () => {
    const a = await send(formReq(interactionUrl, [['username', TARGET.username], ['password', big(17 * 1024)]], '', {
      'content-type': 'application/x-www-form-urlencoded', cookie: interactionBrowser.jar.header(), accept: 'text/html',
    }), 'login');
    assert.equal(a.status, 413, a.text.slice(0, 200));
    assert.match(a.type, /^text\/html/);
    assert.match(a.text, /invalid_request/);
  });
});

describe('deeply nested JSON: 400, no crash', () => {
  // As deep as the body limits (56 KiB at /reg, 64 KiB at the admin API) let through.
  const nestedObject = `${'{"a":'.repeat(9_000)}1${'}'.repeat(9_000)}`;
  const nestedArray = `${'['.repeat(25_000)}${']'.repeat(25_000)}`;
  const inField = `{"client_name":"x","grant_types":["client_credentials"],"response_types":[],"redirect_uris":[],"jwks":${nestedObject}}`;
  const bodies = { 'nested object': nestedObject, 'nested array': nestedArray, 'nested value in a field': inField };

  async function healthy() {
    const a = await send({ url: onIssuer('/healthz'), method: 'GET', headers: {}, dispatcher: ts.dispatcher }, 'healthz');
    assert.equal(a.status, 200);
  }

  test('at /reg (with an initial access token)', async () => {
    for (const [name, body] of Object.entries(bodies)) {
      const iat = (await createInitialAccessToken(ts.server.provider(), ts.server.audit)).initialAccessToken;
      const a = await send({ url: onIssuer('/reg'), method: 'POST', dispatcher: ts.dispatcher, headers: { 'content-type': 'application/json', authorization: `Bearer ${iat}` }, body }, name);
      assertSafe(`/reg ${name}`, a, 'json');
      assert.equal(a.status, 400, `${name}: ${a.text.slice(0, 300)}`);
      assert.match(String(a.json?.error), /^invalid_(request|client_metadata|redirect_uri)$/, name);
      await healthy();
    }
  });

  for (const path of ['/admin/api/clients', '/admin/api/users']) {
    for (const [name, body] of Object.entries(bodies)) {
      for (const withKey of [false, true]) {
        // Found by this test (F1): with an Idempotency-Key, hashing a ~5000-level body overflowed the stack
        // (500). readJson now refuses bodies nested deeper than MAX_JSON_DEPTH before anything else.
        test(`at ${path}: ${name}${withKey ? ', with an Idempotency-Key' : ''}`, async () => {
          const idempotencyKey = withKey ? `nested-${randomBytes(6).toString('hex')}` : undefined;
          const a = await send({
            url: mtls(path), method: 'POST', dispatcher: opsAgent, body,
            headers: { 'content-type': 'application/json', accept: 'application/json', authorization: `Bearer ${adminToken}`, ...(idempotencyKey ? { 'idempotency-key': idempotencyKey } : {}) },
          }, `${path} ${name}`);
          assertSafe(`${path} ${name} (Idempotency-Key: ${idempotencyKey ? 'yes' : 'no'})`, a, 'json');
          assert.equal(a.status, 400, `${path} ${name}: ${a.text.slice(0, 300)}`);
          assert.match(String(a.json?.error), /^invalid_(request|client_metadata|redirect_uri)$/, name);
          await healthy();
        });
      }
    }
  }
});

describe('repeated parameters: 400 invalid_request', () => {
  const serviceAuth = () => basicAuth(SERVICE.client_id, SERVICE.client_secret);
  const form = { 'content-type': 'application/x-www-form-urlencoded' };
  const cases: Array<[string, string, string, () => Record<string, string>]> = [
    ['/token', 'grant_type twice', 'grant_type=client_credentials&grant_type=client_credentials&resource=https%3A%2F%2Ffhir.test%2Fr4&scope=system%2FPatient.rs', () => ({ authorization: serviceAuth() })],
    // (resource may repeat, RFC 8707 §2: the same value twice is one audience, and answered as such.)
    ['/token', 'scope twice', 'grant_type=client_credentials&resource=https%3A%2F%2Ffhir.test%2Fr4&scope=system%2FPatient.rs&scope=system%2FPatient.rs', () => ({ authorization: serviceAuth() })],
    ['/token', 'client_secret twice', `grant_type=client_credentials&resource=https%3A%2F%2Ffhir.test%2Fr4&client_id=${SERVICE.client_id}&client_secret=${SERVICE.client_secret}&client_secret=${SERVICE.client_secret}`, () => ({})],
    ['/token', 'subject_token twice', `grant_type=${encodeURIComponent(TOKEN_EXCHANGE_GRANT)}&client_id=${ACTOR}&subject_token=a&subject_token=b&subject_token_type=${encodeURIComponent(TOKEN_TYPE_ACCESS_TOKEN)}&resource=https%3A%2F%2Ffhir.test%2Fr4&scope=${encodeURIComponent(LABS)}`, () => ({})],
    ['/token/introspection', 'token twice', 'token=a&token=b', () => ({ authorization: serviceAuth() })],
    ['/token/revocation', 'token twice', 'token=a&token=b', () => ({ authorization: serviceAuth() })],
  ];
  for (const [path, name, body, headers] of cases) {
    test(`${path}: ${name}`, async () => {
      const dispatcher = name.startsWith('subject_token') ? actorAgent : ts.dispatcher;
      const a = await send({ url: mtls(path), method: 'POST', body, dispatcher, headers: { ...form, ...headers() } }, `${path} ${name}`);
      assert.equal(a.status, 400, `${path} ${name}: ${a.text}`);
      assert.equal(a.json?.error, 'invalid_request', `${path} ${name}: ${a.text}`);
      assert.equal(a.json?.access_token, undefined);
    });
  }

  test('login form: username twice, password twice', async () => {
    for (const body of [`username=${TARGET.username}&username=${NURSE.username}&password=x`, `username=${NURSE.username}&password=${NURSE.password}&password=${NURSE.password}`]) {
      const a = await send({ url: interactionUrl, method: 'POST', body, dispatcher: ts.dispatcher, headers: { ...form, cookie: interactionBrowser.jar.header(), accept: 'application/json' } }, body);
      assert.equal(a.status, 400, a.text);
      assert.equal(a.json?.error, 'invalid_request');
      assert.match(String(a.json?.error_description), /must appear once/);
    }
  });

  test('/auth: redirect_uri twice is refused without a redirect', async () => {
    const url = authUrl();
    url.searchParams.append('redirect_uri', 'https://evil.example/cb');
    const a = await send({ url: url.href, method: 'GET', headers: { accept: 'text/html' }, dispatcher: ts.dispatcher }, '/auth');
    assert.equal(a.status, 400, a.text.slice(0, 300));
    assert.equal(a.headers.get('location'), null);
    assert.match(a.text, /invalid_request/);
  });
});

describe('login: confusable usernames are other (unknown) usernames', () => {
  async function attempt(username: string, password: string) {
    const browser = new Browser(ts);
    const page = await browser.follow(await browser.get(authUrl()));
    const action = /action="(\/interaction\/[^"]+\/login)"/.exec(page.body)?.[1];
    assert.ok(action);
    return browser.post(onIssuer(action), { username, password });
  }

  const confusables: Array<[string, string]> = [
    ['Cyrillic а (U+0430) for a', 'nurse.kаte'],
    ['Cyrillic е (U+0435) for e', 'nurse.katе'],
    ['fullwidth letters', 'ｎｕｒｓｅ.ｋａｔｅ'],
    ['fullwidth full stop', 'nurse．kate'],
    ['zero-width space inside', 'nurse.\u200bkate'],
    ['combining acute accent', 'nurse.kate\u0301'],
    ['decomposed á for a', 'nurse.ka\u0301te'],
  ];
  for (const [name, username] of confusables) {
    test(`${name}: the right password is a wrong login (401, the generic message)`, async () => {
      const step = await attempt(username, NURSE.password);
      assert.equal(step.status, 401, `${name}: ${step.status} ${step.location}`);
      assert.equal(step.location, null);
      assert.match(step.body, /Sign-in failed/);
      const { rows } = await ts.testDb.db.query<{ type: string; actor_user: string | null }>(
        "SELECT type, actor_user FROM audit_events WHERE type LIKE 'login.%' ORDER BY seq DESC LIMIT 1",
      );
      assert.equal(rows[0]?.type, 'login.failed');
      assert.equal(rows[0]?.actor_user, null, 'no account named');
    });
  }

  test('the real username (any case, surrounding spaces) signs in as that account', async () => {
    const step = await attempt(' NURSE.Kate ', NURSE.password);
    assert.equal(step.status, 303, step.body.slice(0, 200));
    const { rows } = await ts.testDb.db.query<{ actor_user: string }>("SELECT actor_user FROM audit_events WHERE type = 'login.success' ORDER BY seq DESC LIMIT 1");
    assert.equal(rows[0]?.actor_user, (await findUserByUsername(ts.testDb.db, NURSE.username))!.id);
  });

  test('Kelvin sign K (U+212A) lowercases to k: it reaches nurse.kate itself, no other account', async () => {
    // String.prototype.toLowerCase maps U+212A to "k", so this spelling is the same account (as
    // "NURSE.KATE" is); with the right password it signs in as nurse.kate, with a wrong one it counts
    // against nurse.kate's own lock. It can never name a different account.
    const step = await attempt('nurse.\u212aate', NURSE.password);
    assert.equal(step.status, 303, step.body.slice(0, 200));
    const { rows } = await ts.testDb.db.query<{ actor_user: string }>("SELECT actor_user FROM audit_events WHERE type = 'login.success' ORDER BY seq DESC LIMIT 1");
    assert.equal(rows[0]?.actor_user, (await findUserByUsername(ts.testDb.db, NURSE.username))!.id);
  });
});

describe('SQL metacharacters in every field', () => {
  async function tableCounts() {
    const { rows } = await ts.testDb.db.query<{ users: string; clients: string }>('SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM clients) AS clients');
    return rows[0]!;
  }

  test('token, introspection, revocation, registration, admin API and login: exact refusals, tables intact', async () => {
    const before = await tableCounts();
    let registeredBySql = 0;
    const form = { 'content-type': 'application/x-www-form-urlencoded' };
    for (const sql of SQL_INJECTIONS) {
      // Client authentication: unknown client / wrong secret.
      let a = await send(formReq(mtls('/token'), [['grant_type', 'client_credentials'], ['resource', FHIR]], '', { ...form, authorization: basicRaw(encodeURIComponent(sql), 'x') }), 'client_id');
      assert.equal(a.status, 401, a.text); assert.equal(a.json?.error, 'invalid_client');
      a = await send(formReq(mtls('/token'), [['grant_type', 'client_credentials'], ['resource', FHIR]], '', { ...form, authorization: basicRaw(SERVICE.client_id, encodeURIComponent(sql)) }), 'secret');
      assert.equal(a.status, 401, a.text); assert.equal(a.json?.error, 'invalid_client');
      // Grant fields.
      a = await send(formReq(mtls('/token'), [['grant_type', 'client_credentials'], ['resource', sql], ['scope', 'system/Patient.rs']], '', { ...form, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) }), 'resource');
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'invalid_target');
      a = await send(formReq(mtls('/token'), [['grant_type', 'client_credentials'], ['resource', FHIR], ['scope', sql]], '', { ...form, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) }), 'scope');
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'invalid_scope');
      a = await send(formReq(mtls('/token'), [['grant_type', 'authorization_code'], ['code', sql], ['redirect_uri', APP.redirect_uri], ['code_verifier', 'x'.repeat(43)]], '', { ...form, authorization: basicAuth(APP.client_id, APP.client_secret) }), 'code');
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'invalid_grant');
      a = await send(formReq(mtls('/token'), [['grant_type', 'refresh_token'], ['refresh_token', sql]], '', { ...form, authorization: basicAuth(APP.client_id, APP.client_secret) }), 'refresh_token');
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'invalid_grant');
      a = await send(formReq(mtls('/token'), [['grant_type', TOKEN_EXCHANGE_GRANT], ['client_id', ACTOR], ['subject_token', sql], ['subject_token_type', TOKEN_TYPE_ACCESS_TOKEN], ['resource', FHIR], ['scope', LABS]], '', form, actorAgent), 'subject_token');
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'invalid_grant');
      a = await send(formReq(mtls('/token'), [['grant_type', sql]], '', { ...form, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) }), 'grant_type');
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'unsupported_grant_type');
      // Introspection and revocation.
      a = await send(formReq(mtls('/token/introspection'), [['token', sql], ['token_type_hint', sql]], '', { ...form, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) }), 'introspection');
      assert.equal(a.status, 200, a.text); assert.deepEqual(a.json, { active: false });
      a = await send(formReq(mtls('/token/revocation'), [['token', sql]], '', { ...form, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) }), 'revocation');
      assert.equal(a.status, 200, a.text);
      // Registration: as the initial access token, and as metadata (a name may hold any text; a client_id may not).
      a = await send({ url: onIssuer('/reg'), method: 'POST', dispatcher: ts.dispatcher, headers: { 'content-type': 'application/json', authorization: `Bearer ${sql}` }, body: '{}' }, 'reg token');
      // A token with a space in it is not a Bearer header value at all (RFC 6750 §2.1 b64token).
      assert.deepEqual([a.status, a.json?.error], /\s/.test(sql) ? [400, 'invalid_request'] : [401, 'invalid_token'], a.text);
      const iat = (await createInitialAccessToken(ts.server.provider(), ts.server.audit)).initialAccessToken;
      a = await send({
        url: onIssuer('/reg'), method: 'POST', dispatcher: ts.dispatcher, headers: { 'content-type': 'application/json', authorization: `Bearer ${iat}` },
        body: JSON.stringify({ client_name: sql, grant_types: ['client_credentials'], response_types: [], redirect_uris: [], resource_scope: 'system/Patient.rs' }),
      }, 'reg metadata');
      // A name may hold any text: stored and answered verbatim (parameterised, not interpreted).
      assert.equal(a.status, 201, a.text); assert.equal(a.json?.client_name, sql); assert.equal(a.json?.access_token, undefined);
      const { rows: stored } = await ts.testDb.db.query<{ metadata: { client_name?: string } }>('SELECT metadata FROM clients WHERE client_id = $1', [a.json?.client_id]);
      assert.equal(stored[0]?.metadata.client_name, sql);
      registeredBySql++;
      a = await send({
        url: onIssuer('/reg'), method: 'POST', dispatcher: ts.dispatcher, headers: { 'content-type': 'application/json', authorization: `Bearer ${(await createInitialAccessToken(ts.server.provider(), ts.server.audit)).initialAccessToken}` },
        body: JSON.stringify({ client_id: sql, grant_types: ['client_credentials'], response_types: [], redirect_uris: [] }),
      }, 'reg client_id');
      // client_id is the server's to choose at registration (RFC 7591 §3.2.1): a submitted one is ignored.
      assert.ok(a.status === 201 || a.status === 400, a.text); assert.notEqual(a.json?.client_id, sql);
      if (a.status === 201) registeredBySql++;
      // Admin API.
      const admin = (method: string, path: string, body?: unknown) => send({
        url: mtls(path), method, dispatcher: opsAgent, body: body === undefined ? undefined : JSON.stringify(body),
        headers: { accept: 'application/json', authorization: `Bearer ${adminToken}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      }, `${method} ${path}`);
      a = await admin('GET', `/admin/api/clients?search=${encodeURIComponent(sql)}`);
      // Only what matches the text itself (the client just registered with that name), not every client.
      assert.equal(a.status, 200, a.text);
      const found = a.json?.clients as Array<{ client_id: string; client_name?: string }>;
      assert.ok(found.length >= 1 && found.every((c) => `${c.client_id} ${c.client_name ?? ''}`.toLowerCase().includes(sql.toLowerCase())), a.text.slice(0, 300));
      a = await admin('GET', `/admin/api/clients/${encodeURIComponent(sql)}`);
      assert.equal(a.status, 404, a.text); assert.equal(a.json?.error, 'not_found');
      a = await admin('POST', '/admin/api/clients', { client_id: sql, grant_types: ['client_credentials'], response_types: [], redirect_uris: [], token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: 'CN=x' });
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'invalid_client_metadata');
      a = await admin('POST', '/admin/api/users', { username: sql, password: 'a-long-enough-password-123' });
      assert.equal(a.status, 400, a.text); assert.equal(a.json?.error, 'invalid_request'); assert.equal(a.json?.field, 'username');
      a = await admin('GET', `/admin/api/users?search=${encodeURIComponent(sql)}`);
      assert.ok(a.status === 200 || a.status === 400, a.text);
      // Login: username and password.
      for (const [username, password] of [[sql, TARGET.password], [NURSE.username, sql]] as const) {
        a = await send(formReq(interactionUrl, [['username', username], ['password', password]], '', { ...form, cookie: interactionBrowser.jar.header(), accept: 'text/html' }), 'login');
        assert.ok(a.status === 401 || a.status === 429, `${a.status}`); assert.match(a.text, /Sign-in failed/);
      }
    }
    const afterwards = await tableCounts();
    assert.equal(Number(afterwards.users), Number(before.users), 'no user added or dropped');
    assert.equal(Number(afterwards.clients), Number(before.clients) + registeredBySql, 'no client dropped (only the registrations above added)');
  });
});

describe('header injection and open redirects', () => {
  async function get(url: string | URL, headers: Record<string, string> = { accept: 'text/html' }, dispatcher = ts.dispatcher) {
    return send({ url: String(url), method: 'GET', headers, dispatcher }, String(url));
  }
  const ownOrigin = () => new URL(ts.issuer).origin;
  function assertNoForeignRedirect(a: Answer, label: string) {
    const location = a.headers.get('location');
    if (location === null) return;
    const target = new URL(location, ts.issuer);
    assert.ok(target.origin === ownOrigin() || target.origin === new URL(APP.redirect_uri).origin, `${label}: redirected to ${location}`);
    if (target.origin === new URL(APP.redirect_uri).origin) assert.equal(`${target.origin}${target.pathname}`, APP.redirect_uri, label);
  }

  test('CR/LF in redirect_uri at /auth: refused (400 page), no header set', async () => {
    for (const injected of ['https://app.test/callback\r\nSet-Cookie: injected=1', 'https://app.test/callback%0d%0aSet-Cookie:%20injected=1', 'https://app.test/callback\nLocation: https://evil.example/']) {
      const a = await get(authUrl({ redirect_uri: injected }));
      assertSafe(injected, a, 'html');
      assert.equal(a.status, 400, a.text.slice(0, 300));
      assert.equal(a.headers.get('location'), null);
      assert.ok(!a.headers.getSetCookie().some((c) => /injected/.test(c)));
      assert.match(a.text, /invalid_redirect_uri|redirect_uri/);
    }
  });

  test('CR/LF in state with the registered redirect_uri: the error redirect carries it encoded, no header injected', async () => {
    const a = await get(authUrl({ state: 'x\r\nSet-Cookie: injected=1', code_challenge_method: 'plain' }));
    assertSafe('state', a, 'json-or-html', { emptyOk: true });
    assert.ok([302, 303].includes(a.status), `${a.status}`);
    const location = new URL(a.headers.get('location')!);
    assert.equal(`${location.origin}${location.pathname}`, APP.redirect_uri);
    assert.equal(location.searchParams.get('state'), 'x\r\nSet-Cookie: injected=1');
    assert.equal(location.searchParams.get('error'), 'invalid_request');
  });

  const FOREIGN = [
    'https://evil.example/callback', '//evil.example/callback', 'https://app.test.evil.example/callback', 'https://app.test@evil.example/callback',
    'https://evil.example@app.test/callback', 'https://evil.example\\@app.test/callback', 'https://app.test%2f@evil.example/callback',
    'https://app.test/callback/../../evil', 'https://app.test/callback?next=https://evil.example', 'https://app.test/callback#@evil.example',
    'http://app.test/callback', 'https://APP.TEST/callback', 'https://app.test:443/callback', 'https://app.test/callback/', 'https:/\\evil.example',
    'javascript:alert(1)//https://app.test/callback', '/\\evil.example', 'https://app.test\u3002evil.example/callback',
  ];

  test('unregistered redirect_uri at /auth: 400 page, no redirect anywhere', async () => {
    for (const redirect of FOREIGN) {
      const a = await get(authUrl({ redirect_uri: redirect }));
      assertSafe(redirect, a, 'html');
      assert.equal(a.status, 400, `${redirect}: ${a.status} ${a.headers.get('location')}`);
      assert.equal(a.headers.get('location'), null, redirect);
      assert.match(a.text, /invalid_redirect_uri/, redirect);
    }
  });

  test('/account/login?return=: the sign-in starts on this server and ends on /account, never elsewhere', async () => {
    const browser = new Browser(ts);
    for (const [index, target] of [...FOREIGN, '/account/../admin', '/admin//evil.example', '/account?x=1', '/account/%2e%2e/x', '/ACCOUNT'].entries()) {
      const start = await browser.get(onIssuer(`/account/login?return=${encodeURIComponent(target)}`));
      assert.ok([302, 303].includes(start.status), `${target}: ${start.status}`);
      const first = new URL(start.location!, ts.issuer);
      assert.equal(first.origin, ownOrigin(), `${target}: the first redirect stays here (${start.location})`);
      assert.equal(first.pathname, '/auth');
      // Every hop (sign-in the first time, the callback) stays on this server and ends on /account.
      let step = start;
      const visited: string[] = [];
      for (let hops = 0; hops < 20; hops++) {
        if (step.status >= 300 && step.status < 400 && step.location) {
          const next = new URL(step.location, ts.issuer);
          assert.equal(next.origin, ownOrigin(), `${target}: redirected off the server to ${step.location}`);
          visited.push(next.pathname);
          step = await browser.get(next);
          continue;
        }
        const login = /action="(\/interaction\/[^"]+\/login)"/.exec(step.body)?.[1];
        if (step.status === 200 && login) {
          step = await browser.post(onIssuer(login), { username: CLINICIAN.username, password: CLINICIAN.password });
          continue;
        }
        break;
      }
      assert.ok(visited.includes('/account/callback') || visited.some((p) => p.startsWith('/account/')), `${target}: through the callback (${visited.join(' → ')})`);
      assert.equal(visited.at(-1), '/account', `${target}: ended on ${visited.at(-1)} (${visited.join(' → ')})`);
      assert.equal(step.status, 200, `${target}: the account page`);
    }
  });

  test('post_logout_redirect_uri at /session/end: 400, no redirect to a foreign origin (with and without a session)', async () => {
    const signedIn = new Browser(ts);
    await signedIn.authorize(authUrl({ prompt: 'consent' }), CLINICIAN.username, CLINICIAN.password).catch(() => undefined);
    for (const browser of [new Browser(ts), signedIn]) {
      for (const redirect of ['https://evil.example/', '//evil.example/', 'https://app.test.evil.example/', 'https://app.test@evil.example/', 'https://app.test/\r\nSet-Cookie: injected=1', 'https://app.test']) {
        for (const withClient of [true, false]) {
          const url = new URL(onIssuer('/session/end'));
          if (withClient) url.searchParams.set('client_id', APP.client_id);
          url.searchParams.set('post_logout_redirect_uri', redirect);
          const a = await send({ url: url.href, method: 'GET', headers: { cookie: browser.jar.header(), accept: 'text/html' }, dispatcher: ts.dispatcher }, `/session/end ${redirect}`);
          assertSafe(`/session/end ${redirect}`, a, 'html');
          assertNoForeignRedirect(a, redirect);
          if (withClient) {
            // Checked against the client's registered post_logout_redirect_uris.
            assert.equal(a.status, 400, `${redirect}: ${a.status} ${a.text.slice(0, 200)}`);
            assert.match(a.text, /post_logout_redirect_uri not registered/);
            continue;
          }
          // Without client_id (or id_token_hint) the parameter is ignored: the sign-out goes on here
          // (a session's confirmation page, or without one oidc-provider's self-submitting form to
          // /session/end/confirm), and ends on this server's "signed out" page.
          assert.equal(a.status, 200, `${redirect}: ${a.status} ${a.text.slice(0, 200)}`);
          const action = /<form[^>]*action="([^"]+)"/.exec(a.text)?.[1];
          assert.ok(action, `${redirect}: a sign-out form`);
          assert.equal(new URL(action, ts.issuer).origin, ownOrigin(), `${redirect}: the form posts here`);
          assert.equal(new URL(action, ts.issuer).pathname, '/session/end/confirm');
          if (browser !== signedIn) {
            const xsrf = /name="xsrf" value="([^"]+)"/.exec(a.text)?.[1] ?? '';
            const confirmed = await send({
              url: new URL(action, ts.issuer).href, method: 'POST', body: new URLSearchParams({ xsrf, logout: 'yes' }).toString(), dispatcher: ts.dispatcher,
              headers: { cookie: browser.jar.header(), accept: 'text/html', 'content-type': 'application/x-www-form-urlencoded' },
            }, 'confirm');
            assertSafe(`/session/end/confirm ${redirect}`, confirmed, 'html');
            assertNoForeignRedirect(confirmed, redirect);
            assert.ok(!confirmed.headers.get('location')?.includes('evil'), `${redirect}: ${confirmed.headers.get('location')}`);
          }
        }
      }
    }
  });
});

describe('afterwards', () => {
  test('no audit record (nor admin change record) holds a password or secret the fuzzer sent', async () => {
    assert.ok(sentSecrets.size > 0, 'the fuzzer sent passwords');
    const { rows } = await ts.testDb.db.query<{ t: string }>('SELECT row_to_json(a)::text AS t FROM audit_events a');
    const { rows: changes } = await ts.testDb.db.query<{ t: string }>('SELECT row_to_json(c)::text AS t FROM admin_changes c');
    // JSON text escapes some characters: compare with each secret as JSON would write it, too.
    const haystack = [...rows, ...changes].map((r) => r.t).join('\n');
    const leaked = [...sentSecrets].filter((s) => haystack.includes(s) || haystack.includes(JSON.stringify(s).slice(1, -1)));
    const where = leaked.slice(0, 3).map((s) => [...rows, ...changes].find((r) => r.t.includes(s) || r.t.includes(JSON.stringify(s).slice(1, -1)))?.t.slice(0, 600));
    assert.deepEqual(leaked, [], `${leaked.length} of ${sentSecrets.size} secrets found in ${rows.length} audit records: ${JSON.stringify(where)}`);
    console.log(`fuzz-endpoints: ${sentSecrets.size} distinct passwords/secrets checked against ${rows.length} audit and ${changes.length} change records`);
  });

  test('the server still answers', async () => {
    const a = await send({ url: onIssuer('/readyz'), method: 'GET', headers: {}, dispatcher: ts.dispatcher }, 'readyz');
    assert.equal(a.status, 200);
  });
});
