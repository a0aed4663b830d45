// SMART App Launch with a real relying party (openid-client) and the real login/consent pages:
// standalone launch with a care-team patient picker, EHR launch, and the scope policy
// (requested ∩ resource server ∩ client ceiling ∩ role, refusals with invalid_scope).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';
import * as oidc from 'openid-client';

import { createUser } from '../src/accounts/users.ts';
import { addCareTeamMember, endCareTeamMembership } from '../src/smart/care-team.ts';
import { createLaunch } from '../src/smart/launch-contexts.ts';
import { Browser, consentFields } from './support/login-flow.ts';
import { relyingParty } from './support/relying-party.ts';
import {
  APP, CARE_TEAM_PATIENTS, CLINICIAN, FHIR, OUTSIDE_PATIENT, SERVICE, startTestServer, TEST_SEED, type TestServer,
} from './support/test-server.ts';

const WIDE_APP = {
  client_id: 'wide-app',
  client_secret: 'wide-app-secret-0123456789-0123456789',
  redirect_uri: 'https://wide.test/callback',
};

interface Started {
  url: URL;
  checks: { pkceCodeVerifier: string; expectedState: string; expectedNonce: string };
}

async function authorizationUrl(config: oidc.Configuration, params: Record<string, string>, redirectUri = APP.redirect_uri): Promise<Started> {
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
    ...params,
  });
  return { url, checks: { pkceCodeVerifier: verifier, expectedState: state, expectedNonce: nonce } };
}

describe('SMART App Launch', () => {
  let ts: TestServer;
  let app: oidc.Configuration;

  before(async () => {
    ts = await startTestServer({
      seed: {
        ...TEST_SEED,
        resourceServers: TEST_SEED.resourceServers.map((rs) => rs.identifier === FHIR
          ? { ...rs, scope: 'patient/*.cruds user/*.cruds system/Patient.rs' }
          : rs),
        clients: [...TEST_SEED.clients, {
          client_id: WIDE_APP.client_id,
          client_secret: WIDE_APP.client_secret,
          grant_types: ['authorization_code', 'refresh_token'],
          redirect_uris: [WIDE_APP.redirect_uri],
          scope: 'openid fhirUser offline_access',
          resource_scope: 'user/*.rs',
        }],
      },
    });
    app = await relyingParty(ts);
  });
  after(async () => {
    await ts?.stop();
  });

  async function redeem(config: oidc.Configuration, started: Started, callback: URL) {
    return oidc.authorizationCodeGrant(config, callback, started.checks);
  }

  test('standalone launch: the picker lists only care-team patients; the chosen one is in the token response and the token', async () => {
    const started = await authorizationUrl(app, { scope: 'openid fhirUser launch/patient patient/Observation.rs', aud: FHIR });
    const browser = new Browser(ts);
    let step = await browser.follow(await browser.get(started.url));
    const login = /action="(\/interaction\/[^"]+\/login)"/.exec(step.body)!;
    step = await browser.follow(await browser.post(new URL(login[1]!, ts.issuer), { username: CLINICIAN.username, password: CLINICIAN.password }));
    for (const p of CARE_TEAM_PATIENTS) assert.match(step.body, new RegExp(`value="${p.id}"`), `${p.id} offered`);
    assert.doesNotMatch(step.body, new RegExp(`value="${OUTSIDE_PATIENT.id}"`), 'a patient outside the care team is not offered');
    assert.match(step.body, /Read and search Observation records of the patient in context/);
    assert.doesNotMatch(step.body, new RegExp(OUTSIDE_PATIENT.name));

    const confirm = /action="(\/interaction\/[^"]+\/confirm)"/.exec(step.body)!;
    step = await browser.follow(await browser.post(new URL(confirm[1]!, ts.issuer), { patient: CARE_TEAM_PATIENTS[1]!.id }));
    const tokens = await redeem(app, started, new URL(step.location!));

    assert.equal(tokens.patient, CARE_TEAM_PATIENTS[1]!.id);
    assert.equal(tokens.need_patient_banner, true);
    assert.equal(tokens.scope, 'patient/Observation.rs');
    const access = jose.decodeJwt(tokens.access_token);
    assert.equal(access.patient, CARE_TEAM_PATIENTS[1]!.id);
    assert.equal(access.fhirUser, CLINICIAN.fhirUser);
    assert.equal(access.aud, FHIR);
    assert.deepEqual(access.cnf, { 'x5t#S256': ts.clientCert.sha256Thumbprint });
    assert.equal(tokens.claims()?.fhirUser, CLINICIAN.fhirUser, 'ID token carries fhirUser');
  });

  test('standalone launch: choosing a patient outside the care team is refused (403), audited, and yields no code', async () => {
    const started = await authorizationUrl(app, { scope: 'openid launch/patient patient/Observation.rs', aud: FHIR });
    const browser = new Browser(ts);
    let step = await browser.follow(await browser.get(started.url));
    const login = /action="(\/interaction\/[^"]+\/login)"/.exec(step.body)!;
    step = await browser.follow(await browser.post(new URL(login[1]!, ts.issuer), { username: CLINICIAN.username, password: CLINICIAN.password }));
    const confirm = /action="(\/interaction\/[^"]+\/confirm)"/.exec(step.body)!;
    const refused = await browser.post(new URL(confirm[1]!, ts.issuer), { patient: OUTSIDE_PATIENT.id });
    assert.equal(refused.status, 403);
    assert.equal(refused.location, null, 'no redirect, no code');
    assert.match(refused.body, /not on your care team/);
    const { rows } = await ts.testDb.db.query<{ rule: string; target_patient: string | null; details: string }>(
      "SELECT rule, patient_pseudonym AS target_patient, details::text AS details FROM audit_events WHERE type = 'launch.refused' ORDER BY seq DESC LIMIT 1",
    );
    assert.equal(rows[0]?.rule, 'care_team');
    assert.ok(rows[0]?.target_patient && rows[0].target_patient !== OUTSIDE_PATIENT.id, 'pseudonymised patient');
    assert.doesNotMatch(rows[0]!.details, new RegExp(`"${OUTSIDE_PATIENT.id}"`));

    // The same interaction still accepts a care-team patient afterwards.
    const step2 = await browser.follow(await browser.post(new URL(confirm[1]!, ts.issuer), consentFields(step.body)));
    const tokens = await redeem(app, started, new URL(step2.location!));
    assert.equal(tokens.patient, CARE_TEAM_PATIENTS[0]!.id);
  });

  test('EHR launch: the launch value resolves to patient and encounter; no banner needed', async () => {
    const { launch } = await createLaunch(ts.testDb.db, {
      patientId: CARE_TEAM_PATIENTS[0]!.id, encounterId: 'enc-7', clientId: APP.client_id, ttlSeconds: 300,
    });
    const started = await authorizationUrl(app, { scope: 'openid launch patient/Observation.rs', aud: FHIR, launch });
    const callback = await new Browser(ts).authorize(started.url, CLINICIAN.username, CLINICIAN.password);
    const tokens = await redeem(app, started, callback);
    assert.equal(tokens.patient, CARE_TEAM_PATIENTS[0]!.id);
    assert.equal(tokens.encounter, 'enc-7');
    assert.equal(tokens.need_patient_banner, false);
    assert.equal(jose.decodeJwt(tokens.access_token).patient, CARE_TEAM_PATIENTS[0]!.id);
  });

  test('EHR launch: an unknown launch value or one for another client is refused with invalid_request', async () => {
    const { launch: foreign } = await createLaunch(ts.testDb.db, { patientId: CARE_TEAM_PATIENTS[0]!.id, clientId: WIDE_APP.client_id, ttlSeconds: 300 });
    for (const launch of ['A'.repeat(43), foreign]) {
      const started = await authorizationUrl(app, { scope: 'openid launch patient/Observation.rs', aud: FHIR, launch });
      const res = await ts.fetch(started.url);
      assert.equal(res.status, 303);
      const location = new URL(res.headers.get('location')!);
      assert.equal(location.searchParams.get('error'), 'invalid_request', location.href);
    }
  });

  test('SMART parameters: aud naming another server, or launch without the launch scope, is invalid_request', async () => {
    const cases: Array<Record<string, string>> = [
      { scope: 'openid patient/Observation.rs', aud: 'https://other.test/api', resource: FHIR },
      { scope: 'openid patient/Observation.rs', aud: FHIR, launch: 'A'.repeat(43) },
    ];
    for (const params of cases) {
      const started = await authorizationUrl(app, params);
      const res = await ts.fetch(started.url);
      assert.equal(res.status, 303, JSON.stringify(params));
      assert.equal(new URL(res.headers.get('location')!).searchParams.get('error'), 'invalid_request', JSON.stringify(params));
    }
  });

  test('EHR launch for a patient outside the care team is refused at consent', async () => {
    const { launch } = await createLaunch(ts.testDb.db, { patientId: OUTSIDE_PATIENT.id, clientId: APP.client_id, ttlSeconds: 300 });
    const started = await authorizationUrl(app, { scope: 'openid launch patient/Observation.rs', aud: FHIR, launch });
    await assert.rejects(new Browser(ts).authorize(started.url, CLINICIAN.username, CLINICIAN.password), /status 403/);
  });

  test('scopes: v1 and wider requests are narrowed to the client ceiling; the response says what was granted', async () => {
    const started = await authorizationUrl(app, { scope: 'openid patient/Observation.read patient/Patient.cruds', aud: FHIR });
    const tokens = await redeem(app, started, await new Browser(ts).authorize(started.url, CLINICIAN.username, CLINICIAN.password));
    assert.equal(tokens.scope, 'patient/Observation.rs patient/Patient.rs');
    assert.equal(jose.decodeJwt(tokens.access_token).scope, 'patient/Observation.rs patient/Patient.rs');
  });

  test('scopes: a ceiling of user/*.rs admits user/ImagingStudy.rs and nothing it does not cover', async () => {
    const wide = await relyingParty(ts, WIDE_APP.client_id, WIDE_APP.client_secret);
    const started = await authorizationUrl(wide, { scope: 'openid user/ImagingStudy.rs user/Observation.cruds', resource: FHIR }, WIDE_APP.redirect_uri);
    const tokens = await redeem(wide, started, await new Browser(ts).authorize(started.url, CLINICIAN.username, CLINICIAN.password));
    assert.equal(tokens.scope, 'user/ImagingStudy.rs user/Observation.rs');
    assert.equal(tokens.patient, undefined, 'user-level scopes need no patient');
  });

  test('scopes: malformed, unknown, outside-ceiling and wrong-context scopes are refused with invalid_scope', async () => {
    for (const scope of [
      'openid patient/Observation.sr',
      'openid patient/Foo.rs',
      'openid patient/MedicationRequest.rs',
      'openid system/Patient.rs',
      'openid made-up-scope',
      'openid patient/Observation.rs?patient=p2',
    ]) {
      const started = await authorizationUrl(app, { scope, aud: FHIR });
      const res = await ts.fetch(started.url);
      assert.equal(res.status, 303, scope);
      const location = new URL(res.headers.get('location')!);
      assert.equal(location.searchParams.get('error'), 'invalid_scope', `${scope}: ${location.href}`);
    }
    // client credentials: user-context scopes need a user.
    const res = await ts.fetch(ts.endpoint('/token'), {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'client_credentials', resource: FHIR, scope: 'patient/Patient.rs' }).toString(),
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${SERVICE.client_id}:${SERVICE.client_secret}`).toString('base64')}`,
      },
    });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: string }).error, 'invalid_scope');
  });

  test('scopes: a user whose role permits none of the requested scopes is denied', async () => {
    await createUser(ts.testDb.db, { username: 'nurse.limited', password: 'limited-password-123456', roles: ['reception'] });
    const started = await authorizationUrl(app, { scope: 'openid patient/Observation.rs', aud: FHIR });
    const callback = await new Browser(ts).authorize(started.url, 'nurse.limited', 'limited-password-123456');
    assert.equal(callback.searchParams.get('error'), 'access_denied', callback.href);
    assert.equal(callback.searchParams.get('code'), null);
  });

  test('refresh keeps the patient and can never widen the grant', async () => {
    const started = await authorizationUrl(app, { scope: 'openid offline_access launch/patient patient/Observation.rs', aud: FHIR, prompt: 'consent' });
    const tokens = await redeem(app, started, await new Browser(ts).authorize(started.url, CLINICIAN.username, CLINICIAN.password, { patient: CARE_TEAM_PATIENTS[1]!.id }));
    assert.ok(tokens.refresh_token);
    const refreshed = await oidc.refreshTokenGrant(app, tokens.refresh_token!);
    assert.equal(refreshed.patient, CARE_TEAM_PATIENTS[1]!.id);
    assert.equal(jose.decodeJwt(refreshed.access_token).patient, CARE_TEAM_PATIENTS[1]!.id);
    await assert.rejects(
      oidc.refreshTokenGrant(app, refreshed.refresh_token!, { scope: 'patient/Observation.rs patient/Patient.rs' }),
      (err: unknown) => (err as { error?: string }).error === 'invalid_scope',
    );
  });

  test('an authorization that needs no patient does not inherit an earlier launch\'s patient', async () => {
    const browser = new Browser(ts);
    const first = await authorizationUrl(app, { scope: 'openid launch/patient patient/Observation.rs', aud: FHIR });
    await redeem(app, first, await browser.authorize(first.url, CLINICIAN.username, CLINICIAN.password, { patient: CARE_TEAM_PATIENTS[1]!.id }));
    const second = await authorizationUrl(app, { scope: 'openid', aud: FHIR });
    const tokens = await redeem(app, second, await browser.authorize(second.url, CLINICIAN.username, CLINICIAN.password));
    assert.equal(tokens.patient, undefined);
    assert.equal(tokens.need_patient_banner, undefined);
    assert.equal(jose.decodeJwt(tokens.access_token).patient, undefined);
  });

  test('leaving the care team ends access: the next refresh is invalid_grant', async () => {
    const patient = CARE_TEAM_PATIENTS[1]!.id;
    const started = await authorizationUrl(app, { scope: 'openid offline_access launch/patient patient/Observation.rs', aud: FHIR, prompt: 'consent' });
    const tokens = await redeem(app, started, await new Browser(ts).authorize(started.url, CLINICIAN.username, CLINICIAN.password, { patient }));
    const { rows } = await ts.testDb.db.query<{ id: string }>('SELECT id FROM users WHERE username = $1', [CLINICIAN.username]);
    const userId = rows[0]!.id;
    await endCareTeamMembership(ts.testDb.db, userId, patient);
    try {
      await assert.rejects(oidc.refreshTokenGrant(app, tokens.refresh_token!),
        (err: unknown) => (err as { error?: string }).error === 'invalid_grant');
    } finally {
      await addCareTeamMember(ts.testDb.db, { userId, patientId: patient });
    }
  });
});
