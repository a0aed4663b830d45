// Break-glass in real Chromium (playwright-core) with the DevTools virtual authenticator (ctap2, internal,
// resident keys, user verification): a clinician enrols a passkey, an app (openid-client, PKCE) starts a
// standalone launch, the clinician signs in (password + passkey), does not find the patient in the
// care-team picker, breaks the glass (patient, reason, justification, acknowledgement, a fresh passkey
// prompt answered by the virtual authenticator) and the app gets a read-only, short-lived, certificate-bound
// token labelled with the purpose of use and no refresh token. The example FHIR server serves that
// patient's reads, refuses another patient and every write; the review item, the audit event and a
// correctly signed webhook to the privacy office exist. Then the same prompt with user verification
// turned off: a visible failure, no redirect, no second emergency access.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import * as oidc from 'openid-client';
import { Webhook } from 'standardwebhooks';
import { fetch as undiciFetch } from 'undici';

import { startExampleFhirServer, type AccessEvent, type RunningExampleFhirServer } from '../examples/fhir-server/server.ts';
import { findUserByUsername } from '../src/accounts/users.ts';
import { listBreakGlassEvents, listBreakGlassTokens } from '../src/break-glass/events.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import {
  addVirtualAuthenticator, browserAvailable, launchBrowser, NO_BROWSER, type Browser, type Page, type VirtualAuthenticator,
} from './support/browser.ts';
import { relyingParty } from './support/relying-party.ts';
import { startWebhookReceiver, type WebhookReceiver } from './support/webhook-receiver.ts';
import { CARE_TEAM_PATIENTS, CLINICIAN, OUTSIDE_PATIENT, startTestServer, type TestServer } from './support/test-server.ts';

/** A FHIR server that accepts writes (its ceiling has patient/Observation.cruds): break-glass, not it, makes the token read-only. */
const BG_FHIR = 'https://bg-fhir.test/r4';
const BG_APP = { client_id: 'bg-browser-app', client_secret: 'bg-browser-app-secret-0123456789-0123', redirect_uri: 'https://bg-app.test/callback' };
const TTL = 300;
const LIMIT = 5;
const JUSTIFICATION = 'Collapsed in the waiting room, checking recent labs before giving contrast';
const ASKED = 'openid fhirUser launch/patient offline_access patient/Observation.cruds patient/Patient.rs';
const READ_ONLY = ['patient/Observation.rs', 'patient/Patient.rs'];

describe('break-glass in a real browser', { skip: browserAvailable() ? false : NO_BROWSER }, () => {
  let ts: TestServer;
  let app: oidc.Configuration;
  let fhir: RunningExampleFhirServer;
  const fhirEvents: AccessEvent[] = [];
  let receiver: WebhookReceiver;
  let browser: Browser;
  let page: Page;
  let authenticator: VirtualAuthenticator;

  const clinicianId = async () => (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!.id;
  const auditRows = async () => (await ts.testDb.db.query<{ row: string }>('SELECT to_jsonb(a)::text AS row FROM audit_events a')).rows;

  before(async () => {
    receiver = await startWebhookReceiver();
    // MFA_AT_LOGIN stays at its default ('enrolled'): once the passkey exists, every sign-in asks for it.
    ts = await startTestServer({
      env: {
        BREAK_GLASS_TTL: String(TTL),
        BREAK_GLASS_DAILY_LIMIT: String(LIMIT),
        ...receiver.env(),
      },
    });
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      resourceServers: [{ identifier: BG_FHIR, name: 'FHIR (writes too)', scope: 'patient/Observation.cruds patient/Patient.rs' }],
      clients: [{
        client_id: BG_APP.client_id, client_secret: BG_APP.client_secret, client_name: 'Emergency Viewer',
        grant_types: ['authorization_code', 'refresh_token'], redirect_uris: [BG_APP.redirect_uri],
        scope: 'openid fhirUser offline_access launch launch/patient',
        resource_scope: 'patient/Observation.cruds patient/Patient.rs',
        break_glass_allowed: true,
      }],
    }));
    // The app talks to the token endpoints over mTLS with the test client certificate (ts.dispatcher).
    app = await relyingParty(ts, BG_APP.client_id, BG_APP.client_secret);
    fhir = await startExampleFhirServer({
      issuer: ts.issuer, audience: BG_FHIR,
      tls: { certPem: ts.server.tls.certPem, keyPem: ts.server.tls.keyPem, caPem: ts.server.tls.clientCaPem },
      fetch: (url, init) => undiciFetch(url, { ...init, dispatcher: ts.dispatcher } as never),
      onAccess: (event) => { fhirEvents.push(event); },
    });
    browser = await launchBrowser({ trustCertificatePem: [ts.server.tls.certPem] });
    const context = await browser.newContext();
    page = await context.newPage();
    authenticator = await addVirtualAuthenticator(page, { residentKeys: true, userVerification: true });
  });
  after(async () => {
    await browser?.close();
    await fhir?.stop();
    await ts?.stop();
    await receiver?.close();
  });

  /** Starts the app's standalone launch in the page; the app's redirect URI is answered by the test. */
  async function startLaunch() {
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(app, {
      redirect_uri: BG_APP.redirect_uri, scope: ASKED, resource: BG_FHIR, state,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
    });
    const flow: { verifier: string; state: string; callback?: URL } = { verifier, state };
    await page.route(`${BG_APP.redirect_uri}**`, async (route) => {
      flow.callback = new URL(route.request().url());
      await route.fulfill({ status: 200, contentType: 'text/plain', body: 'back at the app' });
    });
    await page.goto(url.href);
    return flow;
  }

  /**
   * Waits until the page has been sent to the app's redirect URI (the route above answers it). Not
   * page.waitForURL: with Chromium 156 + playwright-core, the intercepted cross-origin redirect is first
   * reported as a failed request (net::ERR_NAME_NOT_RESOLVED) and only then handed to the route, and a
   * waitForURL that is already waiting when that report arrives rejects with it.
   */
  async function backAtTheApp(flow: { callback?: URL }): Promise<URL> {
    for (let i = 0; i < 300 && !(flow.callback && page.url().startsWith(BG_APP.redirect_uri)); i++) await page.waitForTimeout(50);
    assert.ok(flow.callback, `redirected back to the app (page at ${page.url()})`);
    assert.ok(page.url().startsWith(BG_APP.redirect_uri), `the page shows the app's callback: ${page.url()}`);
    return flow.callback;
  }

  /** Password, then the passkey prompt (the virtual authenticator answers), then the consent page. */
  async function signInToConsent() {
    await page.fill('#username', CLINICIAN.username);
    await page.fill('#password', CLINICIAN.password);
    await page.click('form[action$="/login"] button[type="submit"]');
    await page.waitForSelector('text=Confirm with your passkey');
    await page.click('form[data-webauthn="authenticate"] button');
    await page.locator('form[action$="/confirm"]').waitFor();
  }

  /** The emergency form, filled and submitted as a clinician would. */
  async function breakTheGlass() {
    await page.getByRole('link', { name: /Emergency access \(break the glass\)/ }).click();
    await page.waitForURL(/\/interaction\/[^/]+\/break-glass$/);
    await page.fill('#bg-patient', OUTSIDE_PATIENT.id);
    await page.selectOption('#bg-reason', 'BTG');
    await page.fill('#bg-justification', JUSTIFICATION);
    await page.check('input[name="acknowledge"]');
    await page.click('form[data-webauthn="authenticate"] button[type="submit"]');
  }

  test('the clinician enrols a passkey on the account page', async () => {
    await page.goto(`${ts.issuer}/account`);
    await page.fill('#username', CLINICIAN.username);
    await page.fill('#password', CLINICIAN.password);
    await page.click('form[action$="/login"] button[type="submit"]');
    await page.waitForURL(`${ts.issuer}/account`);
    await page.fill('#passkey-name', 'Ward laptop');
    await page.click('form[data-webauthn="register"] button');
    await page.waitForURL(`${ts.issuer}/account?done=added`);
    assert.match(await page.textContent('main') ?? '', /Passkey added/);
    const stored = await authenticator.credentials();
    assert.equal(stored.length, 1);
    assert.equal(stored[0]!.isResidentCredential, true);
    // Signed out again: the launch below starts from a fresh sign-in.
    await page.context().clearCookies();
  });

  let eventId = '';

  test('standalone launch, patient not on the care team: emergency access with a fresh passkey → read-only, short, labelled token; FHIR reads only; review, audit, signed webhook', async () => {
    const flow = await startLaunch();
    await signInToConsent();

    // The picker offers the care team only.
    const offered = await Promise.all((await page.locator('input[type="radio"][name="patient"]').all()).map(async (input) => await input.getAttribute('value') ?? ''));
    assert.deepEqual(offered.sort(), CARE_TEAM_PATIENTS.map((p) => p.id).sort());
    const consentText = await page.textContent('main') ?? '';
    assert.doesNotMatch(consentText, new RegExp(OUTSIDE_PATIENT.name));
    assert.ok(!offered.includes(OUTSIDE_PATIENT.id));

    const signCountBefore = (await authenticator.credentials())[0]!.signCount;
    await breakTheGlass();
    const callback = await backAtTheApp(flow);
    await page.unroute(`${BG_APP.redirect_uri}**`);
    assert.ok((await authenticator.credentials())[0]!.signCount > signCountBefore, 'the virtual authenticator signed the emergency challenge');

    const tokens = await oidc.authorizationCodeGrant(app, callback, { pkceCodeVerifier: flow.verifier, expectedState: flow.state });
    assert.equal(tokens.refresh_token, undefined, 'no refresh token although offline_access was asked');
    // patient/Observation.cruds was asked (and the resource server allows it): the emergency rule cut it to reads.
    assert.deepEqual(tokens.scope!.split(' ').sort(), READ_ONLY, `read-only resource scopes only: ${tokens.scope}`);
    assert.ok(tokens.id_token, 'openid kept');
    assert.ok(tokens.expires_in! <= TTL && tokens.expires_in! >= TTL - 30, `lives ${tokens.expires_in}s (BREAK_GLASS_TTL ${TTL})`);
    assert.equal(tokens.patient, OUTSIDE_PATIENT.id);
    assert.equal(tokens.token_type.toLowerCase(), 'bearer');

    const info = await oidc.tokenIntrospection(app, tokens.access_token);
    assert.equal(info.active, true);
    assert.equal(info.purpose_of_use, 'BTG');
    assert.equal(info.break_glass, true);
    assert.equal(info.patient, OUTSIDE_PATIENT.id);
    assert.equal(info.aud, BG_FHIR);
    assert.deepEqual(info.cnf, { 'x5t#S256': ts.clientCert.sha256Thumbprint }, 'bound to the app\'s certificate');
    assert.ok(Number(info.exp) - Math.floor(Date.now() / 1000) <= TTL);

    // The example FHIR server: the app (its certificate, the token) reads p3, nothing else, and writes nothing.
    const fhirCall = async (path: string, init: { method?: string; body?: string } = {}) => {
      const res = await undiciFetch(`${fhir.url}${path}`, {
        method: init.method ?? 'GET',
        headers: { authorization: `Bearer ${tokens.access_token}`, ...(init.body ? { 'content-type': 'application/fhir+json' } : {}) },
        ...(init.body ? { body: init.body } : {}),
        dispatcher: ts.dispatcher,
      });
      return { status: res.status, challenge: res.headers.get('www-authenticate'), body: await res.json() as Record<string, unknown> };
    };
    const seen = fhirEvents.length;
    const patient = await fhirCall(`/Patient/${OUTSIDE_PATIENT.id}`);
    assert.equal(patient.status, 200, JSON.stringify(patient.body));
    assert.equal(patient.body.id, OUTSIDE_PATIENT.id);
    const observations = await fhirCall(`/Observation?patient=${OUTSIDE_PATIENT.id}`);
    assert.equal(observations.status, 200, JSON.stringify(observations.body));
    assert.equal(observations.body.resourceType, 'Bundle');
    assert.equal(observations.body.type, 'searchset');
    const entries = observations.body.entry as Array<{ resource: { subject: { reference: string } } }>;
    assert.ok(entries.length >= 1, 'p3 has an observation in data.json');
    assert.ok(entries.every((e) => e.resource.subject.reference === `Patient/${OUTSIDE_PATIENT.id}`));
    const other = await fhirCall(`/Patient/${CARE_TEAM_PATIENTS[0]!.id}`);
    assert.equal(other.status, 403, 'another patient, even one on the care team, is outside this emergency token');
    const write = await fhirCall('/Observation', {
      method: 'POST',
      body: JSON.stringify({ resourceType: 'Observation', status: 'final', code: { text: 'note' }, subject: { reference: `Patient/${OUTSIDE_PATIENT.id}` } }),
    });
    assert.equal(write.status, 403, JSON.stringify(write.body));
    assert.match(write.challenge ?? '', /^Bearer /);
    assert.match(write.challenge ?? '', /error="insufficient_scope"/);
    const events = fhirEvents.slice(seen);
    assert.deepEqual(events.map((e) => [e.method, e.status]), [['GET', 200], ['GET', 200], ['GET', 403], ['POST', 403]]);
    assert.ok(events.every((e) => e.purposeOfUse === 'BTG' && e.clientId === BG_APP.client_id), JSON.stringify(events));
    assert.equal(events[2]!.error, 'insufficient_scope');
    assert.equal(events[3]!.error, 'insufficient_scope');

    // The review item.
    const [event, ...more] = await listBreakGlassEvents(ts.testDb.db, { userId: await clinicianId() });
    assert.ok(event);
    assert.equal(more.length, 0);
    eventId = event.id;
    assert.equal(event.reasonCode, 'BTG');
    assert.equal(event.justification, JUSTIFICATION);
    assert.equal(event.patientPseudonym, ts.server.audit.pseudonym('patient', OUTSIDE_PATIENT.id));
    assert.equal(event.clientId, BG_APP.client_id);
    assert.equal(event.launchKind, 'standalone');
    assert.equal(event.review.status, 'open');
    assert.equal(event.credentialId, (await authenticator.credentials())[0]!.credentialId.replace(/=+$/, '').replace(/\+/g, '-').replace(/\//g, '_'));
    assert.equal(String(info.break_glass_id), event.id);
    const followed = await listBreakGlassTokens(ts.testDb.db, event.id);
    assert.ok(followed.length >= 1);
    assert.equal(followed[0]!.kind, 'access_token');
    assert.equal(followed[0]!.clientId, BG_APP.client_id);
    assert.equal(followed[0]!.audience, BG_FHIR);
    assert.deepEqual(followed[0]!.scope.split(' ').sort(), READ_ONLY);

    // The audit event, loud; the justification nowhere in the audit log.
    const { rows: granted } = await ts.testDb.db.query<{ severity: string; rule: string; details: Record<string, unknown>; patient_pseudonym: string | null }>(
      "SELECT severity, rule, details, patient_pseudonym FROM audit_events WHERE type = 'break_glass.granted' ORDER BY seq",
    );
    assert.equal(granted.length, 1);
    assert.equal(granted[0]!.severity, 'high');
    assert.equal(granted[0]!.details.break_glass_id, event.id);
    assert.equal(granted[0]!.details.purpose_of_use, 'BTG');
    assert.equal(granted[0]!.patient_pseudonym, event.patientPseudonym);
    const rows = await auditRows();
    assert.ok(rows.length > 0);
    assert.ok(rows.every((r) => !r.row.includes(JUSTIFICATION) && !r.row.includes('waiting room')), 'no justification in the audit log');

    // The privacy office's webhook: one POST, correctly signed, naming the event, without the justification.
    await receiver.waitFor(1);
    const { delivery, verified } = await receiver.onlyNotification();
    assert.equal(verified.type, 'break_glass.opened');
    assert.equal(verified.data.break_glass_id, event.id);
    assert.equal(verified.data.patient_pseudonym, event.patientPseudonym);
    assert.deepEqual(verified.data.purpose_of_use, { system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'BTG' });
    assert.ok(!delivery.body.includes(JUSTIFICATION) && !delivery.body.includes('waiting room'), 'no justification in the notification');
    assert.throws(() => new Webhook(`whsec_${randomBytes(32).toString('base64')}`).verify(delivery.body, delivery.headers as Record<string, string>),
      'another secret does not verify it');
  });

  test('the passkey prompt without user verification: a visible failure, no redirect, no second emergency access', async () => {
    assert.ok(eventId, 'the emergency access above was opened');
    await page.context().clearCookies();
    const grantedBefore = (await auditRows()).filter((r) => r.row.includes('"break_glass.granted"')).length;
    const flow = await startLaunch();
    await signInToConsent();
    await authenticator.setUserVerified(false);
    try {
      await breakTheGlass();
      // Either the page's script reports the failed ceremony, or the server refuses the answer: both visible.
      const failure = page.locator('#webauthn-failed:visible, p.error[role="alert"]:visible').first();
      await failure.waitFor({ state: 'visible' });
      assert.match(await failure.textContent() ?? '', /passkey/i);
      // Give a (wrong) redirect time to happen.
      await page.waitForTimeout(500);
      assert.equal(flow.callback, undefined, 'no redirect to the app');
      assert.match(page.url(), /\/interaction\/[^/]+\/break-glass$/, 'still on the emergency page');
    } finally {
      await authenticator.setUserVerified(true);
      await page.unroute(`${BG_APP.redirect_uri}**`);
    }
    const events = await listBreakGlassEvents(ts.testDb.db, { userId: await clinicianId() });
    assert.deepEqual(events.map((e) => e.id), [eventId], 'no second break-glass event');
    assert.equal((await auditRows()).filter((r) => r.row.includes('"break_glass.granted"')).length, grantedBefore);
    assert.equal(receiver.received.length, 1, 'nobody notified again');
  });
});
