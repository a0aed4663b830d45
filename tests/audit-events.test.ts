// Audit events of real flows: exact records, correlation ids, pseudonyms, no secrets anywhere, and
// fail-closed behaviour when the audit log cannot be written.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as oidc from 'openid-client';

import type { StoredAuditRow } from '../src/audit/log.ts';
import { Browser } from './support/login-flow.ts';
import { relyingParty, signIn } from './support/relying-party.ts';
import { APP, basicAuth, CLINICIAN, FHIR, form, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

let ts: TestServer;
const secretsUsed: string[] = [CLINICIAN.password, APP.client_secret, SERVICE.client_secret, 'wrong-password-000000'];

async function events(sinceSeq = 0): Promise<StoredAuditRow[]> {
  const { rows } = await ts.testDb.db.query<StoredAuditRow>('SELECT * FROM audit_events WHERE seq > $1 ORDER BY seq', [sinceSeq]);
  return rows;
}
async function headSeq(): Promise<number> {
  const { rows } = await ts.testDb.db.query<{ seq: number | null }>('SELECT max(seq) AS seq FROM audit_events');
  return Number(rows[0]?.seq ?? 0);
}
function only(rows: StoredAuditRow[], type: string): StoredAuditRow {
  const found = rows.filter((r) => r.type === type);
  assert.equal(found.length, 1, `exactly one ${type} in ${rows.map((r) => r.type).join(', ')}`);
  return found[0]!;
}

const appConfig = () => relyingParty(ts);

function tokenRequest(params: Record<string, string>, auth: string, requestId?: string) {
  return ts.fetch(ts.endpoint("/token"), {
    method: 'POST',
    body: new URLSearchParams(params).toString(),
    headers: { ...form({}).headers, authorization: auth, ...(requestId ? { 'x-request-id': requestId } : {}) },
  });
}

before(async () => { ts = await startTestServer({ captureLogs: true }); });
after(() => ts.stop());

describe('audit events of real flows', () => {
  test('login failure and success, consent, code issued and redeemed, tokens issued, refreshed, revoked', async () => {
    const start = await headSeq();
    const config = await appConfig();
    const verifier = oidc.randomPKCECodeVerifier();
    const url = oidc.buildAuthorizationUrl(config, {
      redirect_uri: APP.redirect_uri,
      scope: 'openid offline_access patient/Observation.rs',
      resource: FHIR,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
      code_challenge_method: 'S256',
      state: 'audit-state',
      prompt: 'consent',
    });
    const browser = new Browser(ts);
    // One failed attempt first.
    const loginPage = await browser.follow(await browser.get(url));
    const action = /action="(\/interaction\/[^"]+\/login)"/.exec(loginPage.body)![1]!;
    const failed = await browser.post(new URL(action, ts.issuer), { username: CLINICIAN.username, password: 'wrong-password-000000' });
    assert.equal(failed.status, 401);
    const callback = await browser.authorize(url, CLINICIAN.username, CLINICIAN.password);
    const tokens = await oidc.authorizationCodeGrant(config, callback, { pkceCodeVerifier: verifier, expectedState: 'audit-state' }, { resource: FHIR });
    secretsUsed.push(tokens.access_token, tokens.refresh_token!, callback.searchParams.get('code')!);
    const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token!, { resource: FHIR });
    secretsUsed.push(refreshed.access_token, refreshed.refresh_token!);
    await oidc.tokenRevocation(config, refreshed.access_token);
    assert.equal((await oidc.tokenIntrospection(config, refreshed.access_token)).active, false);

    const rows = await events(start);
    const userId = only(rows, 'login.success').actor_user!;
    assert.match(userId, /^[0-9a-f-]{36}$/);

    const failure = only(rows, 'login.failed');
    assert.equal(failure.outcome, 'failure');
    assert.equal(failure.actor_user, null);
    assert.equal(failure.actor_client, APP.client_id);
    assert.equal(failure.details.reason, 'bad_credentials');
    assert.equal(failure.details.username_ref, ts.server.audit.pseudonym('username', CLINICIAN.username), 'username only as a pseudonym');

    const success = only(rows, 'login.success');
    assert.deepEqual([success.outcome, success.actor_client, success.rule], ['success', APP.client_id, 'password']);
    assert.deepEqual(success.details.amr, ['pwd']);

    const consent = only(rows, 'consent.given');
    assert.equal(consent.actor_user, userId);
    assert.deepEqual(consent.details.resources, [FHIR]);
    assert.ok((consent.details.scope as string[]).includes('patient/Observation.rs'));

    const codeIssued = only(rows, 'code.issued');
    const codeRedeemed = only(rows, 'code.redeemed');
    assert.equal(codeIssued.details.token_ref, codeRedeemed.details.token_ref, 'issue and redemption correlate');
    assert.equal(codeIssued.actor_user, userId);

    const issued = rows.filter((r) => r.type === 'token.issued');
    const accessTokens = issued.filter((r) => r.details.token_type === 'access_token');
    const refreshTokens = issued.filter((r) => r.details.token_type === 'refresh_token');
    assert.equal(accessTokens.length, 2, 'one at code redemption, one at refresh');
    assert.equal(refreshTokens.length, 2, 'rotation issues a new refresh token');
    for (const at of accessTokens) {
      assert.equal(at.details.format, 'jwt');
      assert.equal(at.target_audience, FHIR);
      assert.equal(at.actor_user, userId);
      assert.equal(at.actor_client, APP.client_id);
      assert.equal(at.details.scope, 'patient/Observation.rs');
      assert.ok(Number(at.details.lifetime) > 0 && Number(at.details.lifetime) <= 300);
      assert.equal(typeof at.details.jti, 'string');
    }
    const jtis = [tokens.access_token, refreshed.access_token].map((t) => JSON.parse(Buffer.from(t.split('.')[1]!, 'base64url').toString()).jti);
    assert.deepEqual(accessTokens.map((r) => r.details.jti), jtis);

    assert.equal(only(rows, 'token.refreshed').details.token_type, 'refresh_token');
    const revoked = only(rows, 'token.revoked');
    assert.equal(revoked.details.jti, jtis[1]);
    const inactive = only(rows, 'introspection.inactive');
    assert.equal(inactive.actor_client, APP.client_id);

    for (const row of rows) {
      assert.ok(row.request_id, `${row.type} carries a correlation id`);
      assert.match(String(row.source_ip), /127\.0\.0\.1/);
    }
  });

  test('the correlation id comes from X-Request-Id; client authentication failures are recorded', async () => {
    const start = await headSeq();
    const ok = await tokenRequest({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' },
      basicAuth(SERVICE.client_id, SERVICE.client_secret), 'task-42.step-1');
    assert.equal(ok.headers.get('x-request-id'), 'task-42.step-1');
    const { access_token: token } = await ok.json() as { access_token: string };
    secretsUsed.push(token);
    const bad = await tokenRequest({ grant_type: 'client_credentials' }, basicAuth(SERVICE.client_id, 'not-the-secret-0123456789'), 'task-42.step-2');
    assert.equal(bad.status, 401);

    const rows = await events(start);
    const issued = only(rows, 'token.issued');
    assert.equal(issued.request_id, 'task-42.step-1');
    assert.equal(issued.actor_client, SERVICE.client_id);
    assert.equal(issued.actor_user, null);
    assert.equal(issued.details.grant_type, 'client_credentials');
    const failure = only(rows, 'client.authentication_failed');
    assert.deepEqual([failure.outcome, failure.actor_client, failure.request_id, failure.rule],
      ['denied', SERVICE.client_id, 'task-42.step-2', 'client_authentication']);
  });

  test('a path spelled differently (/TOKEN/) reaches the same endpoint and the same audit', async () => {
    const start = await headSeq();
    const res = await ts.fetch(`${ts.issuer}/TOKEN/`, {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'client_credentials' }).toString(),
      headers: { ...form({}).headers, authorization: basicAuth(SERVICE.client_id, 'not-the-secret-0123456789') },
    });
    assert.equal(res.status, 401);
    assert.equal(only(await events(start), 'client.authentication_failed').actor_client, SERVICE.client_id);
  });

  test('patient ids are stored only as keyed pseudonyms', async () => {
    const a1 = await ts.server.audit.record({ type: 'test.patient_access', outcome: 'success', target: { patientId: 'Patient/12345' } });
    const a2 = await ts.server.audit.record({ type: 'test.patient_access', outcome: 'success', target: { patientId: 'Patient/12345' } });
    const b = await ts.server.audit.record({ type: 'test.patient_access', outcome: 'success', target: { patientId: 'Patient/99999' } });
    assert.equal(a1.patientPseudonym, a2.patientPseudonym);
    assert.notEqual(a1.patientPseudonym, b.patientPseudonym);
    const { rows } = await ts.testDb.db.query<{ t: string }>('SELECT t::text AS t FROM audit_events t');
    assert.ok(rows.every((r) => !r.t.includes('12345') && !r.t.includes('99999')));
  });

  test('no record and no log line holds a password, secret, token value or code', async () => {
    const { rows } = await ts.testDb.db.query<{ t: string }>('SELECT t::text AS t FROM audit_events t');
    const logs = ts.logs.join('\n');
    assert.ok(logs.includes('"msg":"audit"'), 'events are also emitted as log lines');
    for (const secret of secretsUsed) {
      assert.ok(rows.every((r) => !r.t.includes(secret)), 'audit records are free of secrets');
      assert.ok(!logs.includes(secret), 'logs are free of secrets');
    }
    assert.ok(!logs.includes(CLINICIAN.username) && rows.every((r) => !r.t.includes(CLINICIAN.username)), 'usernames appear only as pseudonyms');
  });
});

const makeAuditUnwritable = () => ts.testDb.db.exec(`CREATE FUNCTION audit_unwritable() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'audit storage unavailable'; END; $$;
    CREATE TRIGGER audit_unwritable BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION audit_unwritable();`);
const makeAuditWritable = () => ts.testDb.db.exec('DROP TRIGGER audit_unwritable ON audit_events; DROP FUNCTION audit_unwritable();');

describe('fail closed', () => {
  test('a code redeemed while the audit log is unwritable yields no token, and stays spent', async () => {
    const config = await appConfig();
    const { callback, checks } = await signIn(ts, config, { scope: 'openid patient/Observation.rs' });
    await makeAuditUnwritable();
    try {
      const refused = await tokenRequest({
        grant_type: 'authorization_code', code: callback.searchParams.get('code')!, redirect_uri: APP.redirect_uri,
        code_verifier: checks.pkceCodeVerifier, resource: FHIR,
      }, basicAuth(APP.client_id, APP.client_secret));
      assert.equal(refused.status, 503);
      const body = await refused.json() as Record<string, unknown>;
      assert.equal(body.error, 'temporarily_unavailable');
      assert.equal(body.access_token, undefined);
    } finally {
      await makeAuditWritable();
    }
    await assert.rejects(oidc.authorizationCodeGrant(config, callback, checks, { resource: FHIR }),
      (err: oidc.ResponseBodyError) => err.error === 'invalid_grant', 'the code was consumed; a retry is a replay');
  });

  test('when the audit log cannot be written, no token is issued and no login completes', async () => {
    const db = ts.testDb.db;
    await makeAuditUnwritable();
    try {
      const countTokens = async () => Number((await db.query<{ n: number }>("SELECT count(*)::int AS n FROM oidc_payloads WHERE model IN ('AccessToken', 'ClientCredentials')")).rows[0]!.n);
      const before = await countTokens();
      const refused = await tokenRequest({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' },
        basicAuth(SERVICE.client_id, SERVICE.client_secret));
      assert.equal(refused.status, 503);
      const body = await refused.json() as Record<string, unknown>;
      assert.equal(body.error, 'temporarily_unavailable');
      assert.equal(body.access_token, undefined);
      assert.equal(await countTokens(), before, 'the token record was rolled back with its audit event');

      const opaque = await tokenRequest({ grant_type: 'client_credentials', scope: '' }, basicAuth(SERVICE.client_id, SERVICE.client_secret));
      assert.equal(opaque.status, 503, 'opaque tokens too');

      const config = await appConfig();
      const url = oidc.buildAuthorizationUrl(config, {
        redirect_uri: APP.redirect_uri, scope: 'openid', code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()),
        code_challenge_method: 'S256', state: 's',
      });
      const browser = new Browser(ts);
      const page = await browser.follow(await browser.get(url));
      const action = /action="(\/interaction\/[^"]+\/login)"/.exec(page.body)![1]!;
      const login = await browser.post(new URL(action, ts.issuer), { username: CLINICIAN.username, password: CLINICIAN.password });
      assert.equal(login.status, 503);
      assert.equal(login.location, null, 'the login does not complete');
      assert.match(login.body, /temporarily_unavailable/);
    } finally {
      await makeAuditWritable();
    }
    const again = await tokenRequest({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' },
      basicAuth(SERVICE.client_id, SERVICE.client_secret));
    assert.equal(again.status, 200, 'service resumes once the audit log is writable');
  });
});
