// Every refusal is an exact OAuth error: right status, right `error` code, JSON body, no stack trace.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { generateKeyPair, SignJWT } from 'jose';

import { APP, basicAuth, FHIR, form, PUBLIC_APP, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

let ts: TestServer;

before(async () => {
  ts = await startTestServer();
});

after(async () => {
  await ts?.stop();
});

type Response = Awaited<ReturnType<TestServer['fetch']>>;

const SERVICE_AUTH = () => basicAuth(SERVICE.client_id, SERVICE.client_secret);
const APP_AUTH = () => basicAuth(APP.client_id, APP.client_secret);
const CC_PARAMS = { grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' };

function pkce() {
  const verifier = randomBytes(32).toString('base64url');
  return { verifier, challenge: createHash('sha256').update(verifier).digest('base64url') };
}

function assertNoStackTrace(text: string) {
  assert.doesNotMatch(text, /\n\s+at .+:\d+:\d+/, 'no stack trace in the body');
  assert.doesNotMatch(text, /node_modules|\/src\//, 'no file paths in the body');
}

/** Asserts an exact OAuth JSON error. */
async function expectJsonError(res: Response, status: number | number[], error: string): Promise<Record<string, unknown>> {
  const text = await res.text();
  const statuses = Array.isArray(status) ? status : [status];
  assert.ok(statuses.includes(res.status), `status ${res.status} (expected ${statuses.join(' or ')}): ${text.slice(0, 300)}`);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/, `JSON error body, got ${res.headers.get('content-type')}: ${text.slice(0, 300)}`);
  assertNoStackTrace(text);
  const body = JSON.parse(text) as Record<string, unknown>;
  assert.equal(body.error, error, `error code in ${text}`);
  return body;
}

async function json(res: Response): Promise<Record<string, unknown>> {
  const text = await res.text();
  assert.equal(res.status, 200, `status ${res.status}: ${text.slice(0, 300)}`);
  return JSON.parse(text) as Record<string, unknown>;
}

function post(path: string, body: string, headers: Record<string, string>) {
  return ts.fetch(ts.endpoint(path), { method: 'POST', body, headers });
}

function token(params: Record<string, string>, authorization = SERVICE_AUTH()) {
  const f = form(params);
  return post('/token', f.body, { ...f.headers, authorization });
}

function introspect(tokenValue: string, authorization = SERVICE_AUTH()) {
  const f = form({ token: tokenValue });
  return post('/token/introspection', f.body, { ...f.headers, authorization });
}

function revoke(tokenValue: string, authorization = SERVICE_AUTH()) {
  const f = form({ token: tokenValue });
  return post('/token/revocation', f.body, { ...f.headers, authorization });
}

async function serviceAccessToken(): Promise<string> {
  const body = await json(await token(CC_PARAMS));
  assert.equal(typeof body.access_token, 'string');
  return body.access_token as string;
}

function authUrl(params: Record<string, string | undefined>): string {
  const url = new URL(`${ts.issuer}/auth`);
  for (const [k, v] of Object.entries(params)) if (v !== undefined) url.searchParams.set(k, v);
  return url.href;
}

/** GET /auth and return the redirect's query, asserting it goes back to the client's redirect_uri. */
async function authorizeError(params: Record<string, string | undefined>, redirectUri: string): Promise<URLSearchParams> {
  const res = await ts.fetch(authUrl(params));
  const text = await res.text();
  assert.ok([302, 303].includes(res.status), `redirect expected, got ${res.status}: ${text.slice(0, 300)}`);
  const location = new URL(res.headers.get('location') ?? '', ts.issuer);
  assert.equal(`${location.origin}${location.pathname}`, redirectUri, `redirected to the client: ${location.href}`);
  return location.searchParams;
}

describe('PKCE at the authorization endpoint', () => {
  const base = () => ({
    client_id: APP.client_id,
    response_type: 'code',
    redirect_uri: APP.redirect_uri,
    scope: 'openid',
    state: 'st-123',
  });

  test('without code_challenge: redirect with invalid_request', async () => {
    const q = await authorizeError(base(), APP.redirect_uri);
    assert.equal(q.get('error'), 'invalid_request');
    assert.equal(q.get('state'), 'st-123');
    assert.equal(q.get('code'), null);
  });

  test('code_challenge_method=plain: refused with invalid_request', async () => {
    const q = await authorizeError({ ...base(), code_challenge: pkce().verifier, code_challenge_method: 'plain' }, APP.redirect_uri);
    assert.equal(q.get('error'), 'invalid_request');
    assert.equal(q.get('code'), null);
  });

  test('public client without PKCE: refused with invalid_request', async () => {
    const q = await authorizeError({
      client_id: PUBLIC_APP.client_id,
      response_type: 'code',
      redirect_uri: PUBLIC_APP.redirect_uri,
      scope: 'openid',
      state: 'pub-1',
    }, PUBLIC_APP.redirect_uri);
    assert.equal(q.get('error'), 'invalid_request');
    assert.equal(q.get('state'), 'pub-1');
  });

  test('with S256 PKCE the same request goes on to the login interaction', async () => {
    const res = await ts.fetch(authUrl({ ...base(), code_challenge: pkce().challenge, code_challenge_method: 'S256' }));
    await res.arrayBuffer();
    assert.equal(res.status, 303);
    assert.match(res.headers.get('location') ?? '', /^\/interaction\/[A-Za-z0-9_-]+$/);
  });
});

describe('token endpoint refusals', () => {
  test('wrong client secret: 401 invalid_client with WWW-Authenticate Basic', async () => {
    const res = await token(CC_PARAMS, basicAuth(SERVICE.client_id, 'wrong-secret-0123456789-0123456789-xx'));
    await expectJsonError(res, 401, 'invalid_client');
    assert.match(res.headers.get('www-authenticate') ?? '', /^Basic /i, 'RFC 6749 §5.2: 401 after Authorization header carries WWW-Authenticate');
  });

  test('wrong client secret via client_secret_post: 401 invalid_client', async () => {
    const f = form({ ...CC_PARAMS, client_id: SERVICE.client_id, client_secret: 'wrong-secret-0123456789-0123456789-xx' });
    await expectJsonError(await post('/token', f.body, f.headers), 401, 'invalid_client');
  });

  test('no client authentication at all: 401 invalid_client', async () => {
    const f = form(CC_PARAMS);
    await expectJsonError(await post('/token', f.body, f.headers), 401, 'invalid_client');
  });

  test('unknown client: 401 invalid_client', async () => {
    await expectJsonError(await token(CC_PARAMS, basicAuth('no-such-client', 'whatever-secret-0123456789-0123456789')), 401, 'invalid_client');
  });

  test('unsupported grant_type: 400 unsupported_grant_type', async () => {
    await expectJsonError(await token({ grant_type: 'urn:example:no-such-grant' }), 400, 'unsupported_grant_type');
  });

  test('JSON body: 400 invalid_request', async () => {
    const res = await post('/token', JSON.stringify(CC_PARAMS), { 'content-type': 'application/json', authorization: SERVICE_AUTH() });
    await expectJsonError(res, 400, 'invalid_request');
  });

  test('oversized form body (> 64 KiB): 413 or 400 invalid_request', async () => {
    const body = `${new URLSearchParams(CC_PARAMS).toString()}&padding=${'a'.repeat(65 * 1024)}`;
    const res = await post('/token', body, { 'content-type': 'application/x-www-form-urlencoded', authorization: SERVICE_AUTH() });
    await expectJsonError(res, [400, 413], 'invalid_request');
  });

  test('malformed urlencoded body (%zz): 400 invalid_request', async () => {
    const body = `grant_type=client_credentials&resource=${encodeURIComponent(FHIR)}&scope=system%2FPatient.rs%zz`;
    const res = await post('/token', body, { 'content-type': 'application/x-www-form-urlencoded', authorization: SERVICE_AUTH() });
    await expectJsonError(res, 400, 'invalid_request');
  });

  test('a form body in a charset other than UTF-8: 400 invalid_request', async () => {
    const res = await post('/token', new URLSearchParams(CC_PARAMS).toString(), {
      'content-type': 'application/x-www-form-urlencoded; charset=bogus', authorization: SERVICE_AUTH(),
    });
    await expectJsonError(res, 400, 'invalid_request');
  });

  test('a NUL character in a parameter: 400 invalid_request', async () => {
    const body = `${new URLSearchParams(CC_PARAMS).toString()}&state=a%00b`;
    const res = await post('/token', body, { 'content-type': 'application/x-www-form-urlencoded', authorization: SERVICE_AUTH() });
    await expectJsonError(res, 400, 'invalid_request');
  });

  test('grant_type twice: 400 invalid_request', async () => {
    const body = `${new URLSearchParams(CC_PARAMS).toString()}&grant_type=client_credentials`;
    const res = await post('/token', body, { 'content-type': 'application/x-www-form-urlencoded', authorization: SERVICE_AUTH() });
    await expectJsonError(res, 400, 'invalid_request');
  });

  test('unknown parameters alongside a valid request are ignored (RFC 6749 §3.1): 200', async () => {
    const body = await json(await token({ ...CC_PARAMS, x_unknown: 'whatever', foo: 'bar' }));
    assert.equal(typeof body.access_token, 'string');
    assert.equal(body.token_type, 'Bearer');
    assert.equal(body.scope, 'system/Patient.rs');
  });

  test('unknown resource: 400 invalid_target', async () => {
    await expectJsonError(await token({ ...CC_PARAMS, resource: 'https://unknown.test/fhir' }), 400, 'invalid_target');
  });

  test('garbage authorization code: 400 invalid_grant', async () => {
    const res = await token({
      grant_type: 'authorization_code',
      code: 'garbage-code-that-was-never-issued',
      redirect_uri: APP.redirect_uri,
      code_verifier: pkce().verifier,
    }, APP_AUTH());
    await expectJsonError(res, 400, 'invalid_grant');
  });

  test('client_credentials for a client not registered for it: 400 unauthorized_client', async () => {
    await expectJsonError(await token(CC_PARAMS, APP_AUTH()), 400, 'unauthorized_client');
  });
});

describe('introspection and revocation', () => {
  test('garbage token: introspection 200 {active:false}, revocation 200', async () => {
    assert.deepEqual(await json(await introspect('garbage-token')), { active: false });
    const res = await revoke('garbage-token');
    await res.arrayBuffer();
    assert.equal(res.status, 200);
  });

  test('a forged JWT (right shape and kid, wrong signature) introspects inactive', async () => {
    const jwks = await json(await ts.fetch(`${ts.issuer}/jwks`));
    const kid = (jwks.keys as { kid: string; alg: string }[]).find((k) => k.alg === 'ES256')?.kid;
    assert.ok(kid);
    const { privateKey } = await generateKeyPair('ES256');
    const forged = await new SignJWT({ client_id: SERVICE.client_id, scope: 'system/Patient.rs' })
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid })
      .setIssuer(ts.issuer)
      .setAudience(FHIR)
      .setSubject(SERVICE.client_id)
      .setJti(randomBytes(16).toString('base64url'))
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);
    assert.deepEqual(await json(await introspect(forged)), { active: false });
    const res = await revoke(forged);
    await res.arrayBuffer();
    assert.equal(res.status, 200);
  });

  test('a forged copy of a real token (signature swapped) introspects inactive', async () => {
    const real = await serviceAccessToken();
    const [header, payload] = real.split('.');
    const { privateKey } = await generateKeyPair('ES256');
    const other = await new SignJWT({}).setProtectedHeader({ alg: 'ES256' }).sign(privateKey);
    const forged = `${header}.${payload}.${other.split('.')[2]}`;
    assert.deepEqual(await json(await introspect(forged)), { active: false });
    assert.equal((await json(await introspect(real))).active, true, 'the real one is still active');
  });

  test('own JWT access token: active with client_id, scope, aud, jti; inactive after revocation', async () => {
    const accessToken = await serviceAccessToken();
    assert.equal(accessToken.split('.').length, 3, 'a JWT access token');
    const info = await json(await introspect(accessToken));
    assert.equal(info.active, true);
    assert.equal(info.client_id, SERVICE.client_id);
    assert.equal(info.scope, 'system/Patient.rs');
    assert.ok(info.aud === FHIR || (Array.isArray(info.aud) && info.aud.includes(FHIR)), `aud ${JSON.stringify(info.aud)}`);
    assert.equal(typeof info.jti, 'string');
    assert.ok((info.jti as string).length > 0);

    const res = await revoke(accessToken);
    await res.arrayBuffer();
    assert.equal(res.status, 200);
    assert.deepEqual(await json(await introspect(accessToken)), { active: false });
  });

  test('another client introspecting the token gets {active:false}', async () => {
    const accessToken = await serviceAccessToken();
    assert.deepEqual(await json(await introspect(accessToken, APP_AUTH())), { active: false });
    assert.equal((await json(await introspect(accessToken))).active, true);
  });

  test('another client cannot revoke the token', async () => {
    const accessToken = await serviceAccessToken();
    const res = await revoke(accessToken, APP_AUTH());
    const text = await res.text();
    assertNoStackTrace(text);
    assert.ok([200, 400].includes(res.status), `status ${res.status}: ${text}`);
    if (res.status === 400) {
      assert.equal((JSON.parse(text) as { error?: string }).error, 'invalid_request');
    }
    assert.equal((await json(await introspect(accessToken))).active, true, 'token still active');
  });

  for (const path of ['/token/introspection', '/token/revocation']) {
    test(`${path}: missing token is 400 invalid_request`, async () => {
      const f = form({ token_type_hint: 'access_token' });
      await expectJsonError(await post(path, f.body, { ...f.headers, authorization: SERVICE_AUTH() }), 400, 'invalid_request');
    });

    test(`${path}: no client authentication is 401 invalid_client`, async () => {
      const f = form({ token: 'garbage-token' });
      await expectJsonError(await post(path, f.body, f.headers), 401, 'invalid_client');
    });

    test(`${path}: wrong client secret is 401 invalid_client`, async () => {
      const f = form({ token: 'garbage-token' });
      const res = await post(path, f.body, { ...f.headers, authorization: basicAuth(SERVICE.client_id, 'wrong-secret-0123456789-0123456789-xx') });
      await expectJsonError(res, 401, 'invalid_client');
    });

    test(`${path}: token twice is 400 invalid_request`, async () => {
      const res = await post(path, 'token=a&token=b', { 'content-type': 'application/x-www-form-urlencoded', authorization: SERVICE_AUTH() });
      await expectJsonError(res, 400, 'invalid_request');
    });

    test(`${path}: oversized body is 413 or 400 invalid_request`, async () => {
      const res = await post(path, `token=${'a'.repeat(65 * 1024)}`, { 'content-type': 'application/x-www-form-urlencoded', authorization: SERVICE_AUTH() });
      await expectJsonError(res, [400, 413], 'invalid_request');
    });
  }
});

describe('userinfo', () => {
  test('garbage bearer: 401 with WWW-Authenticate invalid_token', async () => {
    const res = await ts.fetch(`${ts.issuer}/me`, { headers: { authorization: 'Bearer garbage-access-token' } });
    const text = await res.text();
    assert.equal(res.status, 401, text);
    assert.match(res.headers.get('www-authenticate') ?? '', /error="invalid_token"/);
    assertNoStackTrace(text);
  });
});

describe('interactions', () => {
  test('unknown interaction uid: 4xx error page, never 500', async () => {
    for (const accept of ['text/html', 'application/json']) {
      const res = await ts.fetch(`${ts.issuer}/interaction/abcdefghijkl`, { headers: { accept } });
      const text = await res.text();
      assert.ok(res.status >= 400 && res.status < 500, `status ${res.status} for ${accept}: ${text.slice(0, 300)}`);
      assert.match(res.headers.get('content-type') ?? '', /^(text\/html|application\/json)/);
      assertNoStackTrace(text);
    }
  });

  test('unknown interaction uid, POST login: 4xx, never 500', async () => {
    const f = form({ username: 'x', password: 'y' });
    const res = await post('/interaction/abcdefghijkl/login', f.body, f.headers);
    const text = await res.text();
    assert.ok(res.status >= 400 && res.status < 500, `status ${res.status}: ${text.slice(0, 300)}`);
    assertNoStackTrace(text);
  });
});

describe('headers', () => {
  async function loginPage(headers: Record<string, string> = {}): Promise<Response> {
    const { challenge } = pkce();
    const res = await ts.fetch(authUrl({
      client_id: APP.client_id, response_type: 'code', redirect_uri: APP.redirect_uri, scope: 'openid', state: 's',
      code_challenge: challenge, code_challenge_method: 'S256',
    }));
    await res.arrayBuffer();
    assert.equal(res.status, 303);
    const cookies = res.headers.getSetCookie().map((c) => c.split(';')[0]).join('; ');
    const page = await ts.fetch(new URL(res.headers.get('location') ?? '', ts.issuer), { headers: { cookie: cookies, ...headers } });
    return page;
  }

  test('login page: CSP without unsafe-inline, X-Frame-Options DENY, nosniff', async () => {
    const res = await loginPage();
    const text = await res.text();
    assert.equal(res.status, 200, text.slice(0, 300));
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(text, /name="password"/);
    const csp = res.headers.get('content-security-policy') ?? '';
    assert.ok(csp, 'Content-Security-Policy present');
    assert.doesNotMatch(csp, /unsafe-inline/);
    assert.doesNotMatch(csp, /unsafe-eval/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.equal(res.headers.get('x-frame-options'), 'DENY');
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
    assert.match(res.headers.get('strict-transport-security') ?? '', /max-age=\d+/);
    assert.match(res.headers.get('cache-control') ?? '', /no-store/);
  });

  test('X-Request-Id: a valid one is echoed', async () => {
    const id = 'req-123_abc.DEF:456';
    const res = await loginPage({ 'x-request-id': id });
    await res.arrayBuffer();
    assert.equal(res.headers.get('x-request-id'), id);
    const health = await ts.fetch(`${ts.issuer}/healthz`, { headers: { 'x-request-id': id } });
    await health.arrayBuffer();
    assert.equal(health.headers.get('x-request-id'), id);
  });

  test('X-Request-Id: generated when absent or malformed', async () => {
    const ids = new Set<string>();
    for (const sent of [undefined, 'has spaces in it', 'x'.repeat(129), 'bad<id>', '']) {
      const res = await ts.fetch(`${ts.issuer}/healthz`, { headers: sent === undefined ? {} : { 'x-request-id': sent } });
      await res.arrayBuffer();
      const got = res.headers.get('x-request-id');
      assert.ok(got, `a request id for ${JSON.stringify(sent)}`);
      assert.notEqual(got, sent);
      assert.match(got, /^[A-Za-z0-9._:-]{1,128}$/);
      ids.add(got);
    }
    assert.equal(ids.size, 5, 'a fresh id each time');
    // An error response also carries one.
    const res = await token({ grant_type: 'nope' }, basicAuth('no-such-client', 'x'));
    await res.arrayBuffer();
    assert.match(res.headers.get('x-request-id') ?? '', /^[A-Za-z0-9._:-]{1,128}$/);
  });
});

describe('health', () => {
  test('/healthz 200', async () => {
    assert.deepEqual(await json(await ts.fetch(`${ts.issuer}/healthz`)), { status: 'ok' });
  });

  test('/readyz 200 with the database up', async () => {
    assert.deepEqual(await json(await ts.fetch(`${ts.issuer}/readyz`)), { status: 'ready' });
  });
});

describe('NUL characters in lookup keys: 4xx, never 500', () => {
  // Its own server: these requests must not disturb the shared one (rate limits, login throttle).
  let nts: TestServer;
  // Imported here so that this block stays self-contained at the end of the file.
  let Browser: typeof import('./support/login-flow.ts').Browser;
  let CLINICIAN: typeof import('./support/test-server.ts').CLINICIAN;
  let LOGIN_FAILED_MESSAGE: string;
  before(async () => {
    ({ Browser } = await import('./support/login-flow.ts'));
    ({ CLINICIAN } = await import('./support/test-server.ts'));
    ({ LOGIN_FAILED_MESSAGE } = await import('../src/interactions/password-login.ts'));
    nts = await startTestServer();
  });
  after(async () => {
    await nts?.stop();
  });

  /** A 4xx answer, JSON or HTML, without a stack trace and never `server_error`. */
  async function expectClientError(res: Response, what: string): Promise<string> {
    const text = await res.text();
    assert.ok(res.status >= 400 && res.status < 500, `${what}: status ${res.status}: ${text.slice(0, 300)}`);
    const type = res.headers.get('content-type') ?? '';
    assert.match(type, /^(application\/json|text\/html)/, `${what}: JSON or HTML error, got ${type}`);
    assertNoStackTrace(text);
    assert.doesNotMatch(text, /server_error/, `${what}: not a server error: ${text.slice(0, 300)}`);
    if (type.startsWith('application/json')) {
      assert.equal(typeof (JSON.parse(text) as { error?: unknown }).error, 'string', `${what}: an OAuth error code`);
    }
    return text;
  }

  function nulAuthUrl(params: Record<string, string>): URL {
    const url = new URL(`${nts.issuer}/auth`);
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return url;
  }

  function get(path: string, accept: string) {
    return nts.fetch(`${nts.issuer}${path}`, { headers: { accept } });
  }

  /** A JWT signed by a key the server does not know, with the given claims. */
  async function foreignJwt(claims: Record<string, unknown>): Promise<string> {
    const { privateKey } = await generateKeyPair('ES256');
    return new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256' })
      .setIssuedAt()
      .setExpirationTime('5m')
      .setJti(randomBytes(8).toString('base64url'))
      .sign(privateKey);
  }

  for (const accept of ['application/json', 'text/html']) {
    test(`GET /auth?client_id=%00 (${accept})`, async () => {
      await expectClientError(await get('/auth?client_id=%00', accept), '/auth client_id NUL');
      await expectClientError(await get(`/auth?client_id=a%00b&response_type=code&scope=openid&redirect_uri=${encodeURIComponent(APP.redirect_uri)}`, accept), '/auth client_id a NUL b');
    });

    test(`GET /session/end?client_id=%00 (${accept})`, async () => {
      await expectClientError(await get('/session/end?client_id=%00', accept), '/session/end client_id NUL');
    });

    test(`GET /session/end with an id_token_hint whose aud contains NUL (${accept})`, async () => {
      const hint = await foreignJwt({ iss: nts.issuer, sub: 'someone', aud: 'a\u0000b' });
      await expectClientError(await get(`/session/end?id_token_hint=${hint}`, accept), '/session/end id_token_hint aud NUL');
    });
  }

  test('GET /auth with a resource indicator containing NUL: refused as invalid_request, never server_error', async () => {
    const url = nulAuthUrl({
      client_id: APP.client_id, response_type: 'code', redirect_uri: APP.redirect_uri, scope: 'openid', state: 'nul-1',
      code_challenge: pkce().challenge, code_challenge_method: 'S256', resource: `${FHIR}\u0000`,
    });
    const res = await nts.fetch(url, { headers: { accept: 'application/json' } });
    if (res.status >= 300 && res.status < 400) {
      // The client and redirect_uri are valid, so the error goes back to the client (RFC 6749 §4.1.2.1).
      await res.arrayBuffer();
      const location = new URL(res.headers.get('location') ?? '', nts.issuer);
      assert.equal(`${location.origin}${location.pathname}`, APP.redirect_uri, `redirected to the client: ${location.href}`);
      assert.equal(location.searchParams.get('error'), 'invalid_request', location.href);
      assert.equal(location.searchParams.get('state'), 'nul-1');
      assert.equal(location.searchParams.get('code'), null);
    } else {
      await expectClientError(res, '/auth resource NUL');
    }
  });

  test('POST /token with a client_assertion whose iss and sub contain NUL: 4xx', async () => {
    const assertion = await foreignJwt({ iss: 'a\u0000b', sub: 'a\u0000b', aud: `${nts.issuer}/token` });
    const f = form({
      ...CC_PARAMS,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    });
    const res = await nts.fetch(nts.endpoint("/token"), { method: 'POST', body: f.body, headers: f.headers });
    await expectClientError(res, '/token client_assertion NUL');
  });

  for (const username of ['a\u0000b', 'dr.test\u0000']) {
    test(`login with username ${JSON.stringify(username)}: 400 invalid_request or 401 with the generic message`, async () => {
      const browser = new Browser(nts);
      const start = await browser.follow(await browser.get(nulAuthUrl({
        client_id: APP.client_id, response_type: 'code', redirect_uri: APP.redirect_uri, scope: 'openid', state: 's',
        code_challenge: pkce().challenge, code_challenge_method: 'S256',
      })));
      const action = /action="(\/interaction\/[^"]+\/login)"/.exec(start.body)?.[1];
      assert.ok(action, `a login page: ${start.status} ${start.body.slice(0, 300)}`);
      const step = await browser.post(new URL(action, nts.issuer), { username, password: CLINICIAN.password });
      assert.ok([400, 401].includes(step.status), `status ${step.status}: ${step.body.slice(0, 300)}`);
      assertNoStackTrace(step.body);
      if (step.status === 401) assert.ok(step.body.includes(LOGIN_FAILED_MESSAGE), 'the generic login failure message');
      else assert.match(step.body, /invalid_request/);
      assert.doesNotMatch(step.body, /server_error/);
    });
  }
});
