// RFC 7591 dynamic registration and RFC 7592 management against the real server over real TLS: initial
// access tokens made as the CLI makes them (single use, expiring, templates), registration access
// tokens (own client only, rotated), secrets shown once and stored as digests, every change audited.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { exportJWK, generateKeyPair } from 'jose';
import * as oidc from 'openid-client';

import { TOKEN_EXCHANGE_GRANT } from '../src/exchange/decision.ts';
import { createInitialAccessToken } from '../src/oidc/registration.ts';
import { relyingParty, signIn } from './support/relying-party.ts';
import { APP, basicAuth, FHIR, form, startTestServer, type TestServer } from './support/test-server.ts';

type Json = Record<string, unknown>;

let ts: TestServer;
/** Every secret and token value the tests saw: none may appear in the audit log. */
const secrets = new Set<string>();
/** Made at the start with a one-second life; used once it has expired. */
let expiring: { token: string; createdAt: number };

async function iat(template?: string, ttlSeconds?: number): Promise<string> {
  const created = await createInitialAccessToken(ts.server.provider(), ts.server.audit, { template, ttlSeconds });
  secrets.add(created.initialAccessToken);
  return created.initialAccessToken;
}

async function call(method: string, url: string, token: string | undefined, body?: unknown) {
  const response = await ts.fetch(url, {
    method,
    headers: { ...(token ? { authorization: `Bearer ${token}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await response.text();
  const json = (text ? JSON.parse(text) : {}) as Json;
  for (const key of ['client_secret', 'registration_access_token']) if (typeof json[key] === 'string') secrets.add(json[key]);
  return { status: response.status, body: json, text, wwwAuthenticate: response.headers.get('www-authenticate') };
}

const register = (metadata: Json, token?: string) => call('POST', `${ts.issuer}/reg`, token, metadata);

async function registered(metadata: Json, token: string) {
  const answer = await register(metadata, token);
  assert.equal(answer.status, 201, answer.text);
  return answer.body as Json & { client_id: string; registration_access_token: string; registration_client_uri: string; client_secret?: string };
}

function assertRefused(answer: { status: number; body: Json }, status: number, error: string, description?: RegExp) {
  assert.equal(answer.status, status, JSON.stringify(answer.body));
  assert.equal(answer.body.error, error, JSON.stringify(answer.body));
  if (description) assert.match(String(answer.body.error_description), description);
}

async function storedMetadata(clientId: string): Promise<Json | undefined> {
  const { rows } = await ts.testDb.db.query<{ metadata: Json }>('SELECT metadata FROM clients WHERE client_id = $1', [clientId]);
  return rows[0]?.metadata;
}

function clientCredentials(clientId: string, secret: string) {
  return ts.fetch(`${ts.mtlsBaseUrl}/token`, {
    method: 'POST',
    body: form({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }).body,
    headers: { ...form({}).headers, authorization: basicAuth(clientId, secret) },
  });
}

const SERVICE_METADATA = {
  client_name: 'Registered service',
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  resource_scope: 'system/Patient.rs',
};

before(async () => {
  ts = await startTestServer();
  expiring = { token: await iat(undefined, 1), createdAt: Date.now() };
});
after(() => ts.stop());

test('discovery advertises the registration endpoint; no open registration', async () => {
  const discovery = await (await ts.fetch(`${ts.issuer}/.well-known/openid-configuration`)).json() as Json;
  assert.equal(discovery.registration_endpoint, `${ts.issuer}/reg`);

  const none = await register(SERVICE_METADATA);
  assertRefused(none, 401, 'invalid_token', /^no access token provided$/);
  assert.equal(none.wwwAuthenticate, `Bearer realm="${ts.issuer}"`);
  assertRefused(await register(SERVICE_METADATA, 'not-a-token'), 401, 'invalid_token');
  // A registration access token is not an initial access token.
  const client = await registered(SERVICE_METADATA, await iat());
  assertRefused(await register(SERVICE_METADATA, client.registration_access_token), 401, 'invalid_token');
});

test('register, read, update and delete: the secret shown once, stored as a digest, never read back', async () => {
  const token = await iat();
  const client = await registered(SERVICE_METADATA, token);
  const secret = client.client_secret!;
  assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(client.client_secret_expires_at, 0);
  assert.match(client.client_id, /^client-[A-Za-z0-9_-]{22}$/);
  assert.equal(client.registration_client_uri, `${ts.issuer}/reg/${client.client_id}`);
  // Confidential: certificate-bound tokens unless the registration says otherwise (as for `client add`).
  assert.equal(client.tls_client_certificate_bound_access_tokens, true);

  const stored = (await storedMetadata(client.client_id))!;
  assert.match(String(stored.client_secret), /^hmac-sha256:/);
  assert.ok(!JSON.stringify(stored).includes(secret), 'the clear secret is not stored');

  // The digest is what the token endpoint checks against.
  assert.equal((await clientCredentials(client.client_id, secret)).status, 200);
  assert.equal((await clientCredentials(client.client_id, `${secret}x`)).status, 401);

  // The initial access token is spent.
  assertRefused(await register(SERVICE_METADATA, token), 401, 'invalid_token');

  const read = await call('GET', client.registration_client_uri, client.registration_access_token);
  assert.equal(read.status, 200, read.text);
  assert.equal(read.body.client_id, client.client_id);
  assert.equal(read.body.resource_scope, 'system/Patient.rs');
  assert.equal('client_secret' in read.body, false);
  assert.ok(!read.text.includes(secret) && !read.text.includes('hmac-sha256'), 'no secret and no digest in the answer');

  // RFC 7592 §2.2: a client secret sent with an update must be the current one.
  const update = { ...SERVICE_METADATA, client_id: client.client_id, client_name: 'Renamed service' };
  assertRefused(
    await call('PUT', client.registration_client_uri, client.registration_access_token, { ...update, client_secret: 'wrong-secret' }),
    400, 'invalid_request', /client_secret does not match/,
  );
  const updated = await call('PUT', client.registration_client_uri, client.registration_access_token, { ...update, client_secret: secret });
  assert.equal(updated.status, 200, updated.text);
  assert.equal(updated.body.client_name, 'Renamed service');
  assert.equal('client_secret' in updated.body, false);
  assert.ok(!updated.text.includes('hmac-sha256'));
  // The registration access token rotates: the new one replaces the old one.
  const rotated = String(updated.body.registration_access_token);
  assert.notEqual(rotated, client.registration_access_token);
  assertRefused(await call('GET', client.registration_client_uri, client.registration_access_token), 401, 'invalid_token');
  const reread = await call('GET', client.registration_client_uri, rotated);
  assert.equal(reread.status, 200);
  assert.equal(reread.body.client_name, 'Renamed service');
  // Same secret, same digest.
  assert.equal((await storedMetadata(client.client_id))!.client_secret, stored.client_secret);
  const issued = await clientCredentials(client.client_id, secret);
  assert.equal(issued.status, 200);
  const { access_token: accessToken } = await issued.json() as { access_token: string };
  secrets.add(accessToken);

  // Delete: the client, its registration access token and its tokens are gone.
  const deleted = await call('DELETE', client.registration_client_uri, rotated);
  assert.equal(deleted.status, 204, deleted.text);
  assert.equal(await storedMetadata(client.client_id), undefined);
  assertRefused(await call('GET', client.registration_client_uri, rotated), 401, 'invalid_token');
  assert.equal((await clientCredentials(client.client_id, secret)).status, 401);
  const { rows } = await ts.testDb.db.query<{ n: number | string }>(
    "SELECT count(*) AS n FROM oidc_payloads WHERE payload->>'clientId' = $1", [client.client_id],
  );
  assert.equal(Number(rows[0]!.n), 0);
});

test('an update that switches to a secret method gets a new secret, shown once and stored as a digest', async () => {
  const client = await registered({ ...SERVICE_METADATA, token_endpoint_auth_method: 'private_key_jwt', jwks: { keys: [await publicJwk()] } }, await iat());
  assert.equal('client_secret' in client, false);
  const updated = await call('PUT', client.registration_client_uri, client.registration_access_token, {
    ...SERVICE_METADATA, client_id: client.client_id, token_endpoint_auth_method: 'client_secret_post',
  });
  assert.equal(updated.status, 200, updated.text);
  const secret = String(updated.body.client_secret);
  assert.match(secret, /^[A-Za-z0-9_-]{43}$/);
  assert.match(String((await storedMetadata(client.client_id))!.client_secret), /^hmac-sha256:/);
  const reread = await call('GET', client.registration_client_uri, String(updated.body.registration_access_token));
  assert.equal('client_secret' in reread.body, false);
});

async function publicJwk(): Promise<Json> {
  const { publicKey } = await generateKeyPair('ES256');
  return { ...(await exportJWK(publicKey)), alg: 'ES256', use: 'sig' };
}

test('an initial access token is single use, also under concurrency; a refused registration does not spend it; expired is refused', async () => {
  const token = await iat();
  // Our client metadata policy answers inside oidc-provider's validation: refused, nothing spent.
  assertRefused(
    await register({ redirect_uris: ['http://app.example/callback'] }, token),
    400, 'invalid_redirect_uri', /^redirect_uris must use https/,
  );
  const answers = await Promise.all(Array.from({ length: 5 }, (_, i) => register({ ...SERVICE_METADATA, client_name: `racer ${i}` }, token)));
  assert.deepEqual(answers.map((a) => a.status).sort(), [201, 401, 401, 401, 401]);
  for (const answer of answers.filter((a) => a.status === 401)) assertRefused(answer, 401, 'invalid_token');
  const { rows } = await ts.testDb.db.query<{ n: number | string }>("SELECT count(*) AS n FROM clients WHERE metadata->>'client_name' LIKE 'racer %'");
  assert.equal(Number(rows[0]!.n), 1);

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, expiring.createdAt + 2_100 - Date.now())));
  assertRefused(await register(SERVICE_METADATA, expiring.token), 401, 'invalid_token');
});

test('a registration access token manages its own client only (and is revoked when used on another)', async () => {
  const target = await registered({ ...SERVICE_METADATA, client_name: 'target' }, await iat());
  const others = await Promise.all([1, 2, 3].map(async () => registered(SERVICE_METADATA, await iat())));
  const [reader, updater, deleter] = others as [typeof target, typeof target, typeof target];
  assertRefused(await call('GET', target.registration_client_uri, reader.registration_access_token), 401, 'invalid_token');
  assertRefused(await call('PUT', target.registration_client_uri, updater.registration_access_token, {
    ...SERVICE_METADATA, client_id: target.client_id, client_name: 'hijacked',
  }), 401, 'invalid_token');
  assertRefused(await call('DELETE', target.registration_client_uri, deleter.registration_access_token), 401, 'invalid_token');
  // oidc-provider presumes a token used on another client stolen and destroys it.
  assertRefused(await call('GET', reader.registration_client_uri, reader.registration_access_token), 401, 'invalid_token');

  const intact = await call('GET', target.registration_client_uri, target.registration_access_token);
  assert.equal(intact.status, 200);
  assert.equal(intact.body.client_name, 'target');
  assert.ok(await storedMetadata(target.client_id));
});

describe('templates', () => {
  test('smart-public-app: refusals name the field; a native app registers without a secret', async () => {
    const token = await iat('smart-public-app');
    const app = { application_type: 'native', redirect_uris: ['org.hospital.app:/callback'] };
    const refusals: Array<[Json, string, RegExp]> = [
      [{ grant_types: ['authorization_code', 'client_credentials'] }, 'invalid_client_metadata', /^grant_types: client_credentials is not allowed by the smart-public-app template/],
      [{ grant_types: ['authorization_code', TOKEN_EXCHANGE_GRANT] }, 'invalid_client_metadata', /^grant_types: urn:ietf:params:oauth:grant-type:token-exchange is not allowed/],
      [{ grant_types: ['authorization_code', 'refresh_token'] }, 'invalid_client_metadata', /^grant_types: refresh_token is not allowed/],
      [{ token_endpoint_auth_method: 'client_secret_basic' }, 'invalid_client_metadata', /^token_endpoint_auth_method must be none for the smart-public-app template/],
      [{ break_glass_allowed: true }, 'invalid_client_metadata', /^break_glass_allowed is granted by an administrator/],
      [{ scope: 'openid profile' }, 'invalid_client_metadata', /^scope: profile is not allowed/],
      [{ resource_scope: 'patient/Observation.cruds' }, 'invalid_client_metadata', /^resource_scope: patient\/Observation\.cruds is outside the smart-public-app template's ceiling/],
      [{ sector_identifier_uri: 'https://sector.example/uris.json' }, 'invalid_client_metadata', /^sector_identifier_uri is not accepted/],
      [{ application_type: 'web', redirect_uris: ['http://app.example/callback'] }, 'invalid_redirect_uri', /^redirect_uris must use https/],
    ];
    for (const [metadata, error, description] of refusals) {
      assertRefused(await register({ ...app, ...metadata }, token), 400, error, description);
    }

    const client = await registered({ ...app, resource_scope: 'patient/Observation.rs' }, token);
    assert.equal('client_secret' in client, false);
    assert.equal(client.token_endpoint_auth_method, 'none');
    assert.deepEqual(client.grant_types, ['authorization_code']);
    assert.equal(client.scope, 'openid fhirUser launch launch/patient offline_access');
    assert.equal((await storedMetadata(client.client_id))!.client_secret, undefined);

    // The template stays with the registration: updates are held to it too.
    assertRefused(await call('PUT', client.registration_client_uri, client.registration_access_token, {
      ...app, client_id: client.client_id, grant_types: ['authorization_code', 'client_credentials'],
    }), 400, 'invalid_client_metadata', /^grant_types: client_credentials is not allowed by the smart-public-app template/);
  });

  test('smart-confidential-app: the registered client signs a clinician in (code + PKCE) with its secret', async () => {
    const token = await iat('smart-confidential-app');
    assertRefused(await register({ redirect_uris: [APP.redirect_uri], token_endpoint_auth_method: 'none' }, token),
      400, 'invalid_client_metadata', /^token_endpoint_auth_method must be one of client_secret_basic, client_secret_post, private_key_jwt/);
    assertRefused(await register({ redirect_uris: [APP.redirect_uri], grant_types: ['client_credentials'] }, token),
      400, 'invalid_client_metadata', /^grant_types: client_credentials is not allowed by the smart-confidential-app template/);
    const client = await registered({
      client_name: 'Registered SMART app', redirect_uris: [APP.redirect_uri], resource_scope: 'patient/Observation.rs',
    }, token);
    assert.deepEqual(client.grant_types, ['authorization_code', 'refresh_token']);

    const config = await relyingParty(ts, client.client_id, client.client_secret!);
    const { callback, checks } = await signIn(ts, config, { scope: 'openid offline_access patient/Observation.rs', prompt: 'consent' });
    const tokens = await oidc.authorizationCodeGrant(config, callback, checks, { resource: FHIR });
    secrets.add(tokens.access_token);
    assert.equal(tokens.scope, 'patient/Observation.rs');
    assert.ok(tokens.refresh_token, 'offline_access and the refresh_token grant give a refresh token');
    secrets.add(tokens.refresh_token);
  });

  test('mtls-workload: certificate authentication and bound tokens, no browser flow', async () => {
    const token = await iat('mtls-workload');
    const workload = {
      token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: ts.clientCert.subjectDn, resource_scope: 'system/Patient.rs',
    };
    assertRefused(await register({ ...workload, redirect_uris: ['https://app.example/cb'] }, token),
      400, 'invalid_redirect_uri', /^redirect_uris must be empty for the mtls-workload template/);
    assertRefused(await register({ ...workload, tls_client_certificate_bound_access_tokens: false }, token),
      400, 'invalid_client_metadata', /^tls_client_certificate_bound_access_tokens must be true/);
    assertRefused(await register({ ...workload, resource_scope: 'system/Patient.cruds' }, token),
      400, 'invalid_client_metadata', /^resource_scope: system\/Patient\.cruds is outside/);
    const client = await registered(workload, token);
    assert.equal('client_secret' in client, false);
    const issued = await ts.fetch(`${ts.mtlsBaseUrl}/token`, {
      method: 'POST',
      ...form({ grant_type: 'client_credentials', client_id: client.client_id, resource: FHIR, scope: 'system/Patient.rs' }),
    });
    assert.equal(issued.status, 200, await issued.clone().text());
    const body = await issued.json() as { access_token: string };
    secrets.add(body.access_token);
    const { rows } = await ts.testDb.db.query<{ payload: Json }>(
      "SELECT payload FROM oidc_payloads WHERE model = 'AccessToken' AND payload->>'clientId' = $1", [client.client_id],
    );
    assert.equal(rows[0]?.payload['x5t#S256'], ts.clientCert.sha256Thumbprint);
  });
});

test('audit: every registration change and refusal recorded, without secrets or token values', async () => {
  const { rows } = await ts.testDb.db.query<{ type: string; rule: string; actor_client: string | null; details: Json; text: string }>(
    'SELECT type, rule, actor_client, details, row_to_json(a)::text AS text FROM audit_events a ORDER BY seq',
  );
  const of = (type: string) => rows.filter((r) => r.type === type);
  assert.ok(of('registration.iat_created').length >= 10);
  assert.ok(of('registration.iat_created').some((r) => r.details.template === 'smart-public-app'));
  const registeredEvents = of('client.registered');
  assert.ok(registeredEvents.some((r) => r.details.template === 'mtls-workload' && r.details.token_endpoint_auth_method === 'tls_client_auth'));
  assert.ok(registeredEvents.every((r) => typeof r.details.iat_ref === 'string' && r.actor_client));
  assert.ok(of('client.registration_updated').length >= 2);
  assert.equal(of('client.registration_deleted').length, 1);
  const refusals = of('client.registration_refused');
  assert.ok(refusals.some((r) => r.details.operation === 'create' && r.details.error === 'invalid_token'));
  assert.ok(refusals.some((r) => r.details.error === 'invalid_client_metadata' && r.details.field === 'grant_types' && r.details.template === 'smart-public-app'));
  assert.ok(refusals.some((r) => r.details.error === 'invalid_redirect_uri' && r.details.field === 'redirect_uris'));
  assert.ok(refusals.some((r) => r.details.operation === 'read' && r.details.error === 'invalid_token'));
  assert.ok(refusals.some((r) => r.details.operation === 'delete' && r.details.error === 'invalid_token'));

  assert.ok(secrets.size > 20, `secrets collected: ${secrets.size}`);
  for (const row of rows) {
    for (const secret of secrets) assert.ok(!row.text.includes(secret), `${row.type} holds a secret or token value`);
    assert.ok(!row.text.includes('hmac-sha256'), `${row.type} holds a secret digest`);
  }
});

test('no registrant gives itself the admin API: admin scopes refused without a template, at registration and by update', async () => {
  const adminScopes = { ...SERVICE_METADATA, resource_scope: 'system/Patient.rs admin:write' };
  const refusedAnswer = await register(adminScopes, await iat());
  assertRefused(refusedAnswer, 400, 'invalid_client_metadata', /^resource_scope: the admin API's scopes are granted by an administrator/);
  const client = await registered(SERVICE_METADATA, await iat());
  const update = await call('PUT', client.registration_client_uri, client.registration_access_token, {
    ...SERVICE_METADATA, client_id: client.client_id, resource_scope: 'admin:read admin:write',
  });
  assertRefused(update, 400, 'invalid_client_metadata', /^resource_scope: the admin API's scopes/);
  // Even a self-signed certificate client (its own keys): admin by client credentials needs a CA-issued certificate.
  const selfSigned = await register({
    ...SERVICE_METADATA, token_endpoint_auth_method: 'self_signed_tls_client_auth', resource_scope: 'admin:write',
    jwks: { keys: [{ kty: 'EC', crv: 'P-256', x: 'f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU', y: 'x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0', x5c: ['MIIB'] }] },
  }, await iat());
  assert.equal(selfSigned.status, 400, selfSigned.text);
});
