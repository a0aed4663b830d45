// Scale-out (issue 9): three server processes on one PostgreSQL database and one KEYS_DIR, behind a
// TLS pass-through proxy that owns the issuer's ports, behave as ONE authorization server. Each step
// is sent to a chosen process (the proxy's route, checked against what the proxy actually forwarded):
// sessions, codes, tokens, revocation, token exchange, rate limits, key rotation and the audit chain
// must not care which process answered.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';
import * as oidc from 'openid-client';
import { fetch as undiciFetch, type Agent } from 'undici';

import { TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN } from '../src/exchange/decision.ts';
import { x5tS256 } from '../src/mtls/index.ts';
import { result, runCli } from './support/cli.ts';
import { ORCHESTRATOR, startCluster, type Cluster } from './support/cluster.ts';
import { Browser } from './support/login-flow.ts';
import { derBase64 } from './support/pki.ts';
import { relyingParty, signIn } from './support/relying-party.ts';
import { APP, basicAuth, CARE_TEAM_PATIENTS, FHIR, SERVICE, type TestServer } from './support/test-server.ts';

const NAMES = ['A', 'B', 'C'] as const;
const A = 0;
const B = 1;
const C = 2;
const LABS = 'patient/Observation.rs?category=laboratory';
const SIGN_IN_SCOPE = 'openid fhirUser offline_access launch/patient patient/Observation.rs';
// Low enough to reach in a test, high enough for the clinician's own sign-ins and token calls here.
const LOGIN_USER_POINTS = 10;
const CLIENT_POINTS = 30;
const KEYS_RELOAD_SECONDS = 1;

type Json = Record<string, unknown>;
interface Answer { status: number; body: Json; headers: Headers; requestId: string }

describe('scale-out: three processes, one system', { skip: !process.env.DATABASE_URL && 'needs PostgreSQL (DATABASE_URL): three processes cannot share the embedded database' }, () => {
  let cluster: Cluster;
  let ts: TestServer;
  let app: oidc.Configuration;
  let appAgent: Agent;
  let orchestratorAgent: Agent;
  let plainAgent: Agent;
  /** Every request sent with our own X-Request-Id: which process it went to, and what it was. */
  const tagged: { requestId: string; node: number; what: string }[] = [];

  /** Runs `fn` with every new connection going to `node`; fails if the proxy sent any elsewhere. */
  async function at<T>(node: number, fn: () => Promise<T>): Promise<T> {
    cluster.route(node);
    const before = cluster.connections();
    const value = await fn();
    const after = cluster.connections();
    for (const [i, count] of after.entries()) {
      if (i === node) assert.ok(count > before[i]!, `nothing reached process ${NAMES[node]}`);
      else assert.equal(count, before[i], `a connection went to process ${NAMES[i]} instead of ${NAMES[node]}`);
    }
    return value;
  }

  async function send(url: string, params: Record<string, string>, agent: Agent, requestId: string, authorization?: string): Promise<Answer> {
    const res = await undiciFetch(url, {
      method: 'POST',
      body: new URLSearchParams(params).toString(),
      dispatcher: agent,
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        'x-request-id': requestId,
        ...(authorization ? { authorization } : {}),
      },
    });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : {}) as Json, headers: res.headers as unknown as Headers, requestId };
  }

  /** A POST to an OAuth endpoint of process `node`, under a request id the audit log will show. */
  function call(node: number, what: string, path: string, params: Record<string, string>, agent: Agent, authorization?: string): Promise<Answer> {
    const requestId = `scale-out-${NAMES[node]}-${tagged.length + 1}`;
    tagged.push({ requestId, node, what });
    return at(node, () => send(cluster.endpoint(path), params, agent, requestId, authorization));
  }

  const appAuth = () => basicAuth(APP.client_id, APP.client_secret);
  const serviceAuth = () => basicAuth(SERVICE.client_id, SERVICE.client_secret);

  /** The clinician signs in through the app at `node` (code + PKCE, consent with the default patient). */
  async function signInAt(node: number, browser = new Browser(ts)) {
    const flow = await at(node, () => signIn(ts, app, { scope: SIGN_IN_SCOPE, prompt: 'consent' }, browser));
    assert.equal(`${flow.callback.origin}${flow.callback.pathname}`, APP.redirect_uri);
    assert.equal(flow.callback.searchParams.get('state'), flow.checks.expectedState);
    assert.equal(flow.callback.searchParams.get('iss'), cluster.issuer);
    assert.ok(flow.callback.searchParams.get('code'), `a code: ${flow.callback.href}`);
    return flow;
  }

  function redeem(node: number, callback: URL, verifier: string): Promise<Answer> {
    return call(node, 'redeem', '/token', {
      grant_type: 'authorization_code', code: callback.searchParams.get('code')!, redirect_uri: APP.redirect_uri, code_verifier: verifier,
    }, appAgent, appAuth());
  }

  function introspect(node: number, token: string, as: 'app' | 'orchestrator' | 'service'): Promise<Answer> {
    const path = '/token/introspection';
    if (as === 'orchestrator') return call(node, 'introspect', path, { token, client_id: ORCHESTRATOR }, orchestratorAgent);
    return call(node, 'introspect', path, { token }, appAgent, as === 'app' ? appAuth() : serviceAuth());
  }

  function exchange(node: number, subjectToken: string): Promise<Answer> {
    return call(node, 'exchange', '/token', {
      grant_type: TOKEN_EXCHANGE_GRANT, client_id: ORCHESTRATOR, subject_token: subjectToken, subject_token_type: TOKEN_TYPE_ACCESS_TOKEN,
      resource: FHIR, scope: LABS,
    }, orchestratorAgent);
  }

  function clientCredentials(node: number): Promise<Answer> {
    return call(node, 'client_credentials', '/token', { grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }, appAgent, serviceAuth());
  }

  function ok(answer: Answer, status = 200): Json {
    assert.equal(answer.status, status, `${answer.requestId}: ${JSON.stringify(answer.body)}`);
    return answer.body;
  }

  /** GET /auth with prompt=none in `browser`, following the server's own redirects, at `node`. */
  async function silentAuthorization(node: number, browser: Browser): Promise<{ params: URLSearchParams; verifier: string }> {
    const verifier = oidc.randomPKCECodeVerifier();
    const url = oidc.buildAuthorizationUrl(app, {
      redirect_uri: APP.redirect_uri, scope: 'openid fhirUser', state: 'silent', prompt: 'none',
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
    });
    const step = await at(node, async () => browser.follow(await browser.get(url)));
    assert.ok(step.location, `prompt=none redirects back to the app (status ${step.status}): ${step.body.slice(0, 200)}`);
    const landed = new URL(step.location);
    assert.equal(`${landed.origin}${landed.pathname}`, APP.redirect_uri, `landed on ${landed.href}`);
    assert.equal(landed.searchParams.get('state'), 'silent');
    return { params: landed.searchParams, verifier };
  }

  async function auditTypesFor(requestId: string): Promise<string[]> {
    const { rows } = await cluster.testDb.db.query<{ type: string }>(
      'SELECT type FROM audit_events WHERE request_id = $1 ORDER BY seq', [requestId],
    );
    return rows.map((r) => r.type);
  }

  before(async () => {
    cluster = await startCluster({
      size: 3,
      env: {
        KEYS_RELOAD_INTERVAL: String(KEYS_RELOAD_SECONDS),
        RATE_LIMIT_LOGIN_USER_POINTS: String(LOGIN_USER_POINTS),
        RATE_LIMIT_CLIENT_POINTS: String(CLIENT_POINTS),
        // Passkeys only when a request needs one: the clinician signs in with the password.
        MFA_AT_LOGIN: 'on_demand',
      },
    });
    ts = cluster.asTestServer();
    appAgent = cluster.dispatcher;
    orchestratorAgent = cluster.agent(cluster.orchestratorCert);
    plainAgent = cluster.agent();
    cluster.route(A);
    app = await relyingParty(ts);
  });

  after(async () => {
    await cluster?.close();
  });

  test('three processes serve one issuer: same discovery, each ready, each its own process', async () => {
    assert.equal(cluster.nodes.length, 3);
    assert.equal(new Set(cluster.nodes.map((n) => n.pid)).size, 3, 'three processes');
    assert.equal(new Set(cluster.nodes.map((n) => n.port)).size, 3, 'three listeners');
    const discoveries: Json[] = [];
    for (const node of [A, B, C]) {
      assert.equal(cluster.nodes[node]!.issuer, cluster.issuer, 'every process serves the proxy\'s issuer');
      assert.equal(cluster.nodes[node]!.mtlsBaseUrl, cluster.mtlsBaseUrl);
      const ready = await at(node, () => undiciFetch(`${cluster.issuer}/readyz`, { dispatcher: plainAgent }));
      assert.equal(ready.status, 200);
      assert.deepEqual(await ready.json(), { status: 'ready' });
      const discovery = await at(node, () => undiciFetch(`${cluster.issuer}/.well-known/openid-configuration`, { dispatcher: plainAgent }));
      assert.equal(discovery.status, 200);
      discoveries.push(await discovery.json() as Json);
    }
    assert.equal(discoveries[0]!.issuer, cluster.issuer);
    assert.deepEqual((discoveries[0]!.mtls_endpoint_aliases as Json).token_endpoint, `${cluster.mtlsBaseUrl}/token`);
    assert.deepEqual(discoveries[1], discoveries[0]);
    assert.deepEqual(discoveries[2], discoveries[0]);
  });

  test('sessions: signed in at A, the session cookie works at B and C (prompt=none), and it is one session', async () => {
    const browser = new Browser(ts);
    const first = await signInAt(A, browser);
    const atB = await silentAuthorization(B, browser);
    assert.equal(atB.params.get('error'), null, `prompt=none at B: ${atB.params.toString()}`);
    assert.ok(atB.params.get('code'));
    const atC = await silentAuthorization(C, browser);
    assert.equal(atC.params.get('error'), null, `prompt=none at C: ${atC.params.toString()}`);
    assert.ok(atC.params.get('code'));
    // Without the cookie, the same request is refused: the success above was the shared session.
    const stranger = await silentAuthorization(B, new Browser(ts));
    assert.equal(stranger.params.get('error'), 'login_required');
    assert.equal(stranger.params.get('code'), null);

    // The codes of A's sign-in and of B's silent authorization carry the same sign-in event.
    const fromA = ok(await redeem(C, first.callback, first.checks.pkceCodeVerifier));
    const silentCallback = new URL(`${APP.redirect_uri}?code=${encodeURIComponent(atB.params.get('code')!)}`);
    const fromB = ok(await redeem(A, silentCallback, atB.verifier));
    const idA = jose.decodeJwt(String(fromA.id_token));
    const idB = jose.decodeJwt(String(fromB.id_token));
    assert.equal(idB.sub, idA.sub);
    assert.equal(typeof idA.auth_time, 'number');
    assert.equal(idB.auth_time, idA.auth_time, 'one sign-in (auth_time), whichever process issued the code');
  });

  test('codes: issued by A, redeemed at B; the replay at C is invalid_grant and revokes what B issued', async () => {
    const { callback, checks } = await signInAt(A);
    const redeemed = await redeem(B, callback, checks.pkceCodeVerifier);
    const tokens = ok(redeemed);
    assert.equal(jose.decodeProtectedHeader(String(tokens.access_token)).typ, 'at+jwt');
    assert.ok(tokens.refresh_token, 'offline_access: a refresh token');
    assert.deepEqual(jose.decodeJwt(String(tokens.access_token)).cnf, { 'x5t#S256': x5tS256(Buffer.from(derBase64(cluster.clientCert.certPem), 'base64')) });
    assert.deepEqual(ok(await introspect(C, String(tokens.access_token), 'app')).active, true, 'B\'s token is active at C before the replay');

    const replay = await redeem(C, callback, checks.pkceCodeVerifier);
    assert.equal(replay.status, 400);
    assert.equal(replay.body.error, 'invalid_grant');
    assert.equal(replay.body.access_token, undefined);

    // RFC 6749 §4.1.2 / RFC 9700 §4.5: what the code gave is revoked, everywhere.
    assert.deepEqual(ok(await introspect(A, String(tokens.access_token), 'app')), { active: false });
    const refresh = await call(A, 'refresh', '/token', { grant_type: 'refresh_token', refresh_token: String(tokens.refresh_token) }, appAgent, appAuth());
    assert.equal(refresh.status, 400);
    assert.equal(refresh.body.error, 'invalid_grant');

    assert.ok((await auditTypesFor(redeemed.requestId)).includes('code.redeemed'), 'B recorded the redemption');
    // A replay after the redemption is refused by oidc-provider itself (the code reads as consumed),
    // which revokes the grant: C records that revocation and the refusal.
    const atC = await auditTypesFor(replay.requestId);
    assert.ok(atC.includes('grant.revoked') && atC.includes('token.request_refused'), `C recorded the revocation and the refusal: ${atC.join()}`);
    assert.ok(atC.includes('code.replayed'), `C recorded the replay itself: ${atC.join()}`);
    const { rows: replayed } = await cluster.testDb.db.query<{ severity: string; outcome: string }>(
      "SELECT severity, outcome FROM audit_events WHERE type = 'code.replayed' AND request_id = $1", [replay.requestId],
    );
    assert.deepEqual(replayed, [{ severity: 'high', outcome: 'denied' }]);
  });

  test('codes: the same code redeemed at B and C at the same moment is issued once, and the loser revokes it', async () => {
    const { callback, checks } = await signInAt(A);
    const before = cluster.connections();
    cluster.route(B, C); // the two connections go one to B, one to C
    const form = {
      grant_type: 'authorization_code', code: callback.searchParams.get('code')!, redirect_uri: APP.redirect_uri, code_verifier: checks.pkceCodeVerifier,
    };
    const answers = await Promise.all(['race-1', 'race-2'].map((id) => send(cluster.endpoint('/token'), form, appAgent, `scale-out-${id}`, appAuth())));
    const afterRace = cluster.connections();
    assert.deepEqual(afterRace.map((n, i) => n - before[i]!), [0, 1, 1], 'one request at B, one at C');
    const statuses = answers.map((a) => a.status).sort();
    assert.deepEqual(statuses, [200, 400], JSON.stringify(answers.map((a) => ({ status: a.status, error: a.body.error, issued: 'access_token' in a.body }))));
    const winner = answers.find((a) => a.status === 200)!;
    const loser = answers.find((a) => a.status === 400)!;
    assert.equal(loser.body.error, 'invalid_grant');
    assert.deepEqual(ok(await introspect(A, String(winner.body.access_token), 'app')), { active: false }, 'the detected replay revoked the winner\'s token');
  });

  test('tokens: A\'s token is active at B and C, exchanged at B; revoked at C, it is inactive at A and B and no longer exchanged', async () => {
    const { callback, checks } = await signInAt(A);
    const clinician = ok(await redeem(A, callback, checks.pkceCodeVerifier));
    const subjectToken = String(clinician.access_token);
    const subjectClaims = jose.decodeJwt(subjectToken);
    for (const node of [B, C]) {
      const active = ok(await introspect(node, subjectToken, 'app'));
      assert.equal(active.active, true, `A's token at ${NAMES[node]}`);
      assert.equal(active.client_id, APP.client_id);
      assert.equal(active.sub, subjectClaims.sub);
      assert.equal(active.patient, CARE_TEAM_PATIENTS[0]!.id);
    }

    // The chatbot case: the orchestrator exchanges the clinician's token at B.
    const exchanged = await exchange(B, subjectToken);
    const narrow = ok(exchanged);
    assert.equal(narrow.issued_token_type, TOKEN_TYPE_ACCESS_TOKEN);
    assert.equal(narrow.scope, LABS);
    const narrowToken = String(narrow.access_token);
    const claims = jose.decodeJwt(narrowToken);
    assert.equal(claims.sub, subjectClaims.sub);
    assert.equal(claims.client_id, ORCHESTRATOR);
    assert.equal(claims.aud, FHIR);
    assert.deepEqual(claims.act, { sub: ORCHESTRATOR });
    assert.deepEqual(claims.cnf, { 'x5t#S256': x5tS256(Buffer.from(derBase64(cluster.orchestratorCert.certPem), 'base64')) });
    for (const node of [A, C]) {
      const active = ok(await introspect(node, narrowToken, 'orchestrator'));
      assert.equal(active.active, true, `B's exchanged token at ${NAMES[node]}`);
      assert.deepEqual(active.act, { sub: ORCHESTRATOR });
    }

    // The app revokes the clinician's token at C (RFC 7009): the grant goes, and what was derived from it.
    const revoked = await call(C, 'revoke', '/token/revocation', { token: subjectToken, token_type_hint: 'access_token' }, appAgent, appAuth());
    assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
    for (const node of [A, B]) {
      assert.deepEqual(ok(await introspect(node, subjectToken, 'app')), { active: false }, `revoked token at ${NAMES[node]}`);
      assert.deepEqual(ok(await introspect(node, narrowToken, 'orchestrator')), { active: false }, `exchanged token at ${NAMES[node]}`);
    }
    const refused = await exchange(B, subjectToken);
    assert.equal(refused.status, 400, JSON.stringify(refused.body));
    assert.equal(refused.body.error, 'invalid_grant');
    assert.equal(refused.body.access_token, undefined);

    assert.ok((await auditTypesFor(exchanged.requestId)).includes('exchange.allowed'), 'B recorded the exchange');
    assert.ok((await auditTypesFor(revoked.requestId)).includes('token.revoked'), 'C recorded the revocation');
    const { rows } = await cluster.testDb.db.query<{ rule: string }>(
      "SELECT rule FROM audit_events WHERE type = 'exchange.refused' AND request_id = $1", [refused.requestId],
    );
    assert.deepEqual(rows.map((r) => r.rule), ['subject_token_inactive']);
  });

  test('configuration: an exchange policy removed by the CLI is enforced by every process at once', async () => {
    const { callback, checks } = await signInAt(B);
    const subjectToken = String(ok(await redeem(B, callback, checks.pkceCodeVerifier)).access_token);
    // Each process has just used the policy (whatever it keeps in memory, it holds it now).
    for (const node of [A, B, C]) ok(await exchange(node, subjectToken));

    const removed = result(await runCli(cluster.env, ['exchange-policy', 'remove', '--actor', ORCHESTRATOR, '--audience', FHIR]));
    assert.deepEqual(removed, { actorClientId: ORCHESTRATOR, audience: FHIR, removed: true });
    const removedAt = Date.now();
    for (const node of [A, B, C]) {
      // A cache fed by change notifications may need a moment to hear of the change: two seconds at most.
      let answer = await exchange(node, subjectToken);
      while (answer.status === 200 && Date.now() - removedAt < 2_000) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        answer = await exchange(node, subjectToken);
      }
      assert.equal(answer.status, 400, `process ${NAMES[node]} still exchanges ${Date.now() - removedAt} ms after the policy was removed`);
      assert.equal(answer.body.error, 'unauthorized_client');
      const { rows } = await cluster.testDb.db.query<{ rule: string }>(
        "SELECT rule FROM audit_events WHERE type = 'exchange.refused' AND request_id = $1", [answer.requestId],
      );
      assert.deepEqual(rows.map((r) => r.rule), ['no_exchange_policy']);
    }
  });

  test('rate limits: login attempts for one username are counted once across A, B and C', async () => {
    const username = `probe.${Date.now().toString(36)}`;
    const browser = new Browser(ts);
    const url = oidc.buildAuthorizationUrl(app, {
      redirect_uri: APP.redirect_uri, scope: 'openid', state: 'probe',
      code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()), code_challenge_method: 'S256',
    });
    const page = await at(A, async () => browser.follow(await browser.get(url)));
    const action = /action="(\/interaction\/[^"]+\/login)"/.exec(page.body)?.[1];
    assert.ok(action, 'a login form');
    // An empty password is refused before any hashing: the attempt costs the limiter a point and nothing else.
    const attempt = (node: number) => at(node, () => browser.post(new URL(action, cluster.issuer), { username, password: '' }));
    for (let i = 0; i < LOGIN_USER_POINTS; i += 1) {
      const step = await attempt(i % 3);
      assert.equal(step.status, 401, `attempt ${i + 1} at ${NAMES[i % 3]} is within the limit`);
    }
    // No process has seen more than three of them: only a shared counter refuses now, at all three.
    for (const node of [C, A, B]) {
      const res = await at(node, async () => {
        const r = await ts.fetch(new URL(action, cluster.issuer), {
          method: 'POST', body: new URLSearchParams({ username, password: '' }).toString(),
          headers: { cookie: browser.jar.header(), 'content-type': 'application/x-www-form-urlencoded' },
        });
        await r.arrayBuffer();
        return { status: r.status, retryAfter: r.headers.get('retry-after') };
      });
      assert.equal(res.status, 429, `attempt over the limit at ${NAMES[node]}`);
      assert.ok(Number(res.retryAfter) >= 1, 'Retry-After');
    }
    const { rows } = await cluster.testDb.db.query<{ rule: string }>(
      "SELECT rule FROM audit_events WHERE type = 'rate_limit.exceeded' AND details->>'limiter' = 'loginUser'",
    );
    assert.deepEqual(rows.map((r) => r.rule), ['rate_limit.login_user'], 'one event for the exhausted username, whichever process refused');
  });

  test('rate limits: one client\'s token endpoint budget is shared by A, B and C', async () => {
    const clientId = `probe-${Date.now().toString(36)}`;
    for (let i = 0; i < CLIENT_POINTS; i += 1) {
      const res = await call(i % 3, 'probe', '/token', { grant_type: 'client_credentials', client_id: clientId, client_secret: 'wrong-secret' }, plainAgent);
      assert.equal(res.status, 401, `request ${i + 1} at ${NAMES[i % 3]}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error, 'invalid_client');
    }
    for (const node of [A, B, C]) {
      const res = await call(node, 'probe', '/token', { grant_type: 'client_credentials', client_id: clientId, client_secret: 'wrong-secret' }, plainAgent);
      assert.equal(res.status, 429, `over the shared budget at ${NAMES[node]}`);
      assert.equal(res.body.error, 'temporarily_unavailable');
      assert.ok(Number(res.headers.get('retry-after')) >= 1, 'Retry-After');
    }
  });

  test('key rotation: rotated by the CLI, every process publishes the new keys, signs with them and accepts them', async () => {
    const jwksAt = async (node: number) => {
      const res = await at(node, () => undiciFetch(`${cluster.issuer}/jwks`, { dispatcher: plainAgent }));
      assert.equal(res.status, 200);
      return await res.json() as jose.JSONWebKeySet;
    };
    const kids = (set: jose.JSONWebKeySet) => set.keys.map((k) => k.kid!);
    const initial = kids(await jwksAt(A));
    assert.deepEqual(kids(await jwksAt(B)), initial);
    assert.deepEqual(kids(await jwksAt(C)), initial);
    const oldToken = String(ok(await clientCredentials(A)).access_token);
    const oldKid = jose.decodeProtectedHeader(oldToken).kid;
    assert.ok(oldKid && initial.includes(oldKid));

    const rotated = result(await runCli(cluster.env, ['keys', 'rotate'])) as { added: string[]; retired: string[]; removed: string[]; activeFrom: string };
    assert.equal(rotated.added.length, 2);
    assert.deepEqual([...rotated.retired].sort(), [...initial].sort());
    assert.deepEqual(rotated.removed, []);

    // Each process notices the new key file within KEYS_RELOAD_INTERVAL seconds (no restart, no signal).
    const deadline = Date.now() + KEYS_RELOAD_SECONDS * 1000 + 5_000;
    const published: string[][] = [];
    for (const node of [A, B, C]) {
      let set = kids(await jwksAt(node));
      while (!rotated.added.every((kid) => set.includes(kid)) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        set = kids(await jwksAt(node));
      }
      published.push(set);
    }
    for (const [node, set] of published.entries()) {
      assert.deepEqual([...set].sort(), [...rotated.added, ...initial].sort(), `process ${NAMES[node]} publishes the new keys and keeps the retired ones`);
    }

    const newEs256 = (await jwksAt(A)).keys.find((k) => rotated.added.includes(k.kid!) && k.alg === 'ES256')!.kid;
    // Published ahead: the new key signs only from activeFrom (2 x KEYS_RELOAD_INTERVAL after the
    // rotation), when every process has long published it.
    const activeFrom = Date.parse(rotated.activeFrom);
    if (Date.now() < activeFrom - 500) {
      for (const node of [A, B, C]) {
        const kid = jose.decodeProtectedHeader(String(ok(await clientCredentials(node)).access_token)).kid;
        if (Date.now() < activeFrom) assert.equal(kid, oldKid, `process ${NAMES[node]} still signs with the old key before activeFrom`);
      }
    }
    // Each process switches at its first key check after activeFrom (every KEYS_RELOAD_INTERVAL).
    // Few requests: the service's token budget (RATE_LIMIT_CLIENT_POINTS) is small in this cluster.
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, activeFrom + KEYS_RELOAD_SECONDS * 1000 + 300 - Date.now())));
    for (const node of [A, B, C]) {
      let token = String(ok(await clientCredentials(node)).access_token);
      for (let attempt = 0; attempt < 4 && jose.decodeProtectedHeader(token).kid !== newEs256; attempt += 1) {
        await new Promise((resolve) => setTimeout(resolve, 500));
        token = String(ok(await clientCredentials(node)).access_token);
      }
      assert.equal(jose.decodeProtectedHeader(token).kid, newEs256, `process ${NAMES[node]} signs with the new key after activeFrom`);
      const verifier = (node + 1) % 3;
      const { payload } = await jose.jwtVerify(token, jose.createLocalJWKSet(await jwksAt(verifier)), { issuer: cluster.issuer, typ: 'at+jwt', audience: FHIR });
      assert.equal(payload.client_id, SERVICE.client_id, `verified with ${NAMES[verifier]}'s JWKS`);
      const introspector = (node + 2) % 3;
      assert.equal(ok(await introspect(introspector, token, 'service')).active, true, `${NAMES[node]}'s new token active at ${NAMES[introspector]}`);
    }
    // A token signed before the rotation stays valid everywhere until it expires.
    for (const node of [A, B, C]) {
      assert.equal(ok(await introspect(node, oldToken, 'service')).active, true, `the pre-rotation token at ${NAMES[node]}`);
    }
    await jose.jwtVerify(oldToken, jose.createLocalJWKSet(await jwksAt(C)), { issuer: cluster.issuer, typ: 'at+jwt' });
  });

  test('audit: one unbroken chain holding the events of A, B, C and the CLI', async () => {
    const verified = result(await runCli(cluster.env, ['audit', 'verify']));
    const { rows: [stats] } = await cluster.testDb.db.query<{ n: number; head: number }>(
      'SELECT count(*)::int AS n, max(seq)::int AS head FROM audit_events',
    );
    assert.equal(verified.ok, true, JSON.stringify(verified));
    assert.equal(verified.count, stats!.n, 'every record is in the chain');
    assert.equal(verified.headSeq, stats!.head);

    const { rows } = await cluster.testDb.db.query<{ request_id: string; type: string; seq: string }>(
      "SELECT request_id, type, seq::text FROM audit_events WHERE request_id LIKE 'scale-out-%' ORDER BY seq",
    );
    const nodeOf = new Map(tagged.map((t) => [t.requestId, t.node]));
    const byNode = [A, B, C].map((node) => rows.filter((r) => nodeOf.get(r.request_id) === node));
    for (const node of [A, B, C]) {
      const sent = new Set(tagged.filter((t) => t.node === node).map((t) => t.what));
      assert.ok(byNode[node]!.length > 0, `events written by process ${NAMES[node]} (it answered: ${[...sent].join(', ')})`);
    }
    // The writers took turns: the chain is not three chains laid end to end.
    const writers = rows.map((r) => nodeOf.get(r.request_id)).filter((n) => n !== undefined);
    const switches = writers.filter((n, i) => i > 0 && n !== writers[i - 1]).length;
    assert.ok(switches >= 6, `processes alternate in the chain (${switches} switches)`);
    const { rows: cli } = await cluster.testDb.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE type = 'admin.keys_rotated'",
    );
    assert.equal(cli[0]!.n, 1, 'the CLI\'s record is in the same chain');
  });

  test('all three stop cleanly', async () => {
    const exits = await cluster.stopNodes();
    for (const exit of exits) {
      assert.equal(exit.signal, null, `process ${NAMES[exit.node]} was killed: ${exit.stderr}`);
      assert.equal(exit.code, 0, `process ${NAMES[exit.node]} exit code: ${exit.stderr}`);
      assert.ok(exit.ms < 10_000, `process ${NAMES[exit.node]} took ${exit.ms} ms to stop`);
    }
  });
});
