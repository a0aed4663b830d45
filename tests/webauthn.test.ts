// Passkeys over real HTTPS against the real pages: enrolment on the account page, password + passkey,
// passwordless, step-up of a session, and the refusals (replay, origin, RP id, counter, unknown or
// foreign credential, enrolment without a recent sign-in). A software authenticator answers.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';
import * as oidc from 'openid-client';

import { findUserByUsername } from '../src/accounts/users.ts';
import { ACR_PASSWORD, ACR_PHISHING_RESISTANT } from '../src/mfa/assurance.ts';
import { addCredential } from '../src/mfa/credentials.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { Browser, pageOptions, type PasskeyAnswerer, type Step } from './support/login-flow.ts';
import { relyingParty } from './support/relying-party.ts';
import { SoftAuthenticator } from './support/soft-authenticator.ts';
import { APP, CLINICIAN, FHIR, startTestServer, type TestServer } from './support/test-server.ts';

const OTHER_USER = { username: 'dr.other', password: 'other-password-123456' };

describe('WebAuthn passkeys', () => {
  let ts: TestServer;
  let app: oidc.Configuration;
  let origin: string;

  async function lastAudit(type: string): Promise<{ rule: string; severity: string; details: Record<string, unknown>; actor_user: string | null } | undefined> {
    const { rows } = await ts.testDb.db.query<{ rule: string; severity: string; details: Record<string, unknown>; actor_user: string | null }>(
      'SELECT rule, severity, details, actor_user FROM audit_events WHERE type = $1 ORDER BY seq DESC LIMIT 1', [type],
    );
    return rows[0];
  }

  /** Signs in on the account page with a password (first-party flow) and returns the account page. */
  async function accountSignIn(browser: Browser, username: string, password: string, passkey?: PasskeyAnswerer): Promise<Step> {
    const step = await browser.follow(await browser.get(new URL('/account', ts.issuer)));
    return browser.signIn(step, username, password, passkey);
  }

  async function enrol(browser: Browser, page: Step, soft: SoftAuthenticator, at: { origin?: string; rpId?: string } = {}): Promise<Step> {
    const options = pageOptions(page.body, 'register');
    const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)![1]!;
    const answer = soft.register(options, { origin: at.origin ?? origin, ...(at.rpId ? { rpId: at.rpId } : {}) });
    return browser.post(new URL('/account/passkeys', ts.issuer), { csrf, name: 'Test key', credential: JSON.stringify(answer) });
  }

  async function authorize(browser: Browser, username: string, password: string, passkey?: PasskeyAnswerer, extra: Record<string, string> = {}) {
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const params: Record<string, string> = {
      redirect_uri: APP.redirect_uri, scope: 'openid fhirUser patient/Observation.rs', resource: FHIR, state,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256', ...extra,
    };
    if (!params.resource) delete params.resource;
    const url = oidc.buildAuthorizationUrl(app, params);
    const callback = await browser.authorize(url, username, password, { ...(passkey ? { passkey } : {}) });
    return oidc.authorizationCodeGrant(app, callback, { pkceCodeVerifier: verifier, expectedState: state });
  }

  const answerer = (soft: SoftAuthenticator, at: Parameters<SoftAuthenticator['authenticate']>[1] = { origin: '' }): PasskeyAnswerer =>
    (options) => soft.authenticate(options, { ...at, origin: at.origin || origin });

  before(async () => {
    ts = await startTestServer();
    origin = new URL(ts.issuer).origin;
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      users: [{ username: OTHER_USER.username, password: OTHER_USER.password, roles: ['clinician'] }],
    }));
    app = await relyingParty(ts);
  });
  after(async () => ts?.stop());

  const clinicianKey = new SoftAuthenticator();
  const otherKey = new SoftAuthenticator();

  test('enrolment: a recent password sign-in adds the first passkey; the page lists it; audited', async () => {
    const browser = new Browser(ts);
    const page = await accountSignIn(browser, CLINICIAN.username, CLINICIAN.password);
    assert.equal(page.status, 200, page.body.slice(0, 300));
    assert.match(page.body, /No passkey yet/);
    const options = pageOptions(page.body, 'register');
    assert.equal(options.rp.id, 'localhost');
    assert.equal(options.authenticatorSelection?.userVerification, 'required');
    assert.equal(options.authenticatorSelection?.residentKey, 'required');
    assert.doesNotMatch(options.user.id, /dr\.test/, 'the user handle is opaque');
    const added = await enrol(browser, page, clinicianKey);
    assert.equal(added.status, 303);
    assert.equal(added.location, '/account?done=added');
    const listed = await browser.get(new URL('/account?done=added', ts.issuer));
    assert.match(listed.body, /Passkey added/);
    assert.match(listed.body, /<td>Test key<\/td><td>device-bound passkey<\/td>/);
    const event = await lastAudit('webauthn.registered');
    assert.equal(event?.rule, 'recent_password_login');
    assert.equal(event?.details.credential, clinicianKey.credentials[0]!.id);
  });

  test('enrolment refusals: no session, wrong CSRF token, replayed registration, wrong origin', async () => {
    const anonymous = new Browser(ts);
    const noSession = await anonymous.post(new URL('/account/passkeys', ts.issuer), { csrf: 'x', credential: '{}' });
    assert.equal(noSession.status, 401);

    const browser = new Browser(ts);
    const page = await accountSignIn(browser, OTHER_USER.username, OTHER_USER.password);
    const badCsrf = await browser.post(new URL('/account/passkeys', ts.issuer), { csrf: 'forged', credential: '{}' });
    assert.equal(badCsrf.status, 403);

    const options = pageOptions(page.body, 'register');
    const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)![1]!;
    const wrongOrigin = new SoftAuthenticator().register(options, { origin: 'https://evil.example' });
    const refused = await browser.post(new URL('/account/passkeys', ts.issuer), { csrf, name: 'Evil', credential: JSON.stringify(wrongOrigin) });
    assert.equal(refused.status, 401);
    assert.equal((await lastAudit('webauthn.registration_refused'))?.rule, 'verification_failed');
    // The challenge was used up by that attempt: a right answer to it now is a replay.
    const late = otherKey.register(options, { origin });
    const replay = await browser.post(new URL('/account/passkeys', ts.issuer), { csrf, name: 'Late', credential: JSON.stringify(late) });
    assert.equal(replay.status, 401);
    assert.equal((await lastAudit('webauthn.registration_refused'))?.rule, 'challenge_invalid');
    otherKey.credentials.length = 0;

    const fresh = await browser.get(new URL('/account', ts.issuer));
    assert.equal((await enrol(browser, fresh, otherKey)).status, 303, 'a fresh challenge works');
  });

  test('password + passkey: the ID token and access token say phr with pwd, hwk, user, mfa', async () => {
    const tokens = await authorize(new Browser(ts), CLINICIAN.username, CLINICIAN.password, answerer(clinicianKey));
    const id = tokens.claims()!;
    assert.equal(id.acr, ACR_PHISHING_RESISTANT);
    assert.deepEqual(id.amr, ['pwd', 'hwk', 'user', 'mfa']);
    assert.ok(typeof id.auth_time === 'number' && Math.abs(id.auth_time - Date.now() / 1000) < 30);
    const access = jose.decodeJwt(tokens.access_token);
    assert.equal(access.acr, ACR_PHISHING_RESISTANT);
    assert.deepEqual(access.amr, ['pwd', 'hwk', 'user', 'mfa']);
    const introspection = await oidc.tokenIntrospection(app, tokens.access_token);
    assert.equal(introspection.acr, ACR_PHISHING_RESISTANT);
    assert.deepEqual(introspection.amr, ['pwd', 'hwk', 'user', 'mfa']);
    assert.equal((await lastAudit('login.success'))?.rule, 'password_and_passkey');
  });

  test('passwordless: a discoverable passkey alone signs in (no pwd in amr)', async () => {
    const browser = new Browser(ts);
    const tokens = await authorize(browser, CLINICIAN.username, '', answerer(clinicianKey));
    const id = tokens.claims()!;
    assert.equal(id.acr, ACR_PHISHING_RESISTANT);
    assert.deepEqual(id.amr, ['hwk', 'user', 'mfa']);
    assert.equal(id.sub, (await lastAudit('login.success'))?.actor_user);
  });

  test('step-up: max_age=0 within a session asks for the passkey again, not the password', async () => {
    const browser = new Browser(ts);
    const first = await authorize(browser, CLINICIAN.username, CLINICIAN.password, answerer(clinicianKey));
    const firstAuth = first.claims()!.auth_time!;
    await new Promise((r) => setTimeout(r, 1100));
    const again = await authorize(browser, CLINICIAN.username, 'not-asked', answerer(clinicianKey), { max_age: '0' });
    assert.ok(again.claims()!.auth_time! > firstAuth, 'a new authentication time');
    assert.equal((await lastAudit('login.success'))?.rule, 'passkey_step_up');
    assert.deepEqual(again.claims()!.amr, ['pwd', 'hwk', 'user', 'mfa'], 'the session\'s password still counts');
  });

  test('refusals at sign-in: replay, wrong origin, wrong RP id, unknown credential, another user\'s passkey, counter regression', async () => {
    async function secondFactorPage(browser: Browser): Promise<Step> {
      const verifier = oidc.randomPKCECodeVerifier();
      const url = oidc.buildAuthorizationUrl(app, {
        redirect_uri: APP.redirect_uri, scope: 'openid', resource: FHIR, state: oidc.randomState(),
        code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
      });
      const step = await browser.signIn(await browser.follow(await browser.get(url)), CLINICIAN.username, CLINICIAN.password);
      assert.match(step.body, /Confirm with your passkey/);
      return step;
    }
    const postAnswer = (browser: Browser, page: Step, answer: unknown) => {
      const action = /action="(\/interaction\/[^"]+\/passkey)"/.exec(page.body)![1]!;
      return browser.post(new URL(action, ts.issuer), { credential: JSON.stringify(answer) });
    };
    const expectRefused = async (res: Step, rule: string, type = 'webauthn.assertion_refused') => {
      assert.equal(res.status, 401, res.body.slice(0, 200));
      assert.equal(res.location, null, 'no sign-in');
      assert.equal((await lastAudit(type))?.rule, rule);
    };

    // Replay: the same right answer twice.
    let browser = new Browser(ts);
    let page = await secondFactorPage(browser);
    const answer = clinicianKey.authenticate(pageOptions(page.body, 'authenticate'), { origin });
    assert.equal((await postAnswer(browser, page, answer)).status, 303);
    await expectRefused(await postAnswer(browser, page, answer), 'challenge_invalid');

    browser = new Browser(ts);
    page = await secondFactorPage(browser);
    const wrongOrigin = await postAnswer(browser, page, clinicianKey.authenticate(pageOptions(page.body, 'authenticate'), { origin: 'https://evil.example' }));
    await expectRefused(wrongOrigin, 'verification_failed');
    // A refused answer gets a fresh prompt for the same user (the password was right), with a new challenge.
    assert.match(wrongOrigin.body, /Confirm with your passkey/);
    assert.notEqual(pageOptions(wrongOrigin.body, 'authenticate').challenge, pageOptions(page.body, 'authenticate').challenge);

    browser = new Browser(ts);
    page = await secondFactorPage(browser);
    await expectRefused(await postAnswer(browser, page, clinicianKey.authenticate(pageOptions(page.body, 'authenticate'), { origin, rpId: 'evil.example' })), 'verification_failed');

    browser = new Browser(ts);
    page = await secondFactorPage(browser);
    const stranger = new SoftAuthenticator();
    stranger.register(pageOptionsForRegistration(), { origin });
    const strangerOptions = { ...pageOptions(page.body, 'authenticate'), allowCredentials: [] };
    await expectRefused(await postAnswer(browser, page, stranger.authenticate(strangerOptions, { origin })), 'unknown_credential');

    browser = new Browser(ts);
    page = await secondFactorPage(browser);
    const foreign = otherKey.authenticate({ ...pageOptions(page.body, 'authenticate'), allowCredentials: [] }, { origin });
    await expectRefused(await postAnswer(browser, page, foreign), 'wrong_user');

    browser = new Browser(ts);
    page = await secondFactorPage(browser);
    const cloned = clinicianKey.authenticate(pageOptions(page.body, 'authenticate'), { origin, signCount: 1 });
    await expectRefused(await postAnswer(browser, page, cloned), 'counter_regression', 'webauthn.counter_regression');
    assert.equal((await lastAudit('webauthn.counter_regression'))?.severity, 'high');

    browser = new Browser(ts);
    page = await secondFactorPage(browser);
    const malformed = await postAnswer(browser, page, { id: 'x' });
    assert.equal(malformed.status, 400);
  });

  test('a step-up rule or acr_values for phr sends a user without a passkey to enrol, with no code issued', async () => {
    const browser = new Browser(ts);
    await ts.testDb.db.query('DELETE FROM webauthn_credentials WHERE user_id = (SELECT id FROM users WHERE username = $1)', [OTHER_USER.username]);
    const url = oidc.buildAuthorizationUrl(app, {
      redirect_uri: APP.redirect_uri, scope: 'openid', resource: FHIR, state: oidc.randomState(), acr_values: ACR_PHISHING_RESISTANT,
      code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()), code_challenge_method: 'S256',
    });
    const step = await browser.signIn(await browser.follow(await browser.get(url)), OTHER_USER.username, OTHER_USER.password);
    assert.match(step.body, /A passkey is required/);
    assert.match(step.body, /href="\/account"/);
    assert.equal(step.location, null);
  });

  test('password only without a passkey: acr pwd, amr pwd', async () => {
    const tokens = await authorize(new Browser(ts), OTHER_USER.username, OTHER_USER.password, undefined, { scope: 'openid', resource: '' });
    assert.equal(tokens.claims()!.acr, ACR_PASSWORD);
    assert.deepEqual(tokens.claims()!.amr, ['pwd']);
  });

  test('response_type none is the account pages\' alone: another client registering it is refused', async () => {
    await assert.rejects(applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      clients: [{ client_id: 'sneaky', token_endpoint_auth_method: 'none', response_types: ['none'], grant_types: [], redirect_uris: ['https://sneaky.test/cb'] }],
    })), /response_types/);
  });

  test('removing a passkey needs a recent passkey sign-in; audited', async () => {
    const browser = new Browser(ts);
    const page = await accountSignIn(browser, CLINICIAN.username, CLINICIAN.password, answerer(clinicianKey));
    assert.match(page.body, /Remove<\/button>/);
    const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)![1]!;
    const id = /name="id" value="([^"]+)"/.exec(page.body)![1]!;
    const removed = await browser.post(new URL('/account/passkeys/delete', ts.issuer), { csrf, id });
    assert.equal(removed.status, 303);
    assert.equal((await lastAudit('webauthn.removed'))?.details.credential, id);
  });
});

/** Registration options for a credential the server never sees (an "unknown credential"). */
function pageOptionsForRegistration() {
  return {
    rp: { id: 'localhost', name: 'x' }, user: { id: 'c3RyYW5nZXI', name: 'stranger', displayName: 'stranger' },
    challenge: 'c3RyYW5nZXItY2hhbGxlbmdl', pubKeyCredParams: [{ type: 'public-key' as const, alg: -7 }],
  };
}

describe('passkey changes need a recent, strong enough sign-in', () => {
  let ts: TestServer;
  before(async () => {
    // Three seconds of "recent" (sign-in times are whole seconds), and passkeys only on demand, so a password-only session with a passkey exists.
    ts = await startTestServer({ env: { RECENT_LOGIN_SECONDS: '3', MFA_AT_LOGIN: 'on_demand' } });
  });
  after(async () => ts?.stop());

  async function refusal(type: string) {
    const { rows } = await ts.testDb.db.query<{ rule: string }>('SELECT rule FROM audit_events WHERE type = $1 ORDER BY seq DESC LIMIT 1', [type]);
    return rows[0]?.rule;
  }

  async function accountPage(browser: Browser): Promise<Step> {
    return browser.signIn(await browser.follow(await browser.get(new URL('/account', ts.issuer))), CLINICIAN.username, CLINICIAN.password);
  }

  test('enrolment without a recent sign-in: no options offered, a stale answer is 403 and audited', async () => {
    const browser = new Browser(ts);
    const page = await accountPage(browser);
    const options = pageOptions(page.body, 'register');
    const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)![1]!;
    await new Promise((r) => setTimeout(r, 4100));
    const later = await browser.get(new URL('/account', ts.issuer));
    assert.doesNotMatch(later.body, /webauthn-options-register/, 'no registration once the sign-in is old');
    assert.match(later.body, /Confirm it's me/);
    const answer = new SoftAuthenticator().register(options, { origin: new URL(ts.issuer).origin });
    const res = await browser.post(new URL('/account/passkeys', ts.issuer), { csrf, name: 'Late', credential: JSON.stringify(answer) });
    assert.equal(res.status, 403);
    assert.equal(await refusal('webauthn.registration_refused'), 'recent_login');
    const { rows } = await ts.testDb.db.query('SELECT 1 FROM webauthn_credentials');
    assert.equal(rows.length, 0, 'nothing stored');
  });

  test('a password-only session cannot remove a passkey or add another', async () => {
    const browser = new Browser(ts);
    const first = await accountPage(browser);
    const csrf = /name="csrf" value="([^"]+)"/.exec(first.body)![1]!;
    // A passkey exists (added elsewhere); this session signed in with the password only.
    const user = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    await addCredential(ts.testDb.db, {
      id: 'existing-credential-0000000000', userId: user.id, publicKey: new Uint8Array([1]), signCount: 0, transports: [],
      deviceType: 'singleDevice', backedUp: false, aaguid: undefined, name: 'Phone',
    });
    const page = await browser.get(new URL('/account', ts.issuer));
    assert.doesNotMatch(page.body, /Remove<\/button>/);
    assert.doesNotMatch(page.body, /webauthn-options-register/);
    const removed = await browser.post(new URL('/account/passkeys/delete', ts.issuer), { csrf, id: 'existing-credential-0000000000' });
    assert.equal(removed.status, 403);
    assert.equal(await refusal('webauthn.removal_refused'), 'recent_passkey_login');
    const added = await browser.post(new URL('/account/passkeys', ts.issuer), { csrf, name: 'Second', credential: '{}' });
    assert.equal(added.status, 403);
    assert.equal(await refusal('webauthn.registration_refused'), 'recent_login');
    const { rows } = await ts.testDb.db.query('SELECT id FROM webauthn_credentials');
    assert.equal(rows.length, 1, 'the passkey is still there');
  });
});
