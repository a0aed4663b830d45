// The real login form over HTTPS: markup, escaping, generic failures, throttling and lock, consent,
// body limits and RP-initiated logout.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

import { errors } from 'oidc-provider';

import { LoginThrottle } from '../src/accounts/login-throttle.ts';
import { burnPasswordVerification, warmUpPasswordHashing } from '../src/accounts/passwords.ts';
import { migrate } from '../src/db/migrate.ts';
import { grantConsent } from '../src/interactions/consent.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';
import { APP, CLINICIAN, startTestServer, type TestServer } from './support/test-server.ts';

type Response = Awaited<ReturnType<TestServer['fetch']>>;

const GENERIC_FAILURE = 'Sign-in failed. Check your username and password, or try again later.';
const HOSTILE = { client_id: 'hostile-app', redirect_uri: 'https://hostile.test/callback', client_name: '<script>alert("client")</script> & Co' };

/** A tiny browser: a cookie jar (by name; all cookies are sent, whatever their path) and no redirects followed. */
class Browser {
  readonly cookies = new Map<string, string>();

  constructor(private readonly ts: TestServer) {}

  async request(url: string | URL, init: { method?: string; body?: string; headers?: Record<string, string> } = {}): Promise<Response> {
    const target = new URL(url, this.ts.issuer);
    const headers: Record<string, string> = { accept: 'text/html', ...init.headers };
    if (this.cookies.size) headers.cookie = [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    const res = await this.ts.fetch(target, { method: init.method ?? 'GET', body: init.body, headers });
    for (const cookie of res.headers.getSetCookie()) {
      const [pair = '', ...attributes] = cookie.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      const expired = attributes.some((a) => /^\s*expires=Thu, 01 Jan 1970/i.test(a) || /^\s*max-age=0\s*$/i.test(a));
      if (expired || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
    return res;
  }

  postForm(url: string | URL, params: Record<string, string>, headers: Record<string, string> = {}) {
    return this.request(url, {
      method: 'POST',
      body: new URLSearchParams(params).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    });
  }
}

function location(res: Response, base: string): URL {
  const value = res.headers.get('location');
  assert.ok(value, `a Location header on ${res.status}`);
  return new URL(value, base);
}

interface Started {
  browser: Browser;
  interaction: string;
  state: string;
  verifier: string;
}

/** GET /auth with PKCE; returns the login interaction's path. */
async function startAuthorization(ts: TestServer, browser = new Browser(ts), client: { client_id: string; redirect_uri: string } = APP, extra: Record<string, string> = {}): Promise<Started> {
  const verifier = randomBytes(32).toString('base64url');
  const state = randomBytes(8).toString('hex');
  const url = new URL(`${ts.issuer}/auth`);
  for (const [k, v] of Object.entries({
    client_id: client.client_id,
    response_type: 'code',
    redirect_uri: client.redirect_uri,
    scope: 'openid',
    state,
    code_challenge: createHash('sha256').update(verifier).digest('base64url'),
    code_challenge_method: 'S256',
    ...extra,
  })) url.searchParams.set(k, v);
  const res = await browser.request(url);
  const text = await res.text();
  assert.equal(res.status, 303, text.slice(0, 300));
  const to = location(res, ts.issuer);
  assert.match(to.pathname, /^\/interaction\/[A-Za-z0-9_-]{10,64}$/);
  return { browser, interaction: to.pathname, state, verifier };
}

async function login(ts: TestServer, started: Started, username: string, password: string): Promise<{ res: Response; text: string; ms: number }> {
  const t0 = performance.now();
  const res = await started.browser.postForm(`${ts.issuer}${started.interaction}/login`, { username, password });
  const text = await res.text();
  return { res, text, ms: performance.now() - t0 };
}

/** The visible error message of a re-rendered login page. */
function failureMessage(text: string): string | undefined {
  return /<p class="error" role="alert">([^<]*)<\/p>/.exec(text)?.[1];
}

/** The only script elements: our two same-origin scripts and the (never executed) JSON options block. */
function assertOnlyOwnScripts(text: string) {
  const scripts = text.match(/<script\b[^>]*>/gi) ?? [];
  for (const tag of scripts) {
    assert.ok(
      ['<script src="/static/simplewebauthn-browser.js">', '<script src="/static/passkey.js">', '<script type="application/json" id="webauthn-options-authenticate">'].includes(tag),
      `unexpected script element ${tag}`,
    );
  }
}

function assertGenericFailure(result: { res: Response; text: string }, status: number) {
  assert.equal(result.res.status, status, result.text.slice(0, 300));
  assert.match(result.res.headers.get('content-type') ?? '', /^text\/html/);
  assert.equal(failureMessage(result.text), GENERIC_FAILURE);
  assert.match(result.text, /name="password"/, 'the form is shown again');
}

/** Follows redirects on the server's own origin, stopping at the first one that leaves it. */
async function follow(ts: TestServer, browser: Browser, res: Response): Promise<{ res: Response; url: URL }> {
  let current = res;
  let url = new URL(ts.issuer);
  for (let hops = 0; hops < 10; hops += 1) {
    if (![302, 303].includes(current.status)) return { res: current, url };
    url = location(current, ts.issuer);
    if (!current.bodyUsed) await current.arrayBuffer();
    if (url.origin !== new URL(ts.issuer).origin) return { res: current, url };
    current = await browser.request(url);
  }
  throw new Error('too many redirects');
}

/** Logs in and allows consent; returns the redirect to the client. */
async function signInAndConsent(ts: TestServer, started: Started): Promise<URL> {
  const { res } = await login(ts, started, CLINICIAN.username, CLINICIAN.password);
  assert.equal(res.status, 303);
  const consent = await follow(ts, started.browser, res);
  assert.equal(consent.res.status, 200);
  assert.match(consent.url.pathname, /^\/interaction\/[A-Za-z0-9_-]{10,64}$/, 'an interaction, now for consent');
  const page = await consent.res.text();
  assert.match(page, /Allow access\?/);
  assert.match(page, /Test App/);
  const action = /<form method="post" action="([^"]+\/confirm)"/.exec(page)?.[1];
  assert.equal(action, `${consent.url.pathname}/confirm`);
  const allowed = await started.browser.postForm(`${ts.issuer}${action}`, {});
  assert.equal(allowed.status, 303, await allowed.clone().text());
  const done = await follow(ts, started.browser, allowed);
  return done.url;
}

describe('login page and flow', () => {
  let ts: TestServer;

  before(async () => {
    ts = await startTestServer({ env: { LOGIN_MAX_FAILURES: '3' } });
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      clients: [{
        client_id: HOSTILE.client_id,
        client_secret: 'hostile-app-secret-0123456789-0123456789',
        client_name: HOSTILE.client_name,
        grant_types: ['authorization_code'],
        redirect_uris: [HOSTILE.redirect_uri],
        scope: 'openid',
      }],
    }));
  });

  after(async () => {
    await ts?.stop();
  });

  test('login page: username and password inputs with the right autocomplete', async () => {
    const started = await startAuthorization(ts);
    const res = await started.browser.request(started.interaction);
    const text = await res.text();
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/html/);
    assert.match(res.headers.get('cache-control') ?? '', /no-store/);
    const username = /<input[^>]*\bname="username"[^>]*>/.exec(text)?.[0];
    const password = /<input[^>]*\bname="password"[^>]*>/.exec(text)?.[0];
    assert.ok(username, 'a username input');
    assert.ok(password, 'a password input');
    assert.match(username, /autocomplete="username"/);
    assert.match(password, /autocomplete="current-password"/);
    assert.match(password, /type="password"/);
    assert.match(text, new RegExp(`<form method="post" action="${started.interaction}/login"`));
    assert.match(text, /Test App/);
    assertOnlyOwnScripts(text); // same-origin scripts and a JSON data block, nothing inline
    assert.doesNotMatch(text, /\sstyle=/i, 'no inline style');
  });

  test('hostile client_name is escaped on the login page', async () => {
    const started = await startAuthorization(ts, undefined, HOSTILE);
    const res = await started.browser.request(started.interaction);
    const text = await res.text();
    assert.equal(res.status, 200, text.slice(0, 300));
    assert.doesNotMatch(text, /<script>alert/i);
    assertOnlyOwnScripts(text);
    assert.ok(text.includes('&lt;script&gt;alert(&quot;client&quot;)&lt;/script&gt; &amp; Co'), 'client_name echoed escaped');
  });

  test('hostile username is echoed escaped, never raw', async () => {
    const started = await startAuthorization(ts);
    const hostile = '"><script>alert(1)</script>';
    const result = await login(ts, started, hostile, 'whatever-password');
    assertGenericFailure(result, 401);
    assert.doesNotMatch(result.text, /<script>alert/i);
    assertOnlyOwnScripts(result.text);
    assert.ok(result.text.includes('value="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"'), 'username echoed escaped in the value attribute');
  });

  test('wrong password and unknown username: same message, same 401', async () => {
    const started = await startAuthorization(ts);
    const wrongPassword = await login(ts, started, CLINICIAN.username, 'not-the-password-0000');
    const unknownUser = await login(ts, started, 'nobody.here', 'not-the-password-0000');
    assertGenericFailure(wrongPassword, 401);
    assertGenericFailure(unknownUser, 401);
    assert.equal(failureMessage(wrongPassword.text), failureMessage(unknownUser.text));
    // Reset the clinician's counter so other tests start clean.
    const ok = await login(ts, started, CLINICIAN.username, CLINICIAN.password);
    assert.equal(ok.res.status, 303);
  });

  test('lock after LOGIN_MAX_FAILURES: even the right password fails generically (429), delay grows', async () => {
    const started = await startAuthorization(ts);
    const first = await login(ts, started, CLINICIAN.username, 'wrong-password-1111');
    const second = await login(ts, started, CLINICIAN.username, 'wrong-password-2222');
    const third = await login(ts, started, CLINICIAN.username, 'wrong-password-3333');
    assertGenericFailure(first, 401);
    assertGenericFailure(second, 401);
    assertGenericFailure(third, 429);
    assert.ok(third.ms > first.ms + 300, `3rd failure (${third.ms.toFixed(0)} ms) slower than the 1st (${first.ms.toFixed(0)} ms)`);

    const correct = await login(ts, started, CLINICIAN.username, CLINICIAN.password);
    assertGenericFailure(correct, 429);
    assert.equal(failureMessage(correct.text), failureMessage(first.text));
    // Usernames are normalised: another spelling is the same locked account.
    assertGenericFailure(await login(ts, started, ` ${CLINICIAN.username.toUpperCase()} `, CLINICIAN.password), 429);
  });

  test('unknown usernames are locked the same way', async () => {
    const started = await startAuthorization(ts);
    const name = `ghost.${randomBytes(4).toString('hex')}`;
    const results = [];
    for (let i = 0; i < 3; i += 1) results.push(await login(ts, started, name, `wrong-password-${i}`));
    assertGenericFailure(results[0]!, 401);
    assertGenericFailure(results[1]!, 401);
    assertGenericFailure(results[2]!, 429);
    assertGenericFailure(await login(ts, started, name, 'yet-another-password'), 429);
  });

  test('login POST with a JSON body: 415 invalid_request', async () => {
    const started = await startAuthorization(ts);
    const res = await started.browser.request(`${started.interaction}/login`, {
      method: 'POST',
      body: JSON.stringify({ username: CLINICIAN.username, password: CLINICIAN.password }),
      headers: { 'content-type': 'application/json', accept: 'application/json' },
    });
    const text = await res.text();
    assert.equal(res.status, 415, text.slice(0, 300));
    assert.equal((JSON.parse(text) as { error?: string }).error, 'invalid_request');
    assert.doesNotMatch(text, /\n\s+at /);
  });

  test('login POST over 16 KiB: 413', async () => {
    const started = await startAuthorization(ts);
    const res = await started.browser.postForm(`${started.interaction}/login`, {
      username: CLINICIAN.username, password: CLINICIAN.password, padding: 'a'.repeat(17 * 1024),
    }, { accept: 'application/json' });
    const text = await res.text();
    assert.equal(res.status, 413, text.slice(0, 300));
    assert.equal((JSON.parse(text) as { error?: string }).error, 'invalid_request');
  });
});

describe('successful login, consent and logout', () => {
  let ts: TestServer;

  before(async () => {
    ts = await startTestServer();
  });

  after(async () => {
    await ts?.stop();
  });

  test('login then Allow redirects to the redirect_uri with code and state', async () => {
    const started = await startAuthorization(ts);
    const back = await signInAndConsent(ts, started);
    assert.equal(`${back.origin}${back.pathname}`, APP.redirect_uri);
    assert.ok(back.searchParams.get('code'), 'a code');
    assert.equal(back.searchParams.get('state'), started.state);
    assert.equal(back.searchParams.get('iss'), ts.issuer);
    assert.equal(back.searchParams.get('error'), null);
  });

  test('RP-initiated logout: confirm page with xsrf, logout=yes ends the session', async () => {
    const browser = new Browser(ts);
    const started = await startAuthorization(ts, browser);
    await signInAndConsent(ts, started);

    // The session is live: prompt=none succeeds silently.
    const silent = await startSilent(ts, browser);
    assert.ok(silent.get('code'), `prompt=none while signed in: ${silent.toString()}`);

    const end = new URL(`${ts.issuer}/session/end`);
    end.searchParams.set('client_id', APP.client_id);
    end.searchParams.set('post_logout_redirect_uri', 'https://app.test/');
    const page = await browser.request(end);
    const text = await page.text();
    assert.equal(page.status, 200, text.slice(0, 300));
    const formTag = /<form[^>]*id="op\.logoutForm"[^>]*>/.exec(text)?.[0] ?? /<form[^>]*>/.exec(text)?.[0];
    assert.ok(formTag, 'a logout form');
    const action = /action="([^"]+)"/.exec(formTag)?.[1];
    assert.ok(action);
    assert.equal(new URL(action, ts.issuer).pathname, '/session/end/confirm');
    assert.match(formTag, /method="post"/i);
    const xsrf = /<input[^>]*name="xsrf"[^>]*value="([^"]+)"/.exec(text)?.[1];
    assert.ok(xsrf, 'an xsrf token');
    assert.match(text, /name="logout" value="yes"/);
    assert.doesNotMatch(text, /<script/i, 'no inline script (CSP)');

    // A wrong xsrf is refused and leaves the session alone.
    const forged = await browser.postForm(new URL(action, ts.issuer), { xsrf: 'forged', logout: 'yes' });
    const forgedText = await forged.text();
    assert.ok(forged.status >= 400 && forged.status < 500, `forged xsrf: ${forged.status}`);
    assert.doesNotMatch(forgedText, /\n\s+at /);

    const confirmed = await browser.postForm(new URL(action, ts.issuer), { xsrf, logout: 'yes' });
    await confirmed.arrayBuffer();
    assert.equal(confirmed.status, 303);
    assert.equal(location(confirmed, ts.issuer).href, 'https://app.test/');

    const after = await startSilent(ts, browser);
    assert.equal(after.get('error'), 'login_required');
    assert.equal(after.get('code'), null);

    const { rows } = await ts.testDb.db.query<{ actor_user: string | null; request_id: string | null }>(
      "SELECT actor_user, request_id FROM audit_events WHERE type = 'session.ended' ORDER BY seq DESC LIMIT 1",
    );
    assert.match(String(rows[0]?.actor_user), /^[0-9a-f-]{36}$/, 'logout is audited with the user');
    assert.ok(rows[0]?.request_id);
  });
});

/** GET /auth with prompt=none, following the server's own redirects; returns the client's callback query. */
async function startSilent(ts: TestServer, browser: Browser): Promise<URLSearchParams> {
  const verifier = randomBytes(32).toString('base64url');
  const url = new URL(`${ts.issuer}/auth`);
  for (const [k, v] of Object.entries({
    client_id: APP.client_id, response_type: 'code', redirect_uri: APP.redirect_uri, scope: 'openid', state: 'silent', prompt: 'none',
    code_challenge: createHash('sha256').update(verifier).digest('base64url'), code_challenge_method: 'S256',
  })) url.searchParams.set(k, v);
  const { url: landed } = await follow(ts, browser, await browser.request(url));
  assert.equal(`${landed.origin}${landed.pathname}`, APP.redirect_uri, `landed on ${landed.href}`);
  assert.equal(landed.searchParams.get('state'), 'silent');
  return landed.searchParams;
}

describe('lock expiry', () => {
  let ts: TestServer;

  before(async () => {
    ts = await startTestServer({ env: { LOGIN_MAX_FAILURES: '1', LOGIN_LOCK_SECONDS: '2' } });
  });

  after(async () => {
    await ts?.stop();
  });

  test('a lock expires after LOGIN_LOCK_SECONDS', async () => {
    const started = await startAuthorization(ts);
    assertGenericFailure(await login(ts, started, CLINICIAN.username, 'wrong-password-1111'), 429);
    assertGenericFailure(await login(ts, started, CLINICIAN.username, CLINICIAN.password), 429);
    await sleep(2_500);
    const ok = await login(ts, started, CLINICIAN.username, CLINICIAN.password);
    assert.equal(ok.res.status, 303, ok.text.slice(0, 300));
  });
});

describe('concurrent failed logins cannot outrun the lock', () => {
  let ts: TestServer;

  before(async () => {
    // The per-username and per-IP rate limiters set high: only the lock itself bounds the guesses.
    ts = await startTestServer({ env: { LOGIN_MAX_FAILURES: '5', RATE_LIMIT_LOGIN_USER_POINTS: '1000', RATE_LIMIT_LOGIN_IP_POINTS: '1000' } });
  });

  after(async () => {
    await ts?.stop();
  });

  async function auditCounts(): Promise<Record<string, number>> {
    const { rows } = await ts.testDb.db.query<{ type: string; n: number }>(
      "SELECT type, count(*)::int AS n FROM audit_events WHERE type IN ('login.failed', 'login.locked') GROUP BY type",
    );
    return Object.fromEntries(rows.map((r) => [r.type, r.n]));
  }

  async function throttleRows(): Promise<number[]> {
    const { rows } = await ts.testDb.db.query<{ failures: number }>('SELECT failures FROM login_throttle');
    return rows.map((r) => r.failures);
  }

  for (const kind of ['known', 'unknown'] as const) {
    test(`20 parallel wrong passwords for one ${kind} username: at most LOGIN_MAX_FAILURES password checks, then locked`, async () => {
      const username = kind === 'known' ? CLINICIAN.username : `ghost.${randomBytes(4).toString('hex')}`;
      const password = kind === 'known' ? CLINICIAN.password : 'any-password-at-all-0000';
      await ts.testDb.db.query('DELETE FROM login_throttle');
      const before = await auditCounts();
      const started = await startAuthorization(ts);
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => login(ts, started, username, `wrong-password-${i}-0000`)));

      for (const result of results) assertGenericFailure(result, result.res.status === 401 ? 401 : 429);
      const after = await auditCounts();
      const failed = (after['login.failed'] ?? 0) - (before['login.failed'] ?? 0);
      const locked = (after['login.locked'] ?? 0) - (before['login.locked'] ?? 0);
      assert.equal(failed + locked, 20, 'every attempt audited');
      assert.ok(failed <= 5, `${failed} login.failed events (at most LOGIN_MAX_FAILURES)`);
      assert.equal(results.filter((r) => r.res.status === 401).length, failed);
      // One row per username; its count is the number of password verifications granted.
      const rows = await throttleRows();
      assert.equal(rows.length, 1);
      assert.ok(rows[0]! <= 5, `${rows[0]} password checks for one username`);
      assert.equal(rows[0], 5, 'the lock was reached');

      const correct = await login(ts, started, username, password);
      assertGenericFailure(correct, 429);
      assert.equal((await throttleRows())[0], 5, 'a refused attempt is not counted and checks no password');
    });
  }
});

describe('consent after the grant vanished', () => {
  let ts: TestServer;

  before(async () => {
    ts = await startTestServer();
  });

  after(async () => {
    await ts?.stop();
  });

  /** Allows every consent page on the way; returns where the browser leaves the server and the statuses seen. */
  async function allowUntilClient(browser: Browser, res: Response): Promise<{ url: URL; statuses: number[] }> {
    const statuses = [res.status];
    let current = res;
    for (let rounds = 0; rounds < 3; rounds += 1) {
      const { res: landed, url } = await follow(ts, browser, current);
      statuses.push(landed.status);
      if (url.origin !== new URL(ts.issuer).origin) return { url, statuses };
      const page = await landed.text();
      assert.equal(landed.status, 200, page.slice(0, 300));
      assert.match(page, /Allow access\?/, 'another consent page');
      current = await browser.postForm(`${ts.issuer}${url.pathname}/confirm`, {});
      statuses.push(current.status);
      assert.notEqual(current.status, 500);
    }
    throw new Error('consent never finished');
  }

  test('grant deleted while the consent page is open: Allow gives a code (fresh grant), never 500', async () => {
    const browser = new Browser(ts);
    const first = await signInAndConsent(ts, await startAuthorization(ts, browser));
    assert.ok(first.searchParams.get('code'));

    // Signed in; an added scope needs consent again.
    const second = await startAuthorization(ts, browser, APP, { scope: 'openid profile' });
    const page = await browser.request(second.interaction);
    const text = await page.text();
    assert.equal(page.status, 200, text.slice(0, 300));
    assert.match(text, /Allow access\?/);

    const deleted = await ts.testDb.db.query("DELETE FROM oidc_payloads WHERE model = 'Grant'");
    assert.ok((deleted.rowCount ?? 0) >= 1, 'the grant row existed');

    const confirmed = await browser.postForm(`${ts.issuer}${second.interaction}/confirm`, {});
    assert.equal(confirmed.status, 303, await confirmed.clone().text());
    const { url, statuses } = await allowUntilClient(browser, confirmed);
    assert.ok(!statuses.includes(500), `statuses: ${statuses.join(', ')}`);
    assert.equal(`${url.origin}${url.pathname}`, APP.redirect_uri);
    assert.equal(url.searchParams.get('error'), null, url.href);
    assert.ok(url.searchParams.get('code'), 'a code');
    assert.equal(url.searchParams.get('state'), second.state);

    const { rows } = await ts.testDb.db.query<{ n: number }>("SELECT count(*)::int AS n FROM oidc_payloads WHERE model = 'Grant'");
    assert.equal(rows[0]?.n, 1, 'one fresh grant');
  });

  test('consent without a signed-in account: an oidc-provider error, not a plain Error', async () => {
    const details = { session: undefined, params: { client_id: APP.client_id }, prompt: { name: 'consent', details: {} } };
    let recorded = false;
    await assert.rejects(
      grantConsent(ts.server.provider(), details as unknown as Parameters<typeof grantConsent>[1], async () => { recorded = true; },
        { db: ts.testDb.db, form: new Map(), grantTtlSeconds: 60 }),
      (err: unknown) => err instanceof errors.SessionNotFound && (err as { status?: number }).status === 400,
    );
    assert.equal(recorded, false);
  });
});

describe('login throttle sweep', () => {
  let testDb: TestDb;

  before(async () => {
    testDb = await createTestDb();
    await migrate(testDb.db);
  });

  after(async () => {
    await testDb?.drop();
  });

  test('rows older than the lock window and not locked are deleted; recent or locked rows stay', async () => {
    const key = randomBytes(32).toString('base64url');
    const throttle = new LoginThrottle(testDb.db, key, { maxFailures: 3, lockSeconds: 1, baseDelayMs: 1, maxDelayMs: 1 });
    for (let i = 0; i < 100; i += 1) {
      const reservation = await throttle.reserve(`random.${randomBytes(6).toString('hex')}`);
      assert.equal(reservation.granted, true);
    }
    // One username locked, too: its lock ends with the window.
    for (let i = 0; i < 3; i += 1) await throttle.reserve('locked.user');
    assert.deepEqual(await throttle.reserve('locked.user'), { granted: false });
    await sleep(1_300);

    await throttle.reserve('recent.user');
    // A lock still running is kept even when its last attempt is old.
    await testDb.db.query(
      `INSERT INTO login_throttle (username_hash, failures, last_failure_at, locked_until)
       VALUES ('still-locked', 3, now() - interval '1 hour', now() + interval '1 hour')`,
    );
    assert.equal(await throttle.sweep(), 101);
    const { rows } = await testDb.db.query<{ username_hash: string; failures: number }>('SELECT username_hash, failures FROM login_throttle ORDER BY username_hash');
    assert.equal(rows.length, 2);
    assert.ok(rows.some((r) => r.username_hash === 'still-locked'));
    assert.ok(rows.some((r) => r.failures === 1 && r.username_hash !== 'still-locked'), 'the recent row');
    assert.equal(await throttle.sweep(), 0);
  });

  test('an expired lock starts a fresh count: the next attempt is checked', async () => {
    const throttle = new LoginThrottle(testDb.db, randomBytes(32).toString('base64url'), { maxFailures: 2, lockSeconds: 1, baseDelayMs: 1, maxDelayMs: 1 });
    assert.deepEqual(await throttle.reserve('someone'), { granted: true, failures: 1, locked: false });
    assert.deepEqual(await throttle.reserve('someone'), { granted: true, failures: 2, locked: true });
    assert.deepEqual(await throttle.reserve('someone'), { granted: false });
    await sleep(1_100);
    assert.deepEqual(await throttle.reserve('someone'), { granted: true, failures: 1, locked: false });
  });
});

describe('password hashing warm-up', () => {
  test('in a fresh process, after warmUpPasswordHashing the first unknown-user check costs about one verification', async () => {
    // Child processes: the dummy hash is per process, and this one has built it already. argon2's first
    // runs in a process are slower, so the first burn is compared with the verification that follows it
    // (without the warm-up it would cost a hash plus a verification, about twice as long).
    const script = `
      import { burnPasswordVerification, hashPassword, verifyPassword, warmUpPasswordHashing } from ${JSON.stringify(new URL('../src/accounts/passwords.ts', import.meta.url).href)};
      await warmUpPasswordHashing();
      await warmUpPasswordHashing();
      const real = await hashPassword('a-real-password-for-timing');
      let t0 = performance.now();
      const burned = await burnPasswordVerification('a-wrong-password-000');
      const burn = performance.now() - t0;
      t0 = performance.now();
      await verifyPassword(real, 'a-wrong-password-000');
      const verify = performance.now() - t0;
      console.log(JSON.stringify({ burn, verify, burned }));
    `;
    const ratios: number[] = [];
    for (let run = 0; run < 3; run += 1) {
      const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script]);
      const { burn, verify, burned } = JSON.parse(stdout.trim().split('\n').at(-1)!) as { burn: number; verify: number; burned: boolean };
      assert.equal(burned, false, 'never succeeds');
      ratios.push(burn / verify);
    }
    const median = ratios.sort((a, b) => a - b)[1]!;
    assert.ok(median < 1.5, `first burn / verification: ${ratios.map((r) => r.toFixed(2)).join(', ')}`);
  });

  test('burnPasswordVerification works without a warm-up too (built on first use)', async () => {
    assert.equal(await burnPasswordVerification('anything-at-all-0000'), false);
    await warmUpPasswordHashing();
  });
});
