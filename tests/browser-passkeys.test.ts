// Real Chromium (playwright-core) with the DevTools virtual authenticator (internal transport,
// resident keys, user verification) against the real pages: enrol a passkey on the account page,
// sign out, sign in with password + passkey, then passwordless; the ID tokens say so in acr/amr.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as oidc from 'openid-client';

import { ACR_PHISHING_RESISTANT } from '../src/mfa/assurance.ts';
import {
  addVirtualAuthenticator, browserAvailable, launchBrowser, NO_BROWSER, type Browser, type Page, type VirtualAuthenticator,
} from './support/browser.ts';
import { relyingParty } from './support/relying-party.ts';
import { APP, CLINICIAN, FHIR, startTestServer, type TestServer } from './support/test-server.ts';

describe('passkeys in a real browser', { skip: browserAvailable() ? false : NO_BROWSER }, () => {
  let ts: TestServer;
  let browser: Browser;
  let page: Page;
  let authenticator: VirtualAuthenticator;
  let app: oidc.Configuration;

  before(async () => {
    ts = await startTestServer();
    app = await relyingParty(ts);
    browser = await launchBrowser({ trustCertificatePem: [ts.server.tls.certPem] });
    const context = await browser.newContext();
    page = await context.newPage();
    authenticator = await addVirtualAuthenticator(page);
  });
  after(async () => {
    await browser?.close();
    await ts?.stop();
  });

  /** Runs an authorization request in the page; the app's redirect URI is answered by the test. */
  async function authorize(signIn: (page: Page) => Promise<void>): Promise<oidc.TokenEndpointResponse & oidc.TokenEndpointResponseHelpers> {
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(app, {
      redirect_uri: APP.redirect_uri, scope: 'openid fhirUser patient/Observation.rs', resource: FHIR, state,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
    });
    let callback: URL | undefined;
    await page.route(`${APP.redirect_uri}**`, async (route) => {
      callback = new URL(route.request().url());
      await route.fulfill({ status: 200, contentType: 'text/plain', body: 'back at the app' });
    });
    await page.goto(url.href);
    await signIn(page);
    const allow = page.locator('form[action$="/confirm"] button[type="submit"]');
    await Promise.race([page.waitForURL(`${APP.redirect_uri}**`), allow.waitFor()]);
    if (!callback) await allow.click();
    await page.waitForURL(`${APP.redirect_uri}**`);
    await page.unroute(`${APP.redirect_uri}**`);
    assert.ok(callback, 'redirected back to the app');
    return oidc.authorizationCodeGrant(app, callback, { pkceCodeVerifier: verifier, expectedState: state });
  }

  async function typePassword(p: Page) {
    await p.fill('#username', CLINICIAN.username);
    await p.fill('#password', CLINICIAN.password);
    await p.click('form[action$="/login"] button[type="submit"]');
  }

  test('enrol a passkey on the account page', async () => {
    await page.goto(`${ts.issuer}/account`);
    await typePassword(page);
    await page.waitForURL(`${ts.issuer}/account`);
    assert.match(await page.textContent('main') ?? '', /No passkey yet/);
    await page.fill('#passkey-name', 'Work laptop');
    await page.click('form[data-webauthn="register"] button');
    await page.waitForURL(`${ts.issuer}/account?done=added`);
    const text = await page.textContent('main') ?? '';
    assert.match(text, /Passkey added/);
    assert.match(text, /Work laptop/);
    const stored = await authenticator.credentials();
    assert.equal(stored.length, 1);
    assert.equal(stored[0]!.isResidentCredential, true, 'a discoverable credential');
    assert.equal(stored[0]!.rpId, 'localhost');
  });

  test('sign out', async () => {
    await page.goto(`${ts.issuer}/session/end`);
    await page.click('button[name="logout"]');
    await page.waitForSelector('text=You are signed out');
  });

  test('sign in with password + passkey: acr phr, amr pwd hwk user mfa', async () => {
    const tokens = await authorize(async (p) => {
      await typePassword(p);
      await p.waitForSelector('text=Confirm with your passkey');
      await p.click('form[data-webauthn="authenticate"] button');
    });
    const claims = tokens.claims()!;
    assert.equal(claims.acr, ACR_PHISHING_RESISTANT);
    assert.deepEqual(claims.amr, ['pwd', 'hwk', 'user', 'mfa']);
    const counted = (await authenticator.credentials())[0]!.signCount;
    const { rows } = await ts.testDb.db.query<{ sign_count: string | number }>('SELECT sign_count FROM webauthn_credentials');
    assert.equal(Number(rows[0]!.sign_count), counted, 'the server stored the authenticator\'s counter');
  });

  test('passwordless sign-in with the discoverable passkey: acr phr, amr hwk user mfa', async () => {
    await page.context().clearCookies();
    const tokens = await authorize(async (p) => {
      await p.click('form[data-webauthn="authenticate"] button');
    });
    const claims = tokens.claims()!;
    assert.equal(claims.acr, ACR_PHISHING_RESISTANT);
    assert.deepEqual(claims.amr, ['hwk', 'user', 'mfa']);
  });

  test('a browser whose authenticator cannot verify the user gets a clear message and no sign-in', async () => {
    await page.context().clearCookies();
    await authenticator.setUserVerified(false);
    try {
      await page.goto(oidc.buildAuthorizationUrl(app, {
        redirect_uri: APP.redirect_uri, scope: 'openid', resource: FHIR, state: oidc.randomState(),
        code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()), code_challenge_method: 'S256',
      }).href);
      await page.click('form[data-webauthn="authenticate"] button');
      const message = page.locator('#webauthn-failed');
      await message.waitFor({ state: 'visible' });
      assert.match(await message.textContent() ?? '', /passkey/i);
      assert.match(page.url(), /\/interaction\//, 'still on the sign-in page');
    } finally {
      await authenticator.setUserVerified(true);
    }
  });
});
