// RFC 8693 token exchange end to end over real TLS: the chatbot flow of DESIGN.md §2 (clinician app →
// orchestrator → example FHIR server), then the refusal matrix, each row with its exact error.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';
import * as oidc from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';

import { startExampleFhirServer, type RunningExampleFhirServer } from '../examples/fhir-server/server.ts';
import { TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN } from '../src/exchange/decision.ts';
import { ACR_PASSWORD, ACR_PHISHING_RESISTANT } from '../src/mfa/assurance.ts';
import { setStepUpRule } from '../src/mfa/step-up-rules.ts';
import { x5tS256 } from '../src/mtls/index.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { digestClientSecret } from '../src/oidc/client-secrets.ts';
import { Browser, pageOptions, type PasskeyAnswerer } from './support/login-flow.ts';
import { SoftAuthenticator } from './support/soft-authenticator.ts';
import { derBase64, devCa, issueClientCertificate, type KeyPairPem } from './support/pki.ts';
import { relyingParty } from './support/relying-party.ts';
import {
  APP, basicAuth, CARE_TEAM_PATIENTS, CLINICIAN, FHIR, SERVICE, startTestServer, TOOLS, type TestServer,
} from './support/test-server.ts';

const ORCHESTRATOR = 'orchestrator';
const LAB_TOOL = 'lab-tool';
const IDLE_AGENT = 'idle-agent';
const SECRET_AGENT = { client_id: 'secret-agent', client_secret: 'secret-agent-secret-0123456789-0123456789' };
const LABS = 'patient/Observation.rs?category=laboratory';
const SHORT_LIVED = 'https://short.test/r4';

const thumbprint = (certPem: string) => x5tS256(Buffer.from(derBase64(certPem), 'base64'));

describe('token exchange (RFC 8693)', () => {
  let ts: TestServer;
  let fhir: RunningExampleFhirServer;
  let orchestrator: KeyPairPem;
  let labTool: KeyPairPem;
  let idleAgent: KeyPairPem;
  let app: oidc.Configuration;
  const agents: Agent[] = [];

  function agent(cert?: KeyPairPem | 'app'): Agent {
    const material = cert === 'app' ? { cert: ts.clientCert.certPem, key: ts.clientCert.keyPem } : cert ? { cert: cert.certPem, key: cert.keyPem } : {};
    const a = new Agent({ connect: { ca: ts.caPem, ...material } });
    agents.push(a);
    return a;
  }

  async function post(url: string, params: Record<string, string | string[]>, cert?: KeyPairPem, headers: Record<string, string> = {}) {
    const body = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) for (const one of [v].flat()) body.append(k, one);
    const res = await undiciFetch(url, {
      method: 'POST', body: body.toString(), dispatcher: agent(cert),
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    });
    const text = await res.text();
    return { status: res.status, body: (text ? JSON.parse(text) : {}) as Record<string, unknown> };
  }

  function exchange(subjectToken: string, params: Record<string, string | string[] | undefined> = {}, cert: KeyPairPem = orchestrator, clientId = ORCHESTRATOR) {
    const form: Record<string, string | string[]> = {
      grant_type: TOKEN_EXCHANGE_GRANT,
      client_id: clientId,
      subject_token: subjectToken,
      subject_token_type: TOKEN_TYPE_ACCESS_TOKEN,
      resource: FHIR,
      scope: LABS,
    };
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined) delete form[k];
      else form[k] = v;
    }
    return post(ts.endpoint('/token'), form, cert);
  }

  /** The clinician signs in through the app (code + PKCE), token bound to the app's certificate. */
  async function clinicianTokens(extraScope = '', audience = FHIR, signIn: { acr_values?: string; passkey?: PasskeyAnswerer } = {}) {
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(app, {
      redirect_uri: APP.redirect_uri, scope: `openid fhirUser launch/patient patient/Observation.rs${extraScope}`, aud: audience, state,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256', prompt: 'consent',
      ...(signIn.acr_values ? { acr_values: signIn.acr_values } : {}),
    });
    const callback = await new Browser(ts).authorize(url, CLINICIAN.username, CLINICIAN.password, {
      patient: CARE_TEAM_PATIENTS[0]!.id, ...(signIn.passkey ? { passkey: signIn.passkey } : {}),
    });
    return oidc.authorizationCodeGrant(app, callback, { pkceCodeVerifier: verifier, expectedState: state });
  }

  async function refused(res: { status: number; body: Record<string, unknown> }, status: number, error: string, rule: string) {
    assert.equal(res.status, status, JSON.stringify(res.body));
    assert.equal(res.body.error, error);
    assert.equal(res.body.access_token, undefined);
    assert.ok(typeof res.body.error_description === 'string' && res.body.error_description !== 'grant request is invalid', 'says why');
    const { rows } = await ts.testDb.db.query<{ rule: string }>(
      "SELECT rule FROM audit_events WHERE type = 'exchange.refused' ORDER BY seq DESC LIMIT 1",
    );
    assert.equal(rows[0]?.rule, rule);
  }

  before(async () => {
    // Passkeys only when a request needs one: the clinician's everyday sign-in is the password.
    ts = await startTestServer({ env: { MFA_AT_LOGIN: 'on_demand' } });
    const ca = await devCa(ts.keysDir);
    orchestrator = await issueClientCertificate(ca, ORCHESTRATOR);
    labTool = await issueClientCertificate(ca, LAB_TOOL);
    idleAgent = await issueClientCertificate(ca, IDLE_AGENT);
    const workload = (id: string) => ({
      client_id: id, token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: `CN=${id}`,
      grant_types: [TOKEN_EXCHANGE_GRANT], response_types: [], redirect_uris: [],
    });
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      resourceServers: [{ identifier: SHORT_LIVED, name: 'FHIR with one-second tokens', scope: 'patient/Observation.rs', accessTokenTtl: 1 }],
      clients: [
        workload(ORCHESTRATOR), workload(LAB_TOOL), workload(IDLE_AGENT),
      ],
      exchangePolicies: [
        { actor: ORCHESTRATOR, audience: FHIR, subjectClients: [APP.client_id], scope: 'patient/Observation.rs', maxDepth: 2 },
        { actor: LAB_TOOL, audience: FHIR, subjectClients: [ORCHESTRATOR], scope: 'patient/Observation.rs', maxDepth: 1 },
      ],
    }));
    app = await relyingParty(ts);
    const tls = { certPem: ts.server.tls.certPem, keyPem: ts.server.tls.keyPem, caPem: ts.server.tls.clientCaPem };
    fhir = await startExampleFhirServer({
      issuer: ts.issuer, audience: FHIR, tls,
      fetch: (url, init) => undiciFetch(url, { ...init, dispatcher: ts.dispatcher } as never),
    });
  });
  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await fhir?.stop();
    await ts?.stop();
  });

  test('the chatbot flow: narrow, bound to the orchestrator, act names it; FHIR reads labs only; revoking the clinician\'s grant ends it', async () => {
    const clinician = await clinicianTokens(' offline_access');
    const res = await exchange(clinician.access_token);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(res.body.issued_token_type, TOKEN_TYPE_ACCESS_TOKEN);
    assert.equal(res.body.token_type, 'Bearer');
    assert.equal(res.body.refresh_token, undefined);
    assert.equal(res.body.scope, LABS);
    const token = String(res.body.access_token);
    assert.equal(jose.decodeProtectedHeader(token).typ, 'at+jwt');
    const claims = jose.decodeJwt(token);
    const subject = jose.decodeJwt(clinician.access_token);
    assert.equal(claims.sub, subject.sub, 'sub is the clinician');
    assert.equal(claims.client_id, ORCHESTRATOR);
    assert.equal(claims.aud, FHIR);
    assert.equal(claims.scope, LABS);
    assert.equal(claims.patient, CARE_TEAM_PATIENTS[0]!.id);
    assert.equal(claims.fhirUser, CLINICIAN.fhirUser);
    assert.equal(claims.acr, subject.acr);
    assert.deepEqual(claims.amr, subject.amr);
    assert.deepEqual(claims.act, { sub: ORCHESTRATOR });
    assert.deepEqual(claims.cnf, { 'x5t#S256': thumbprint(orchestrator.certPem) });
    assert.ok(claims.jti);
    assert.ok(claims.exp! - claims.iat! <= 300 && claims.exp! <= subject.exp!, 'no longer than policy and subject');

    const introspect = () => post(ts.endpoint('/token/introspection'), { token, client_id: ORCHESTRATOR }, orchestrator);
    const active = await introspect();
    assert.equal(active.body.active, true, JSON.stringify(active.body));
    assert.deepEqual(active.body.act, { sub: ORCHESTRATOR });
    assert.deepEqual(active.body.cnf, { 'x5t#S256': thumbprint(orchestrator.certPem) });
    assert.equal(active.body.patient, CARE_TEAM_PATIENTS[0]!.id);
    assert.equal(active.body.scope, LABS);

    const read = async (path: string, cert: KeyPairPem | 'app') => {
      const r = await undiciFetch(`${fhir.url}${path}`, { headers: { authorization: `Bearer ${token}` }, dispatcher: agent(cert) });
      return { status: r.status, challenge: r.headers.get('www-authenticate'), body: await r.json() as Record<string, unknown> };
    };
    const labs = await read('/Observation?patient=p1&category=laboratory', orchestrator);
    assert.equal(labs.status, 200, JSON.stringify(labs.body));
    assert.ok((labs.body.total as number) >= 1);
    assert.equal((await read('/Observation?patient=p1&category=laboratory', 'app')).status, 401, 'the app\'s certificate does not fit');
    const meds = await read('/MedicationRequest?patient=p1', orchestrator);
    assert.equal(meds.status, 403);
    assert.match(meds.challenge ?? '', /error="insufficient_scope"/);

    const { rows } = await ts.testDb.db.query<{ rule: string; actor_client: string; details: Record<string, unknown> }>(
      "SELECT rule, actor_client, details FROM audit_events WHERE type = 'exchange.allowed' ORDER BY seq DESC LIMIT 1",
    );
    assert.equal(rows[0]?.rule, 'exchange_policy');
    assert.equal(rows[0]?.actor_client, ORCHESTRATOR);
    assert.equal(rows[0]?.details.scope_granted, LABS);
    assert.ok(!JSON.stringify(rows[0]).includes(clinician.access_token.slice(-20)), 'no token value in the audit');

    // The clinician's grant goes (refresh token revoked): the exchanged token is inactive, no new exchange.
    await oidc.tokenRevocation(app, clinician.refresh_token!);
    assert.deepEqual(await introspect().then((r) => r.body), { active: false });
    await refused(await exchange(clinician.access_token), 400, 'invalid_grant', 'subject_token_inactive');
  });

  test('openid-client as the orchestrator: TlsClientAuth at the mTLS alias, generic grant request', async () => {
    const clinician = await clinicianTokens();
    const dispatcher = agent(orchestrator);
    const withCert = ((url: string, options: Record<string, unknown>) =>
      undiciFetch(url, { ...options, dispatcher } as never)) as unknown as oidc.CustomFetch;
    const config = await oidc.discovery(new URL(ts.issuer), ORCHESTRATOR, { use_mtls_endpoint_aliases: true }, oidc.TlsClientAuth(), {
      [oidc.customFetch]: withCert,
    });
    config[oidc.customFetch] = withCert;
    const response = await oidc.genericGrantRequest(config, TOKEN_EXCHANGE_GRANT, {
      subject_token: clinician.access_token,
      subject_token_type: TOKEN_TYPE_ACCESS_TOKEN,
      resource: FHIR,
      scope: LABS,
    });
    assert.equal(response.issued_token_type, TOKEN_TYPE_ACCESS_TOKEN);
    assert.equal(response.scope, LABS);
    assert.deepEqual(jose.decodeJwt(response.access_token).cnf, { 'x5t#S256': thumbprint(orchestrator.certPem) });
  });

  test('two server processes on one database: exchange on one, revocation on the other, inactive on the first', async () => {
    const second = await startTestServer({
      testDb: ts.testDb, keysDir: ts.keysDir, seed: null, env: { ISSUER: ts.issuer, MTLS_BASE_URL: ts.mtlsBaseUrl },
    });
    try {
      const clinician = await clinicianTokens(' offline_access');
      const res = await exchange(clinician.access_token);
      assert.equal(res.status, 200, JSON.stringify(res.body));
      const secondMtls = `https://localhost:${second.server.mtlsPort}`;
      const revoked = await post(`${secondMtls}/token/revocation`, { token: clinician.refresh_token!, token_type_hint: 'refresh_token' }, undefined,
        { authorization: basicAuth(APP.client_id, APP.client_secret) });
      assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
      const introspected = await post(ts.endpoint('/token/introspection'), { token: String(res.body.access_token), client_id: ORCHESTRATOR }, orchestrator);
      assert.deepEqual(introspected.body, { active: false });
    } finally {
      await second.stop();
    }
  });

  describe('refusals', () => {
    let subject: string;
    before(async () => {
      subject = (await clinicianTokens()).access_token;
    });

    test('scope wider than the subject\'s → invalid_scope', async () => {
      await refused(await exchange(subject, { scope: 'patient/Patient.rs' }), 400, 'invalid_scope', 'subject_scope');
    });
    test('scope outside the actor\'s ceiling → invalid_scope', async () => {
      const wide = (await clinicianTokens(' patient/Patient.rs')).access_token;
      assert.match(String(jose.decodeJwt(wide).scope), /patient\/Patient\.rs/);
      await refused(await exchange(wide, { scope: 'patient/Patient.rs' }), 400, 'invalid_scope', 'actor_ceiling');
    });
    test('audience not allowed for the actor → invalid_target', async () => {
      await refused(await exchange(subject, { resource: TOOLS }), 400, 'invalid_target', 'audience_not_allowed');
    });
    test('two audiences → invalid_target', async () => {
      await refused(await exchange(subject, { resource: [FHIR, TOOLS] }), 400, 'invalid_target', 'single_audience');
    });
    test('a scope filter naming a patient → invalid_scope, and the audit record holds no patient id', async () => {
      await refused(await exchange(subject, { scope: 'patient/Observation.rs?subject=Patient/p2' }), 400, 'invalid_scope', 'patient_filter');
      const { rows } = await ts.testDb.db.query<{ details: unknown }>(
        "SELECT details FROM audit_events WHERE type = 'exchange.refused' ORDER BY seq DESC LIMIT 1",
      );
      assert.doesNotMatch(JSON.stringify(rows[0]), /Patient\/p2/);
    });
    test('missing scope → invalid_request', async () => {
      await refused(await exchange(subject, { scope: undefined }), 400, 'invalid_request', 'scope_required');
    });
    test('unknown requested_token_type → invalid_request', async () => {
      await refused(await exchange(subject, { requested_token_type: 'urn:ietf:params:oauth:token-type:refresh_token' }), 400, 'invalid_request', 'requested_token_type');
    });
    test('wrong subject_token_type → invalid_request', async () => {
      await refused(await exchange(subject, { subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' }), 400, 'invalid_request', 'subject_token_type');
    });
    test('malformed subject token → invalid_grant', async () => {
      await refused(await exchange('not-a-token'), 400, 'invalid_grant', 'subject_token_inactive');
    });
    test('foreign-issuer JWT (right shape, our claims, another key) → invalid_grant', async () => {
      const key = await jose.generateKeyPair('ES256');
      const forged = await new jose.SignJWT({ ...jose.decodeJwt(subject) })
        .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: jose.decodeProtectedHeader(subject).kid! })
        .sign(key.privateKey);
      await refused(await exchange(forged), 400, 'invalid_grant', 'subject_token_inactive');
    });
    test('a client-credentials token as subject (no clinician) → invalid_grant', async () => {
      const cc = await post(ts.endpoint('/token'), { grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }, undefined,
        { authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) });
      const serviceToken = await ts.fetch(ts.endpoint('/token'), {
        method: 'POST',
        body: new URLSearchParams({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }).toString(),
        headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) },
      }).then((r) => r.json() as Promise<{ access_token: string }>);
      assert.equal(cc.status, 400, 'no certificate: no token (bound by default)');
      await refused(await exchange(serviceToken.access_token), 400, 'invalid_grant', 'subject_token_inactive');
    });
    test('expired subject token → invalid_grant', async () => {
      const brief = (await clinicianTokens('', SHORT_LIVED)).access_token;
      await new Promise((resolve) => setTimeout(resolve, 2_100));
      await refused(await exchange(brief), 400, 'invalid_grant', 'subject_token_inactive');
    });
    test('an ID token presented as the subject access token → invalid_grant', async () => {
      const withId = await clinicianTokens();
      assert.ok(withId.id_token);
      await refused(await exchange(withId.id_token!, { subject_token_type: 'urn:ietf:params:oauth:token-type:jwt' }), 400, 'invalid_grant', 'subject_token_inactive');
    });
    test('a refresh token presented as the subject access token → invalid_grant', async () => {
      const withRefresh = await clinicianTokens(' offline_access');
      await refused(await exchange(withRefresh.refresh_token!), 400, 'invalid_grant', 'subject_token_inactive');
    });
    test('revoking the subject access token makes the exchanged token inactive', async () => {
      const clinician = await clinicianTokens();
      const task = await exchange(clinician.access_token);
      assert.equal(task.status, 200, JSON.stringify(task.body));
      await oidc.tokenRevocation(app, clinician.access_token);
      const introspected = await post(ts.endpoint('/token/introspection'), { token: String(task.body.access_token), client_id: ORCHESTRATOR }, orchestrator);
      assert.deepEqual(introspected.body, { active: false });
    });
    test('revoked subject token → invalid_grant', async () => {
      const revoked = (await clinicianTokens()).access_token;
      await oidc.tokenRevocation(app, revoked);
      await refused(await exchange(revoked), 400, 'invalid_grant', 'subject_token_inactive');
    });
    test('actor without a policy → unauthorized_client', async () => {
      await refused(await exchange(subject, {}, idleAgent, IDLE_AGENT), 400, 'unauthorized_client', 'no_exchange_policy');
    });
    test('actor authenticated without mTLS (client secret): never registered; a legacy row is refused at the token endpoint', async () => {
      const secretAgent = { ...SECRET_AGENT, grant_types: [TOKEN_EXCHANGE_GRANT], response_types: [], redirect_uris: [] };
      await assert.rejects(applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({ clients: [secretAgent] })),
        /token_endpoint_auth_method must be tls_client_auth or self_signed_tls_client_auth for token exchange/);
      // A row written before the policy existed (or by hand) is checked again whenever it is loaded.
      await ts.testDb.db.query('INSERT INTO clients (client_id, metadata) VALUES ($1, $2::jsonb)', [SECRET_AGENT.client_id, JSON.stringify({
        ...secretAgent, client_secret: digestClientSecret(ts.server.secrets.clientSecretKey, SECRET_AGENT.client_secret),
      })]);
      const res = await post(ts.endpoint('/token'), {
        grant_type: TOKEN_EXCHANGE_GRANT, subject_token: subject, subject_token_type: TOKEN_TYPE_ACCESS_TOKEN, resource: FHIR, scope: LABS,
      }, orchestrator, { authorization: basicAuth(SECRET_AGENT.client_id, SECRET_AGENT.client_secret) });
      assert.equal(res.status, 400, JSON.stringify(res.body));
      assert.equal(res.body.error, 'invalid_client_metadata');
      assert.equal(res.body.access_token, undefined);
    });
    test('step-up loop (RFC 9470): password-only token refused with insufficient_user_authentication; re-authorized with the passkey it succeeds; the FHIR server challenges the weak token', async () => {
      // Labs for the orchestrator need a recent passkey sign-in; the app's own sign-in is not covered.
      await setStepUpRule(ts.testDb.db, { clientId: ORCHESTRATOR, scope: 'patient/Observation.r', acrValues: [ACR_PHISHING_RESISTANT], maxAge: 600 });
      const key = new SoftAuthenticator();
      const strictFhir = await startExampleFhirServer({
        issuer: ts.issuer, audience: FHIR,
        tls: { certPem: ts.server.tls.certPem, keyPem: ts.server.tls.keyPem, caPem: ts.server.tls.clientCaPem },
        fetch: (url, init) => undiciFetch(url, { ...init, dispatcher: ts.dispatcher } as never),
        stepUp: [{ resourceType: 'Observation', acrValues: [ACR_PHISHING_RESISTANT], maxAgeSeconds: 600 }],
      });
      try {
        const weak = await clinicianTokens();
        assert.equal(jose.decodeJwt(weak.access_token).acr, ACR_PASSWORD);
        const res = await exchange(weak.access_token);
        await refused(res, 400, 'insufficient_user_authentication', 'step_up_required');
        assert.equal(res.body.acr_values, ACR_PHISHING_RESISTANT);
        assert.equal(res.body.max_age, 600);

        // The resource server says the same to the app holding the weak token (RFC 9470 §3).
        const challenge = await undiciFetch(`${strictFhir.url}/Observation?category=laboratory`, {
          headers: { authorization: `Bearer ${weak.access_token}` }, dispatcher: agent('app'),
        });
        assert.equal(challenge.status, 401);
        const header = challenge.headers.get('www-authenticate') ?? '';
        assert.match(header, /error="insufficient_user_authentication"/);
        assert.match(header, new RegExp(`acr_values="${ACR_PHISHING_RESISTANT}"`));
        assert.match(header, /max_age="?600"?/);

        // The clinician registers a passkey, the app asks again with the acr_values it was given.
        const browser = new Browser(ts);
        const account = await browser.signIn(await browser.follow(await browser.get(new URL('/account', ts.issuer))), CLINICIAN.username, CLINICIAN.password);
        const csrf = /name="csrf" value="([^"]+)"/.exec(account.body)![1]!;
        const registration = key.register(pageOptions(account.body, 'register'), { origin: new URL(ts.issuer).origin });
        assert.equal((await browser.post(new URL('/account/passkeys', ts.issuer), { csrf, name: 'Laptop', credential: JSON.stringify(registration) })).status, 303);
        const strong = await clinicianTokens('', FHIR, {
          acr_values: String(res.body.acr_values),
          passkey: (options) => key.authenticate(options, { origin: new URL(ts.issuer).origin }),
        });
        assert.equal(jose.decodeJwt(strong.access_token).acr, ACR_PHISHING_RESISTANT);
        const exchanged = await exchange(strong.access_token);
        assert.equal(exchanged.status, 200, JSON.stringify(exchanged.body));
        assert.equal(jose.decodeJwt(String(exchanged.body.access_token)).acr, ACR_PHISHING_RESISTANT, 'the exchanged token keeps the acr');
        const labs = await undiciFetch(`${strictFhir.url}/Observation?category=laboratory`, {
          headers: { authorization: `Bearer ${String(exchanged.body.access_token)}` }, dispatcher: agent(orchestrator),
        });
        assert.equal(labs.status, 200);
      } finally {
        await ts.testDb.db.query('DELETE FROM step_up_rules');
        await ts.testDb.db.query('DELETE FROM webauthn_credentials');
        await strictFhir.stop();
      }
      assert.equal((await exchange(subject)).status, 200, 'without the rule a password-only token is exchanged');
    });

    test('actor not permitted for this subject\'s client → invalid_grant', async () => {
      await refused(await exchange(subject, {}, labTool, LAB_TOOL), 400, 'invalid_grant', 'actor_not_permitted_for_subject');
    });

    describe('chains', () => {
      let exchanged: string;
      before(async () => {
        const res = await exchange(subject, { scope: LABS });
        assert.equal(res.status, 200, JSON.stringify(res.body));
        exchanged = String(res.body.access_token);
      });

      test('the exchanged token used again by the same actor (wider scope or longer life) → invalid_grant', async () => {
        await refused(await exchange(exchanged, { scope: 'patient/Observation.rs' }), 400, 'invalid_grant', 'actor_repeated');
        await refused(await exchange(exchanged, { scope: LABS }), 400, 'invalid_grant', 'actor_repeated');
      });
      test('a chain deeper than the next actor\'s policy allows → invalid_grant', async () => {
        await refused(await exchange(exchanged, {}, labTool, LAB_TOOL), 400, 'invalid_grant', 'delegation_depth');
      });
    });
  });

  test('a revocation of the clinician\'s grant landing while the exchange runs takes the new token back', async () => {
    const clinician = await clinicianTokens();
    // The revocation lands right after the child grant is linked, before the token is saved: exactly
    // the window the exchange's final check is for (a trigger plays the concurrent revocation).
    await ts.testDb.db.exec(`
      CREATE FUNCTION test_revoke_parent() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        DELETE FROM oidc_payloads WHERE model = 'Grant' AND id = NEW.parent_grant_id;
        RETURN NEW;
      END $$;
      CREATE TRIGGER test_revoke_parent AFTER INSERT ON grant_links FOR EACH ROW EXECUTE FUNCTION test_revoke_parent();`);
    const exchangedTokens = async () => (await ts.testDb.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM oidc_payloads WHERE model = 'AccessToken' AND payload->>'gty' = 'token_exchange'",
    )).rows[0]!.n;
    try {
      const before = await exchangedTokens();
      const res = await exchange(clinician.access_token);
      await refused(res, 400, 'invalid_grant', 'subject_revoked_during_exchange');
      assert.equal(res.body.error_description, 'subject token is not active');
      assert.equal(await exchangedTokens(), before, 'the token saved meanwhile is gone');
    } finally {
      await ts.testDb.db.exec('DROP TRIGGER test_revoke_parent ON grant_links; DROP FUNCTION test_revoke_parent()');
    }
    // Without a concurrent revocation the same request would have worked: the clinician's token is now simply dead.
    await refused(await exchange(clinician.access_token), 400, 'invalid_grant', 'subject_token_inactive');
  });
});
