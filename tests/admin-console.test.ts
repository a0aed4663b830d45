// The admin console (/admin) over real HTTPS against the real pages: who gets in (an administrator
// signed in with a passkey, recently), who is sent to sign in or refused, the CSRF defence, the client
// registration form with its errors next to their field, break-glass review closing, and the audit
// pages, which show patients only as pseudonyms. A software authenticator answers the passkey prompts.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { findUserByUsername } from '../src/accounts/users.ts';
import { openBreakGlassEvent, recordBreakGlassToken } from '../src/break-glass/events.ts';
import { isClientSecretDigest } from '../src/oidc/client-secrets.ts';
import { ACR_PHISHING_RESISTANT } from '../src/mfa/assurance.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { Browser, pageOptions, type PasskeyAnswerer, type Step } from './support/login-flow.ts';
import { SoftAuthenticator } from './support/soft-authenticator.ts';
import { basicAuth, CLINICIAN, FHIR, form, startTestServer, type TestServer } from './support/test-server.ts';

const ADMIN = { username: 'console.admin', password: 'console-admin-password-1' };
const PASSWORD_ADMIN = { username: 'console.pwadmin', password: 'console-pwadmin-password-1' };
// Distinctive, so that finding them (or not) in a page cannot be a coincidence.
const RAW_PATIENT = 'pt-raw-zq7w-4711';
const JUSTIFICATION = 'Unconscious in A&E, allergy list needed before sedation <b>kx3v</b>';
const NOTE = 'Checked with the ward, appropriate mm8q';
const CONSOLE_CLIENT = 'clinical-authz-account';

describe('admin console', () => {
  let ts: TestServer;
  let origin: string;
  let adminId: string;
  const adminKey = new SoftAuthenticator();
  const passkey: PasskeyAnswerer = (options) => adminKey.authenticate(options, { origin });
  /** The administrator's browser, signed in with the passkey (the first test does it). */
  let admin: Browser;
  let consoleCsrf: string;

  const url = (path: string) => new URL(path, ts.issuer);
  const csrfOf = (page: Step) => {
    const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1];
    assert.ok(csrf, `a CSRF token on the page (status ${page.status}): ${page.body.slice(0, 300)}`);
    return csrf;
  };
  const clientCount = async () => Number((await ts.testDb.db.query<{ n: number }>('SELECT count(*)::int AS n FROM clients')).rows[0]!.n);
  const auditRows = async (type: string) => (await ts.testDb.db.query<{
    rule: string; severity: string; actor_user: string | null; actor_client: string | null; target_client: string | null; details: Record<string, unknown>;
  }>('SELECT rule, severity, actor_user, actor_client, target_client, details FROM audit_events WHERE type = $1 ORDER BY seq', [type])).rows;

  /** Signs in on the account pages with a password only (acr pwd). */
  async function accountSignIn(username: string, password: string): Promise<{ browser: Browser; page: Step }> {
    const browser = new Browser(ts);
    const page = await browser.signIn(await browser.follow(await browser.get(url('/account'))), username, password);
    assert.equal(page.status, 200, page.body.slice(0, 300));
    return { browser, page };
  }

  /** The good form for a confidential client (secret) acting for itself. */
  const serviceForm = (csrf: string, clientId: string) => ({
    csrf, client_id: clientId, client_name: 'Nightly export', token_endpoint_auth_method: 'client_secret_basic', application_type: 'web',
    redirect_uris: '', grant_client_credentials: 'on', scope: '', resource_scope: 'system/Patient.rs', tls_client_auth_subject_dn: '', jwks_uri: '',
  });

  before(async () => {
    ts = await startTestServer();
    origin = new URL(ts.issuer).origin;
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      users: [
        { username: ADMIN.username, password: ADMIN.password, displayName: 'Ada Console', roles: ['admin'] },
        { username: PASSWORD_ADMIN.username, password: PASSWORD_ADMIN.password, roles: ['admin'] },
      ],
    }));
    adminId = (await findUserByUsername(ts.testDb.db, ADMIN.username))!.id;
  });
  after(async () => ts?.stop());

  test('an administrator signed in with a password is sent to a passkey sign-in and comes back to the console', async () => {
    // Password sign-in on the account page, then the first passkey (the way every administrator starts).
    const { browser, page } = await accountSignIn(ADMIN.username, ADMIN.password);
    const answer = adminKey.register(pageOptions(page.body, 'register'), { origin });
    const added = await browser.post(url('/account/passkeys'), { csrf: csrfOf(page), name: 'Admin key', credential: JSON.stringify(answer) });
    assert.equal(added.status, 303);

    // acr pwd: the console asks for a passkey sign-in (acr_values phr), coming back to the page asked for.
    const asked = await browser.get(url('/admin/break-glass'));
    assert.equal(asked.status, 302);
    assert.equal(asked.location, '/account/login?return=%2Fadmin%2Fbreak-glass&passkey=1');
    const authorize = await browser.get(url(asked.location!));
    const auth = new URL(authorize.location!);
    assert.equal(auth.pathname, '/auth');
    assert.equal(auth.searchParams.get('client_id'), CONSOLE_CLIENT);
    assert.equal(auth.searchParams.get('response_type'), 'none');
    assert.equal(auth.searchParams.get('acr_values'), ACR_PHISHING_RESISTANT);
    assert.equal(auth.searchParams.get('max_age'), null);
    const prompt = await browser.follow(authorize);
    assert.match(prompt.body, /action="\/interaction\/[^"]+\/passkey"/, 'a passkey step-up, no password form');
    const back = await browser.signIn(prompt, ADMIN.username, '', passkey);
    assert.equal(back.status, 200, back.body.slice(0, 400));
    assert.match(back.body, /<h1>Break-glass reviews/);
    assert.match(back.body, /Signed in as <strong>Ada Console<\/strong>/);
    admin = browser;
    consoleCsrf = csrfOf(await admin.get(url('/admin/clients/new')));
  });

  test('no session: sent to sign in (with a passkey); a form posted without one is refused', async () => {
    const anonymous = new Browser(ts);
    const page = await anonymous.get(url('/admin'));
    assert.equal(page.status, 302);
    assert.equal(page.location, '/account/login?return=%2Fadmin&passkey=1');
    const before = await clientCount();
    const posted = await anonymous.post(url('/admin/clients'), serviceForm('x', 'anonymous-client'));
    assert.equal(posted.status, 401);
    assert.equal(await clientCount(), before);

    // The return path is this server's /account or /admin pages only, never another site.
    const { browser } = await accountSignIn(CLINICIAN.username, CLINICIAN.password);
    const evil = await browser.follow(await browser.get(url('/account/login?return=https%3A%2F%2Fevil.example%2Fadmin&reauth=1')));
    const done = await browser.signIn(evil, CLINICIAN.username, CLINICIAN.password);
    assert.equal(done.status, 200);
    assert.match(done.body, /<h1>Your account/);
  });

  test('a clinician (no admin role) gets 403, audited; a password-only administrator is asked for a passkey', async () => {
    const { browser } = await accountSignIn(CLINICIAN.username, CLINICIAN.password);
    for (const path of ['/admin', '/admin/clients/new', '/admin/break-glass']) {
      const refused = await browser.get(url(path));
      assert.equal(refused.status, 403, path);
      assert.match(refused.body, /admin role/);
    }
    const csrf = csrfOf(await browser.get(url('/account')));
    assert.equal((await browser.post(url('/admin/clients'), serviceForm(csrf, 'clinician-client'))).status, 403, 'account CSRF tokens are no good here');
    const refusals = await auditRows('admin.console_refused');
    const clinician = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!.id;
    assert.deepEqual(refusals.filter((r) => r.rule === 'admin_role').map((r) => [r.actor_user, r.details.path]),
      [[clinician, '/admin'], [clinician, '/admin/clients/new'], [clinician, '/admin/break-glass']]);

    const pw = await accountSignIn(PASSWORD_ADMIN.username, PASSWORD_ADMIN.password);
    const asked = await pw.browser.get(url('/admin'));
    assert.equal(asked.status, 302);
    assert.equal(asked.location, '/account/login?return=%2Fadmin&passkey=1');
    const missing = await pw.browser.follow(asked);
    assert.match(missing.body, /A passkey is required/, 'no passkey: told to register one, not let in');
    assert.equal((await pw.browser.get(url('/admin'))).status, 302, 'still not in');
  });

  test('an old sign-in is sent to sign in again (max_age=0, passkey)', async () => {
    // A second administrator session, signed in with the passkey alone, then aged past 15 minutes.
    const browser = new Browser(ts);
    const page = await browser.follow(await browser.get(url('/admin')));
    const inside = await browser.signIn(page, ADMIN.username, '', passkey);
    assert.equal(inside.status, 200, inside.body.slice(0, 300));
    const sid = /_session=([^;]+)/.exec(browser.jar.header())![1]!;
    await ts.testDb.db.query(
      `UPDATE oidc_payloads SET payload = jsonb_set(payload, '{loginTs}', to_jsonb(extract(epoch from now())::int - 3600)) WHERE model = 'Session' AND id = $1`,
      [sid],
    );
    const stale = await browser.get(url('/admin'));
    assert.equal(stale.status, 302);
    assert.equal(stale.location, '/account/login?return=%2Fadmin&passkey=1&reauth=1');
    const auth = new URL((await browser.get(url(stale.location!))).location!);
    assert.equal(auth.searchParams.get('max_age'), '0');
    assert.equal(auth.searchParams.get('acr_values'), ACR_PHISHING_RESISTANT);
  });

  test('forged, missing or cross-origin CSRF: 403 and nothing created', async () => {
    const before = await clientCount();
    assert.equal((await admin.post(url('/admin/clients'), serviceForm('forged', 'csrf-client'))).status, 403);
    const { csrf: _csrf, ...withoutCsrf } = serviceForm(consoleCsrf, 'csrf-client');
    assert.equal((await admin.post(url('/admin/clients'), withoutCsrf)).status, 403);
    const foreign = await ts.fetch(url('/admin/clients'), {
      method: 'POST', body: new URLSearchParams(serviceForm(consoleCsrf, 'csrf-client')).toString(),
      headers: { cookie: admin.jar.header(), 'content-type': 'application/x-www-form-urlencoded', origin: 'https://evil.example' },
    });
    assert.equal(foreign.status, 403);
    assert.equal(await clientCount(), before);
    assert.equal((await auditRows('admin.console_refused')).filter((r) => r.rule === 'csrf' && r.actor_user === adminId).length, 3);
  });

  test('validation: the error is shown next to its field, the values are kept, HTTP 400, nothing stored', async () => {
    const before = await clientCount();
    const bad = await admin.post(url('/admin/clients'), {
      csrf: consoleCsrf, client_id: 'http-app', client_name: 'Plain <http> app', token_endpoint_auth_method: 'client_secret_basic',
      application_type: 'web', redirect_uris: 'https://ok.example/cb\r\nhttp://plain.example/cb', grant_authorization_code: 'on',
      scope: 'openid', resource_scope: '', tls_client_auth_subject_dn: '', jwks_uri: '',
    });
    assert.equal(bad.status, 400);
    assert.match(bad.body,
      /<textarea id="redirect_uris" name="redirect_uris" rows="3" spellcheck="false" aria-invalid="true" aria-describedby="error-redirect_uris">https:\/\/ok.example\/cb\nhttp:\/\/plain.example\/cb<\/textarea>\s*<p class="hint">[^<]*<\/p>\s*<p class="field-error" id="error-redirect_uris" role="alert">redirect_uris must use https/);
    assert.match(bad.body, /id="client_name" name="client_name" type="text" value="Plain &lt;http&gt; app"/, 'values kept, escaped');
    assert.equal((bad.body.match(/class="field-error"/g) ?? []).length, 1, 'one error, at its field');

    const cases: Array<[Record<string, string>, string, RegExp]> = [
      [{ token_endpoint_auth_method: 'tls_client_auth' }, 'tls_client_auth_subject_dn', /tls_client_auth/],
      [{ grant_client_credentials: '' }, 'grant_types', /grant_types: choose at least one/],
      [{ token_endpoint_auth_method: 'none' }, 'grant_types', /grant_types: client_credentials needs an authenticated client/],
      [{ resource_scope: 'patient/Nope.zz' }, 'resource_scope', /resource_scope has an invalid SMART scope/],
      [{ jwks_uri: 'http://keys.example/jwks' }, 'jwks_uri', /jwks_uri must use https/],
      [{ client_id: 'x' }, 'client_id', /client_id must be 3-128 characters/],
      [{ token_endpoint_auth_method: 'client_secret_post' }, 'token_endpoint_auth_method', /token_endpoint_auth_method must be one of/],
      [{ break_glass_allowed: 'on' }, 'break_glass_allowed', /break_glass_allowed needs the authorization_code grant/],
    ];
    for (const [change, field, message] of cases) {
      const fields: Record<string, string> = { ...serviceForm(consoleCsrf, 'invalid-client'), ...change };
      for (const [k, v] of Object.entries(fields)) if (v === '' && k.startsWith('grant_')) delete fields[k];
      const page = await admin.post(url('/admin/clients'), fields);
      assert.equal(page.status, 400, `${field}: ${page.body.slice(0, 200)}`);
      const shown = new RegExp(`<p class="field-error" id="error-${field}" role="alert">([^<]*)</p>`).exec(page.body);
      assert.ok(shown, `an error next to ${field}: ${/field-error[^<]*<|class="error"[^<]*</.exec(page.body)?.[0]}`);
      assert.match(shown[1]!, message);
    }
    assert.equal(await clientCount(), before);
  });

  test('a good form registers the client: secret shown once, digest stored, change recorded; listed and searchable', async () => {
    const page = await admin.post(url('/admin/clients'), serviceForm(consoleCsrf, 'nightly-export'));
    assert.equal(page.status, 201, page.body.slice(0, 400));
    assert.equal((await admin.get(url('/admin/clients/nightly-export'))).status, 200);
    const secret = /<code id="client-secret">([^<]+)<\/code>/.exec(page.body)?.[1];
    assert.ok(secret && secret.length >= 32, 'the secret is on the page');
    const { rows: [stored] } = await ts.testDb.db.query<{ metadata: Record<string, unknown> }>('SELECT metadata FROM clients WHERE client_id = $1', ['nightly-export']);
    assert.ok(isClientSecretDigest(stored!.metadata.client_secret), 'a digest is stored');
    assert.notEqual(stored!.metadata.client_secret, secret);
    assert.deepEqual(stored!.metadata.response_types, []);
    assert.deepEqual(stored!.metadata.redirect_uris, []);

    // The secret works, once: the details page never shows it again.
    const token = await ts.fetch(ts.endpoint('/token'), {
      method: 'POST', ...form({ grant_type: 'client_credentials', scope: 'system/Patient.rs', resource: FHIR }),
      headers: { ...form({}).headers, authorization: basicAuth('nightly-export', secret) },
    });
    assert.equal(token.status, 200);
    const details = await admin.get(url('/admin/clients/nightly-export'));
    assert.equal(details.status, 200);
    assert.ok(!details.body.includes(secret), 'not shown again');
    assert.match(details.body, /<th>has_client_secret<\/th><td><code>true<\/code>/);
    assert.match(details.body, /<code>admin.client_created<\/code>/, 'its audit events are on its page');
    assert.match(details.body, /<code>token.issued<\/code>|<code>token\.[a-z_]+<\/code>/);

    const { rows: changes } = await ts.testDb.db.query<{ kind: string; target: string; after: Record<string, unknown> }>(
      'SELECT kind, target, after FROM admin_changes WHERE target = $1', ['nightly-export'],
    );
    assert.equal(changes.length, 1);
    assert.equal(changes[0]!.after.client_secret, undefined, 'no secret in the change record');
    const [created] = (await auditRows('admin.client_created')).filter((r) => r.target_client === 'nightly-export');
    assert.deepEqual([created!.rule, created!.actor_user, created!.actor_client], ['admin_console', adminId, CONSOLE_CLIENT]);

    // The same form posted twice (reload, double click) with a generated id registers one client.
    const newForm = await admin.get(url('/admin/clients/new'));
    const formId = /name="form_id" value="([A-Za-z0-9_-]+)"/.exec(newForm.body)?.[1];
    assert.ok(formId, 'the form carries its own id');
    const twice = { ...serviceForm(consoleCsrf, ''), form_id: formId };
    const countBefore = await clientCount();
    const first = await admin.post(url('/admin/clients'), twice);
    assert.equal(first.status, 201, first.body.slice(0, 300));
    assert.match(first.body, /<code id="client-secret">/);
    const repeated = await admin.post(url('/admin/clients'), twice);
    assert.equal(repeated.status, 200);
    assert.match(repeated.body, /This form was already submitted: nothing new was registered and the secret, shown the first time, is not shown again/);
    assert.doesNotMatch(repeated.body, /<code id="client-secret">/);
    assert.equal(await clientCount(), countBefore + 1);

    const again = await admin.post(url('/admin/clients'), serviceForm(consoleCsrf, 'nightly-export'));
    assert.equal(again.status, 409);
    assert.match(again.body, /<p class="field-error" id="error-client_id" role="alert">client_id nightly-export is already registered<\/p>/);

    const listed = await admin.get(url('/admin'));
    assert.match(listed.body, /<a href="\/admin\/clients\/nightly-export">nightly-export<\/a>/);
    assert.match(listed.body, /<a href="\/admin\/clients\/test-app">test-app<\/a>/);
    const searched = await admin.get(url('/admin?q=Nightly'));
    assert.match(searched.body, /nightly-export/);
    assert.doesNotMatch(searched.body, /clients\/test-app"/);
  });

  test('break-glass: open reviews with justification and tokens (reading audited); closed through the form', async () => {
    const clinician = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    const event = await openBreakGlassEvent(ts.testDb.db, {
      userId: clinician.id, clientId: 'test-app', patientPseudonym: ts.server.audit.pseudonym('patient', RAW_PATIENT), reasonCode: 'ETREAT',
      justification: JUSTIFICATION, launchKind: 'standalone', grantId: 'grant-console-bg', scope: 'openid patient/Observation.rs',
      credentialId: 'cred-bg', lifetimeSeconds: 900, dailyLimit: 5,
    });
    await recordBreakGlassToken(ts.testDb.db, event.id, {
      tokenRef: 'jti-console-bg-1', kind: 'access_token', clientId: 'test-app', audience: FHIR, scope: 'patient/Observation.rs',
      expiresAt: new Date(Date.now() + 300_000),
    });
    const page = await admin.get(url('/admin/break-glass'));
    assert.equal(page.status, 200);
    assert.match(page.body, /<td><code>jti-console-bg-1<\/code><\/td><td>access_token<\/td><td>test-app<\/td><td>https:\/\/fhir\.test\/r4<\/td>/, 'its tokens');
    assert.ok(page.body.includes('Unconscious in A&amp;E, allergy list needed before sedation &lt;b&gt;kx3v&lt;/b&gt;'), 'the justification, escaped');
    assert.ok(!page.body.includes(RAW_PATIENT), 'the patient as a pseudonym');
    const listedAudit = (await auditRows('break_glass.reviews_listed')).at(-1)!;
    assert.deepEqual([listedAudit.rule, listedAudit.actor_user, listedAudit.details.event_ids], ['admin_console', adminId, [event.id]]);

    const close = url(`/admin/break-glass/${event.id}/close`);
    const noNote = await admin.post(close, { csrf: consoleCsrf, outcome: 'appropriate', note: '  ' });
    assert.equal(noNote.status, 400);
    assert.match(noNote.body, new RegExp(`id="error-${event.id}" role="alert">note is required`));
    assert.equal((await admin.post(close, { csrf: 'forged', outcome: 'appropriate', note: NOTE })).status, 403);
    const closed = await admin.post(close, { csrf: consoleCsrf, outcome: 'appropriate', note: NOTE });
    assert.equal(closed.status, 303);
    assert.equal(closed.location, '/admin/break-glass?done=closed');
    const after = await admin.get(url('/admin/break-glass?done=closed'));
    assert.match(after.body, /Review closed/);
    assert.match(after.body, /No open reviews/);
    const { rows: [row] } = await ts.testDb.db.query<{ review_status: string; review_outcome: string; review_note: string; reviewed_by: string }>(
      'SELECT review_status, review_outcome, review_note, reviewed_by FROM break_glass_events WHERE id = $1', [event.id],
    );
    assert.deepEqual(row, { review_status: 'closed', review_outcome: 'appropriate', review_note: NOTE, reviewed_by: adminId });
    const [reviewed] = await auditRows('break_glass.reviewed');
    assert.deepEqual([reviewed!.rule, reviewed!.severity, reviewed!.actor_user, reviewed!.target_client, reviewed!.details.target_user],
      ['admin_console', 'info', adminId, 'test-app', clinician.id]);
    const again = await admin.post(close, { csrf: consoleCsrf, outcome: 'inappropriate', note: 'second opinion' });
    assert.equal(again.status, 409, 'a closed review stays closed');
    const everything = (await ts.testDb.db.query<{ row: string }>('SELECT a::text AS row FROM audit_events a')).rows.map((r) => r.row).join('\n');
    assert.ok(!everything.includes('kx3v') && !everything.includes('mm8q'), 'neither the justification nor the note is audited');
  });

  test('audit pages: a user\'s and a client\'s recent events, patients as pseudonyms only', async () => {
    const clinician = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    await ts.server.audit.record({
      type: 'launch.refused', outcome: 'denied', severity: 'warning', rule: 'care_team',
      actor: { userId: clinician.id, clientId: 'test-app' }, target: { patientId: RAW_PATIENT },
    });
    const pseudonym = ts.server.audit.pseudonym('patient', RAW_PATIENT);
    const lookup = await admin.get(url(`/admin/users?user=${CLINICIAN.username}`));
    assert.equal(lookup.status, 303);
    assert.equal(lookup.location, `/admin/users/${clinician.id}/audit`);
    const page = await admin.get(url(lookup.location!));
    assert.equal(page.status, 200);
    assert.match(page.body, /<h1>Audit events of dr\.test/);
    assert.ok(page.body.includes(`<code class="pseudonym">${pseudonym}</code>`), 'the pseudonym');
    assert.ok(!page.body.includes(RAW_PATIENT), 'never the patient id');
    assert.match(page.body, /<code>break_glass\.reviewed<\/code>/, 'changes made to the user are listed too');
    const rows = [...page.body.matchAll(/<tr class="severity-/g)].length;
    assert.ok(rows >= 3, `events listed (${rows})`);
    const client = await admin.get(url('/admin/clients/test-app'));
    assert.ok(client.body.includes(pseudonym) && !client.body.includes(RAW_PATIENT));
    const viewed = (await auditRows('admin.audit_viewed')).filter((r) => r.rule === 'admin_console').slice(-2);
    assert.deepEqual(viewed.map((r) => [r.actor_user, r.details.by, r.details.target_user ?? r.target_client]),
      [[adminId, 'user', clinician.id], [adminId, 'client', 'test-app']], 'who looked is recorded');
    // Strict CSP, no script at all, nothing cached.
    const res = await ts.fetch(url('/admin/clients/test-app'), { headers: { cookie: admin.jar.header() } });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'none'.*script-src 'self'/);
    assert.doesNotMatch(res.headers.get('content-security-policy') ?? '', /unsafe-inline/);
    assert.equal(res.headers.get('cache-control'), 'no-store');
    const body = await res.text();
    assert.doesNotMatch(body, /<script|style=|\son[a-z]+=/i);
    assert.equal((await admin.get(url('/admin/users/nobody/audit'))).status, 404);
    assert.equal((await admin.get(url('/admin/clients/nobody'))).status, 404);
    assert.equal((await admin.get(url('/admin/nowhere'))).status, 404);
  });
});
