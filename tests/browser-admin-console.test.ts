// The admin console in real Chromium (playwright-core) with the DevTools virtual authenticator: an
// administrator enrols a passkey on the account page, signs in to /admin with it (the console asks for
// a passkey sign-in), registers a confidential mTLS workload through the form (tls_client_auth, subject
// DN, client_credentials only, no redirect URIs) and finds it listed. Then, outside the browser, the
// workload gets a certificate from the dev CA and a client-credentials token with openid-client over
// mTLS; introspection shows the token active and bound to that certificate. Screenshots of the console
// are saved to test-artifacts/ for review.
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdir, readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';

import * as oidc from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';

import { findUserByUsername } from '../src/accounts/users.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import {
  addVirtualAuthenticator, browserAvailable, launchBrowser, NO_BROWSER, type Browser, type Page, type VirtualAuthenticator,
} from './support/browser.ts';
import { devCa, issueClientCertificate } from './support/pki.ts';
import { FHIR, startTestServer, type TestServer } from './support/test-server.ts';

const ADMIN = { username: 'browser.admin', password: 'browser-admin-password-1' };
const WORKLOAD = 'ward-sync-workload';
const ARTIFACTS = fileURLToPath(new URL('../test-artifacts/', import.meta.url));
const SCREENSHOT = `${ARTIFACTS}admin-console.png`;
const FORM_SCREENSHOT = `${ARTIFACTS}admin-console-new-client.png`;
const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

describe('admin console in a real browser', { skip: browserAvailable() ? false : NO_BROWSER }, () => {
  let ts: TestServer;
  let browser: Browser;
  let page: Page;
  let authenticator: VirtualAuthenticator;
  const agents: Agent[] = [];
  const cspViolations: string[] = [];

  before(async () => {
    ts = await startTestServer();
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      users: [{ username: ADMIN.username, password: ADMIN.password, displayName: 'Grace Admin', roles: ['admin'] }],
    }));
    browser = await launchBrowser({ trustCertificatePem: [ts.server.tls.certPem] });
    const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    page = await context.newPage();
    authenticator = await addVirtualAuthenticator(page);
    page.on('console', (message) => { if (/Content.Security.Policy/i.test(message.text())) cspViolations.push(message.text()); });
  });
  after(async () => {
    await browser?.close();
    await Promise.all(agents.map((a) => a.close()));
    await ts?.stop();
  });

  test('an administrator enrols a passkey, signs in to the console with it and registers an mTLS workload', async () => {
    await page.goto(`${ts.issuer}/account`);
    await page.fill('#username', ADMIN.username);
    await page.fill('#password', ADMIN.password);
    await page.click('form[action$="/login"] button[type="submit"]');
    await page.waitForURL(`${ts.issuer}/account`);
    await page.fill('#passkey-name', 'Admin laptop');
    await page.click('form[data-webauthn="register"] button');
    await page.waitForURL(`${ts.issuer}/account?done=added`);
    assert.equal((await authenticator.credentials()).length, 1);

    // Signed in with a password only: the console sends the administrator to a passkey sign-in.
    await page.goto(`${ts.issuer}/admin`);
    await page.waitForURL(/\/interaction\//);
    assert.equal(await page.locator('form[action$="/login"]').count(), 0, 'no password form: the passkey is asked for');
    await page.click('form[data-webauthn="authenticate"] button');
    await page.waitForURL(`${ts.issuer}/admin`);
    assert.match(await page.textContent('nav.console') ?? '', /Signed in as Grace Admin/);

    await page.click('nav.console a[href="/admin/clients/new"]');
    await page.waitForURL(`${ts.issuer}/admin/clients/new`);
    await page.fill('#client_id', WORKLOAD);
    await page.fill('#client_name', 'Ward sync (mTLS workload)');
    await page.selectOption('#token_endpoint_auth_method', 'tls_client_auth');
    await page.uncheck('input[name="grant_authorization_code"]');
    await page.check('input[name="grant_client_credentials"]');
    await page.fill('#redirect_uris', '');
    await page.fill('#scope', '');
    await page.fill('#resource_scope', 'system/Patient.rs');
    await page.fill('#tls_client_auth_subject_dn', `CN=${WORKLOAD}`);
    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: FORM_SCREENSHOT, fullPage: true });
    await page.click('form.client-form button[type="submit"]');
    await page.waitForSelector('h1:has-text("Client registered")');
    const created = await page.textContent('main') ?? '';
    assert.match(created, new RegExp(`Client ${WORKLOAD} is registered`));
    assert.match(created, /This client has no secret/);
    assert.equal(await page.locator('#client-secret').count(), 0);

    await page.click('nav.console a[href="/admin"]');
    await page.waitForURL(`${ts.issuer}/admin`);
    const row = page.locator('table.clients tr', { has: page.locator(`a[href="/admin/clients/${WORKLOAD}"]`) });
    assert.equal(await row.count(), 1, 'the workload is listed');
    assert.match(await row.textContent() ?? '', /tls_client_auth[\s\S]*client_credentials[\s\S]*active/);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    assert.deepEqual(cspViolations, [], 'nothing the strict CSP had to block');

    const png = await readFile(SCREENSHOT);
    assert.ok(png.length > 10_000, `a real screenshot (${png.length} bytes)`);
    assert.deepEqual(png.subarray(0, 8), PNG_SIGNATURE, 'a PNG');
    assert.deepEqual((await readFile(FORM_SCREENSHOT)).subarray(0, 8), PNG_SIGNATURE);

    const { rows: [stored] } = await ts.testDb.db.query<{ metadata: Record<string, unknown> }>('SELECT metadata FROM clients WHERE client_id = $1', [WORKLOAD]);
    assert.deepEqual(
      [stored!.metadata.token_endpoint_auth_method, stored!.metadata.tls_client_auth_subject_dn, stored!.metadata.grant_types,
        stored!.metadata.response_types, stored!.metadata.redirect_uris, stored!.metadata.client_secret],
      ['tls_client_auth', `CN=${WORKLOAD}`, ['client_credentials'], [], [], undefined],
    );
    const adminId = (await findUserByUsername(ts.testDb.db, ADMIN.username))!.id;
    const { rows: audit } = await ts.testDb.db.query<{ rule: string; actor_user: string }>(
      "SELECT rule, actor_user FROM audit_events WHERE type = 'admin.client_created' AND target_client = $1", [WORKLOAD],
    );
    assert.deepEqual(audit, [{ rule: 'admin_console', actor_user: adminId }]);
  });

  test('the workload gets a certificate-bound client-credentials token with openid-client over mTLS', async () => {
    const certificate = await issueClientCertificate(await devCa(ts.keysDir), WORKLOAD);
    const agent = new Agent({ connect: { ca: ts.caPem, cert: certificate.certPem, key: certificate.keyPem } });
    agents.push(agent);
    const mtlsFetch = ((url: string, options: Record<string, unknown>) =>
      undiciFetch(url, { ...options, dispatcher: agent } as never)) as unknown as oidc.CustomFetch;
    const config = await oidc.discovery(new URL(ts.issuer), WORKLOAD, { use_mtls_endpoint_aliases: true }, oidc.TlsClientAuth(), {
      [oidc.customFetch]: mtlsFetch,
    });
    config[oidc.customFetch] = mtlsFetch;

    const tokens = await oidc.clientCredentialsGrant(config, { scope: 'system/Patient.rs', resource: FHIR });
    assert.equal(tokens.token_type.toLowerCase(), 'bearer');
    assert.equal(tokens.scope, 'system/Patient.rs');
    assert.equal(tokens.refresh_token, undefined);

    const introspection = await oidc.tokenIntrospection(config, tokens.access_token);
    assert.equal(introspection.active, true);
    assert.equal(introspection.client_id, WORKLOAD);
    assert.equal(introspection.scope, 'system/Patient.rs');
    assert.deepEqual([introspection.aud].flat(), [FHIR]);
    const thumbprint = createHash('sha256').update(new X509Certificate(certificate.certPem).raw).digest('base64url');
    assert.equal((introspection.cnf as { 'x5t#S256'?: string } | undefined)?.['x5t#S256'], thumbprint, 'bound to the workload certificate');

    // Another certificate (another workload's name) is not this client.
    const stranger = await issueClientCertificate(await devCa(ts.keysDir), 'someone-else');
    const strangerAgent = new Agent({ connect: { ca: ts.caPem, cert: stranger.certPem, key: stranger.keyPem } });
    agents.push(strangerAgent);
    const refused = await undiciFetch(`${ts.mtlsBaseUrl}/token`, {
      method: 'POST', dispatcher: strangerAgent, headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ grant_type: 'client_credentials', client_id: WORKLOAD, scope: 'system/Patient.rs', resource: FHIR }).toString(),
    });
    assert.equal(refused.status, 401);
    assert.equal(((await refused.json()) as { error: string }).error, 'invalid_client');
  });
});
