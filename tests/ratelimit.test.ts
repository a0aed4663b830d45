// Rate limits shared by all processes: the counters (memory/PGlite, PostgreSQL, Redis) shared by two
// independent limiter sets, the client middleware (keys, 429 + Retry-After, one audit event per
// window, no work past the counter, 503 when the store fails), the login check, and — once wired
// into the app — two server instances on one database enforcing one limit.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';

import Koa from 'koa';
import { SignJWT } from 'jose';

import { deriveAuditKeys } from '../src/audit/keys.ts';
import { AuditLog } from '../src/audit/log.ts';
import { loadConfig, type Config } from '../src/config.ts';
import type { Db } from '../src/db/index.ts';
import { migrate } from '../src/db/migrate.ts';
import { oauthFormBodies } from '../src/http/oauth-form-bodies.ts';
import { claimedClient, clientRateLimit, limitedEndpoint } from '../src/ratelimit/client-limit.ts';
import { consumePoint, createRateLimiters, RateLimitUnavailableError, type RateLimiters } from '../src/ratelimit/limiters.ts';
import { checkLoginRateLimit } from '../src/ratelimit/login-limit.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';
import { Browser } from './support/login-flow.ts';
import { APP, basicAuth, CLINICIAN, FHIR, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const RUN = randomBytes(6).toString('hex');
let sequence = 0;
/** A key prefix nobody else uses: tests never see each other's (or an earlier run's) counters. */
const uniquePrefix = (name: string) => `test:${RUN}:${name}:${(sequence += 1)}`;

let testDb: TestDb;
let audit: AuditLog;
const opened: RateLimiters[] = [];

before(async () => {
  testDb = await createTestDb();
  await migrate(testDb.db);
  audit = new AuditLog(testDb.db, deriveAuditKeys(randomBytes(32).toString('base64url')), undefined);
});
after(async () => {
  await Promise.all(opened.map((l) => l.close()));
  await testDb.drop();
});

function testConfig(env: Record<string, string> = {}, redisUrl?: string): Config {
  const config = loadConfig({
    NODE_ENV: 'test',
    RATE_LIMIT_CLIENT_POINTS: '3',
    RATE_LIMIT_CLIENT_WINDOW: '60',
    RATE_LIMIT_LOGIN_IP_POINTS: '4',
    RATE_LIMIT_LOGIN_IP_WINDOW: '60',
    RATE_LIMIT_LOGIN_USER_POINTS: '2',
    RATE_LIMIT_LOGIN_USER_WINDOW: '120',
    ...env,
  });
  return { ...config, redisUrl };
}

/** A second "process": on PostgreSQL an independent connection pool; on PGlite the same database. */
function secondDb(): Db {
  return testDb.openAnother() ?? testDb.db;
}

async function limiters(options: { config?: Config; db?: Db; keyPrefix?: string } = {}): Promise<RateLimiters> {
  const created = await createRateLimiters(options.config ?? testConfig(), options.db ?? testDb.db, { keyPrefix: options.keyPrefix ?? uniquePrefix('l') });
  opened.push(created);
  return created;
}

async function rateLimitEvents(where: string, params: unknown[] = []): Promise<Array<Record<string, unknown>>> {
  const { rows } = await testDb.db.query(`SELECT * FROM audit_events WHERE type = 'rate_limit.exceeded' AND ${where} ORDER BY seq`, params);
  return rows;
}

/** Two limiter sets on one store, as two server processes would have them. */
async function twoProcesses(config = testConfig()): Promise<[RateLimiters, RateLimiters]> {
  const keyPrefix = uniquePrefix('pair');
  const first = await limiters({ config, keyPrefix });
  const second = await limiters({ config, keyPrefix, db: config.redisUrl ? testDb.db : secondDb() });
  return [first, second];
}

async function assertSharedLimit(first: RateLimiters, second: RateLimiters) {
  const key = `c:shared-${randomBytes(4).toString('hex')}`;
  const points = first.rules.client.points;
  for (let i = 0; i < points; i += 1) {
    const outcome = await consumePoint(i % 2 === 0 ? first : second, 'client', key);
    assert.equal(outcome.allowed, true, `request ${i + 1} of ${points} is within the limit`);
  }
  const refused = await consumePoint(points % 2 === 0 ? first : second, 'client', key);
  assert.equal(refused.allowed, false, 'the next request is over the limit, whichever process gets it');
  assert.ok(!refused.allowed && refused.firstRefusal);
  const again = await consumePoint(points % 2 === 0 ? second : first, 'client', key);
  assert.equal(again.allowed, false, 'the other process refuses it too');
  assert.ok(!again.allowed && !again.firstRefusal, 'only one refusal per window is the first');
  assert.ok(!again.allowed && again.retryAfterSeconds >= 1 && again.retryAfterSeconds <= first.rules.client.windowSeconds);
}

describe('rate-limit counters', () => {
  test('backend: PostgreSQL with DATABASE_URL, memory on the embedded database', async () => {
    const l = await limiters();
    assert.equal(l.backend, testDb.db.kind === 'postgres' ? 'postgres' : 'memory');
    assert.equal(l.enabled, true);
    assert.deepEqual(l.rules.client, { points: 3, windowSeconds: 60 });
  });

  test('two limiter sets on one database share their counters', async () => {
    const [first, second] = await twoProcesses();
    assert.equal(first.backend, second.backend);
    await assertSharedLimit(first, second);
  });

  test('limiters are independent of each other: client, login address and login username', async () => {
    const l = await limiters();
    for (let i = 0; i < 3; i += 1) assert.equal((await consumePoint(l, 'client', 'same')).allowed, true);
    assert.equal((await consumePoint(l, 'client', 'same')).allowed, false);
    assert.equal((await consumePoint(l, 'loginIp', 'same')).allowed, true, 'another limiter, another counter');
    assert.equal((await consumePoint(l, 'loginUser', 'same')).allowed, true);
  });

  test('PostgreSQL: counters live in rate_limits; a flood of refusals costs no further query', async (t) => {
    if (testDb.db.kind !== 'postgres') return t.skip('needs DATABASE_URL');
    const l = await limiters();
    const pool = testDb.db.pgPool!;
    const seen: string[] = [];
    const original = pool.query.bind(pool);
    (pool as unknown as { query: unknown }).query = (...args: unknown[]) => {
      const q = args[0] as string | { text?: string };
      seen.push(typeof q === 'string' ? q : q.text ?? '');
      return (original as (...a: unknown[]) => unknown)(...args);
    };
    try {
      for (let i = 0; i < 4; i += 1) await consumePoint(l, 'client', 'flood');
      assert.equal(seen.length, 4, 'one statement per counted request');
      assert.ok(seen.every((s) => /INSERT INTO "rate_limits"/.test(s)));
      for (let i = 0; i < 20; i += 1) assert.equal((await consumePoint(l, 'client', 'flood')).allowed, false);
      assert.equal(seen.length, 4, 'refused from memory until the window ends: no query at all');
    } finally {
      (pool as unknown as { query: unknown }).query = original;
    }
    const { rows } = await testDb.db.query<{ points: number }>('SELECT points FROM rate_limits WHERE key LIKE $1', [`${l.client.keyPrefix}:%`]);
    assert.deepEqual(rows.map((r) => r.points), [4]);
  });

  test('Redis: two limiter sets on one Redis share their counters', async (t) => {
    let pair: [RateLimiters, RateLimiters];
    try {
      pair = await twoProcesses(testConfig({}, REDIS_URL));
    } catch (err) {
      return t.skip(`no Redis at ${REDIS_URL}: ${(err as Error).message}`);
    }
    assert.equal(pair[0].backend, 'redis');
    await assertSharedLimit(...pair);
  });

  test('Redis unreachable: startup fails; Redis gone later: requests are refused (fail closed)', async (t) => {
    await assert.rejects(
      createRateLimiters(testConfig({}, 'redis://127.0.0.1:1'), testDb.db, { redisConnectTimeoutMs: 1_000 }),
      /rate-limit store unreachable \(REDIS_URL\)/,
    );
    let l: RateLimiters;
    try {
      l = await createRateLimiters(testConfig({}, REDIS_URL), testDb.db, { keyPrefix: uniquePrefix('gone') });
    } catch (err) {
      return t.skip(`no Redis at ${REDIS_URL}: ${(err as Error).message}`);
    }
    assert.equal((await consumePoint(l, 'client', 'k')).allowed, true);
    await l.close();
    await assert.rejects(consumePoint(l, 'client', 'k'), RateLimitUnavailableError);
  });

  test('RATE_LIMIT_ENABLED=false: no store is opened and nothing is limited', async () => {
    const l = await limiters({ config: testConfig({ RATE_LIMIT_ENABLED: 'false' }, 'redis://127.0.0.1:1') });
    assert.equal(l.enabled, false);
    assert.equal(l.backend, 'memory');
    const result = await checkLoginRateLimit(l, audit, { ip: '192.0.2.1', username: 'x' });
    assert.deepEqual(result, { allowed: true });
  });
});

describe('client id claimed by the request', () => {
  const ctxFor = (headers: Record<string, string>, body?: Record<string, unknown>) => ({
    get: (name: string) => headers[name.toLowerCase()] ?? '',
    request: { body },
    ip: '198.51.100.7',
  }) as unknown as Koa.Context;
  const basic = (user: string, secret = 's') => `Basic ${Buffer.from(`${user}:${secret}`).toString('base64')}`;

  test('HTTP Basic user part, form-urlencoded as RFC 6749 §2.3.1 says', () => {
    // Counted per (claimed client, source address): an unverified claim must not let anyone exhaust a real client.
    assert.deepEqual(claimedClient(ctxFor({ authorization: basic('svc%3Aone') })), { key: 'c:svc:one|198.51.100.7', clientId: 'svc:one' });
    assert.equal(claimedClient(ctxFor({ authorization: basic('my+app') })).clientId, 'my app');
    assert.equal(claimedClient(ctxFor({ authorization: basic('plain') }, { client_id: 'other' })).clientId, 'plain', 'Basic first');
  });

  test('client_id, then the subject of an unverified client assertion, then the source address', async () => {
    assert.equal(claimedClient(ctxFor({}, { client_id: 'body-client' })).key, 'c:body-client|198.51.100.7');
    const assertion = await new SignJWT({}).setProtectedHeader({ alg: 'HS256' }).setIssuer('jwt-client').setSubject('jwt-client')
      .sign(randomBytes(32));
    assert.equal(claimedClient(ctxFor({}, { client_assertion: assertion })).clientId, 'jwt-client');
    assert.deepEqual(claimedClient(ctxFor({}, { client_assertion: 'not-a-jwt' })), { key: 'ip:198.51.100.7', clientId: undefined });
    assert.deepEqual(claimedClient(ctxFor({ authorization: 'Bearer initial-access-token' })), { key: 'ip:198.51.100.7', clientId: undefined });
  });

  test('long or unusual client ids are hashed into the key; the endpoints match as oidc-provider routes them', () => {
    const long = 'x'.repeat(5000);
    const { key } = claimedClient(ctxFor({}, { client_id: long }));
    assert.equal(key, `c#:${createHash('sha256').update(`${long}|198.51.100.7`).digest('base64url')}`);
    assert.equal(claimedClient(ctxFor({}, { client_id: 'ünïcode' })).key.startsWith('c#:'), true);
    assert.equal(limitedEndpoint('/token'), '/token');
    assert.equal(limitedEndpoint('/TOKEN/'), '/token');
    assert.equal(limitedEndpoint('/Token/Introspection'), '/token/introspection');
    assert.equal(limitedEndpoint('/reg'), '/reg');
    assert.equal(limitedEndpoint('/auth'), undefined);
  });
});

/** A koa app as the server builds it (strict form bodies, then the limiter, then "the provider"). */
async function miniServer(l: RateLimiters) {
  const app = new Koa();
  let reachedProvider = 0;
  app.use(oauthFormBodies());
  app.use(clientRateLimit(l, audit));
  app.use((ctx) => {
    reachedProvider += 1;
    ctx.body = { ok: true };
  });
  const server = http.createServer(app.callback());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    post: (path: string, params: Record<string, string>, headers: Record<string, string> = {}) => fetch(`${base}${path}`, {
      method: 'POST',
      body: new URLSearchParams(params).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
    }),
    get: (path: string) => fetch(`${base}${path}`),
    reached: () => reachedProvider,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('client rate limit middleware', () => {
  test('over the limit: 429, Retry-After, OAuth error body; the provider is never reached', async () => {
    const [l1, l2] = await twoProcesses();
    const [a, b] = [await miniServer(l1), await miniServer(l2)];
    try {
      const client = `mw-${RUN}`;
      const auth = { authorization: basicAuth(client, 'secret') };
      for (let i = 0; i < 3; i += 1) {
        const res = await (i % 2 ? b : a).post('/token', { grant_type: 'client_credentials' }, auth);
        assert.equal(res.status, 200);
      }
      const res = await b.post('/token', { grant_type: 'client_credentials' }, auth);
      assert.equal(res.status, 429);
      const retryAfter = res.headers.get('retry-after');
      assert.match(retryAfter ?? '', /^[1-9][0-9]*$/, 'Retry-After: whole seconds, at least 1');
      assert.ok(Number(retryAfter) <= 60, 'no longer than the window');
      assert.equal(res.headers.get('cache-control'), 'no-store');
      assert.deepEqual(await res.json(), { error: 'temporarily_unavailable', error_description: 'rate limit exceeded, retry later' });
      assert.equal((await a.post('/token/introspection', { token: 'x' }, auth)).status, 429, 'one budget per client across the endpoints');
      assert.equal(a.reached() + b.reached(), 3);

      assert.equal((await a.post('/token', { grant_type: 'client_credentials' }, { authorization: basicAuth(`other-${client}`, 's') })).status, 200, 'other clients are unaffected');
      assert.equal((await a.get('/token')).status, 200, 'GET is not limited');
      for (let i = 0; i < 5; i += 1) assert.equal((await a.post('/auth', {}, auth)).status, 200, 'other endpoints are not limited');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  test('one audit event per client and window, however many refusals, from either process', async () => {
    const [l1, l2] = await twoProcesses();
    const [a, b] = [await miniServer(l1), await miniServer(l2)];
    try {
      const client = `audited-${RUN}`;
      const auth = { authorization: basicAuth(client, 'secret') };
      const statuses: number[] = [];
      for (let i = 0; i < 12; i += 1) statuses.push((await (i % 2 ? b : a).post('/token/revocation', { token: 't' }, auth)).status);
      assert.deepEqual(statuses, [200, 200, 200, ...Array(9).fill(429)]);
      const events = await rateLimitEvents('actor_client = $1', [client]);
      assert.equal(events.length, 1);
      const [event] = events;
      assert.equal(event!.outcome, 'denied');
      assert.equal(event!.rule, 'rate_limit.client');
      assert.deepEqual(event!.details, { limiter: 'client', endpoint: '/token/revocation' });
      assert.ok(event!.source_ip, 'the source address is recorded');
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  test('Basic with a URL-encoded client id counts against the same client as client_id in the body', async () => {
    const l = await limiters();
    const a = await miniServer(l);
    try {
      const client = `svc:${RUN}`; // ':' must be percent-encoded in Basic (RFC 6749 §2.3.1)
      const encoded = `Basic ${Buffer.from(`${encodeURIComponent(client)}:secret`).toString('base64')}`;
      assert.match(Buffer.from(encoded.slice(6), 'base64').toString(), /^svc%3A/);
      assert.equal((await a.post('/token', {}, { authorization: encoded })).status, 200);
      assert.equal((await a.post('/token', { client_id: client, client_secret: 's' })).status, 200);
      assert.equal((await a.post('/token', {}, { authorization: encoded })).status, 200);
      assert.equal((await a.post('/token', { client_id: client, client_secret: 's' })).status, 429);
      const events = await rateLimitEvents('actor_client = $1', [client]);
      assert.equal(events.length, 1, 'the decoded client id is the actor');
    } finally {
      await a.close();
    }
  });

  test('without a claimed client id the source address is the key; no actor is invented', async () => {
    const l = await limiters();
    const a = await miniServer(l);
    try {
      const before = (await rateLimitEvents("details->>'endpoint' = '/reg'")).length;
      const statuses: number[] = [];
      for (let i = 0; i < 5; i += 1) statuses.push((await a.post('/reg', {})).status);
      assert.deepEqual(statuses, [200, 200, 200, 429, 429]);
      const events = await rateLimitEvents("details->>'endpoint' = '/reg'");
      assert.equal(events.length, before + 1);
      assert.equal(events.at(-1)!.actor_client, null);
    } finally {
      await a.close();
    }
  });

  test('a client id that does not look like one is counted but not recorded as the actor', async () => {
    const l = await limiters();
    const a = await miniServer(l);
    try {
      const odd = `odd client ${RUN} <x>`;
      for (let i = 0; i < 4; i += 1) await a.post('/token', { client_id: odd });
      const events = await rateLimitEvents("details->>'endpoint' = '/token' AND actor_client IS NULL AND occurred_at > now() - interval '1 minute'");
      assert.ok(events.length >= 1);
      assert.equal((await rateLimitEvents('actor_client = $1', [odd])).length, 0);
    } finally {
      await a.close();
    }
  });

  test('the audit write failing does not turn the refusal into a pass', async () => {
    const l = await limiters();
    const brokenAudit = Object.create(audit, { record: { value: async () => { throw new Error('audit down'); } } }) as AuditLog;
    const app = new Koa();
    app.use(async (ctx, next) => {
      (ctx.request as unknown as { body: unknown }).body = { client_id: 'broken-audit' };
      await next();
    });
    app.use(clientRateLimit(l, brokenAudit));
    app.use((ctx) => { ctx.body = 'provider'; });
    const server = http.createServer(app.callback()).listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    try {
      const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
      const statuses: number[] = [];
      for (let i = 0; i < 4; i += 1) statuses.push((await fetch(url, { method: 'POST' })).status);
      assert.deepEqual(statuses, [200, 200, 200, 429]);
    } finally {
      server.close();
    }
  });

  test('the counter store failing: 503 temporarily_unavailable, never a pass (fail closed)', async () => {
    const real = await limiters();
    const failing: RateLimiters = {
      ...real,
      client: { ...real.client, consume: async () => { throw new Error('store down'); } } as unknown as RateLimiters['client'],
    };
    const a = await miniServer(failing);
    try {
      const res = await a.post('/token', { client_id: 'any' });
      assert.equal(res.status, 503);
      assert.equal((await res.json() as { error: string }).error, 'temporarily_unavailable');
      assert.ok(Number(res.headers.get('retry-after')) >= 1);
      assert.equal(a.reached(), 0);
    } finally {
      await a.close();
    }
  });
});

describe('login rate limit', () => {
  test('per username (normalised, pseudonymised): one audit event, Retry-After of the window', async () => {
    const l = await limiters();
    const username = `Clinician.${RUN}`;
    const results = [];
    for (const [i, typed] of [username, ` ${username.toLowerCase()} `, username.toUpperCase(), username].entries()) {
      results.push(await checkLoginRateLimit(l, audit, { ip: `192.0.2.${i + 1}`, username: typed, clientId: 'test-app' }));
    }
    assert.deepEqual(results.slice(0, 2), [{ allowed: true }, { allowed: true }]);
    for (const result of results.slice(2)) {
      assert.equal(result.allowed, false);
      assert.ok(!result.allowed && result.limiter === 'loginUser');
      assert.ok(!result.allowed && result.retryAfterSeconds >= 1 && result.retryAfterSeconds <= 120);
    }
    const ref = audit.pseudonym('username', username.toLowerCase());
    const events = await rateLimitEvents("details->>'username_ref' = $1", [ref]);
    assert.equal(events.length, 1);
    assert.equal(events[0]!.rule, 'rate_limit.login_user');
    assert.equal(events[0]!.actor_client, 'test-app');
    if (l.backend === 'postgres') {
      const { rows } = await testDb.db.query<{ key: string }>('SELECT key FROM rate_limits WHERE key LIKE $1', [`${l.loginUser.keyPrefix}:%`]);
      assert.equal(rows.length, 1);
      assert.ok(!rows[0]!.key.toLowerCase().includes(username.toLowerCase()), 'no username in clear in the counters');
      assert.ok(rows[0]!.key.endsWith(ref));
    }
  });

  test('per source address, across usernames; an address over its limit spends no username points', async () => {
    const l = await limiters();
    const ip = `203.0.113.${Math.floor(Math.random() * 250) + 1}`;
    const results = [];
    for (let i = 0; i < 6; i += 1) results.push(await checkLoginRateLimit(l, audit, { ip, username: `user-${RUN}-${i}` }));
    assert.deepEqual(results.map((r) => r.allowed), [true, true, true, true, false, false]);
    assert.ok(!results[4]!.allowed && results[4]!.limiter === 'loginIp');
    // The victim's own budget (2) is intact although the address tried it.
    const victim = `victim-${RUN}`;
    for (let i = 0; i < 3; i += 1) assert.equal((await checkLoginRateLimit(l, audit, { ip, username: victim })).allowed, false);
    assert.equal((await checkLoginRateLimit(l, audit, { ip: '198.51.100.200', username: victim })).allowed, true);
    const events = await rateLimitEvents("rule = 'rate_limit.login_ip' AND source_ip = $1", [ip]);
    assert.equal(events.length, 1);
    assert.deepEqual(events[0]!.details, { limiter: 'loginIp' });
  });

  test('two processes share the login counters', async () => {
    const [first, second] = await twoProcesses();
    const username = `shared-${RUN}`;
    assert.equal((await checkLoginRateLimit(first, audit, { ip: '192.0.2.50', username })).allowed, true);
    assert.equal((await checkLoginRateLimit(second, audit, { ip: '192.0.2.51', username })).allowed, true);
    assert.equal((await checkLoginRateLimit(first, audit, { ip: '192.0.2.52', username })).allowed, false);
  });

  test('the counter store failing throws RateLimitUnavailableError (the app answers 503)', async () => {
    const real = await limiters();
    const failing: RateLimiters = {
      ...real,
      loginIp: { ...real.loginIp, consume: async () => { throw new Error('store down'); } } as unknown as RateLimiters['loginIp'],
    };
    await assert.rejects(checkLoginRateLimit(failing, audit, { ip: '192.0.2.9', username: 'x' }), RateLimitUnavailableError);
  });
});

// These run against the real server and need the lead's wiring (src/server.ts, src/http/app.ts,
// src/interactions/routes.ts); until it lands they fail.
describe('two server instances on one database (needs the app wiring)', () => {
  let first: TestServer;
  let second: TestServer;
  const env = {
    RATE_LIMIT_CLIENT_POINTS: '5',
    RATE_LIMIT_CLIENT_WINDOW: '60',
    RATE_LIMIT_LOGIN_IP_POINTS: '100',
    RATE_LIMIT_LOGIN_USER_POINTS: '3',
    RATE_LIMIT_LOGIN_USER_WINDOW: '60',
    LOGIN_MAX_FAILURES: '50',
  };

  before(async () => {
    first = await startTestServer({ env });
    second = await startTestServer({
      testDb: first.testDb, keysDir: first.keysDir, seed: null, env: { ...env, ISSUER: first.issuer, MTLS_BASE_URL: first.mtlsBaseUrl },
    });
  });
  after(async () => {
    await second?.stop();
    await first?.stop();
  });

  test('the per-client limit holds across both; 429 carries Retry-After; one audit event', async () => {
    const call = (ts: TestServer, authorization = basicAuth(SERVICE.client_id, SERVICE.client_secret)) =>
      ts.fetch(`https://localhost:${ts.server.mtlsPort}/token`, {
        method: 'POST',
        body: new URLSearchParams({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }).toString(),
        headers: { 'content-type': 'application/x-www-form-urlencoded', authorization },
      });
    for (let i = 0; i < 5; i += 1) {
      const res = await call(i % 2 === 0 ? first : second);
      assert.equal(res.status, 200, `token request ${i + 1} of 5: ${await res.text()}`);
    }
    for (const ts of [second, first, second]) {
      const res = await call(ts);
      assert.equal(res.status, 429, 'the sixth request and later, on either instance');
      assert.match(res.headers.get('retry-after') ?? '', /^[1-9][0-9]*$/);
      assert.ok(Number(res.headers.get('retry-after')) <= 60);
      assert.deepEqual(await res.json(), { error: 'temporarily_unavailable', error_description: 'rate limit exceeded, retry later' });
    }
    const other = await call(first, basicAuth(APP.client_id, APP.client_secret));
    assert.notEqual(other.status, 429, 'another client has its own budget');
    const { rows } = await first.testDb.db.query(
      "SELECT rule, details FROM audit_events WHERE type = 'rate_limit.exceeded' AND actor_client = $1", [SERVICE.client_id]);
    assert.equal(rows.length, 1);
    assert.deepEqual(rows[0], { rule: 'rate_limit.client', details: { limiter: 'client', endpoint: '/token' } });
  });

  test('the per-username login limit holds across both; the login page answers 429 with Retry-After', async () => {
    const browser = new Browser(first);
    const url = new URL(`${first.issuer}/auth`);
    for (const [k, v] of Object.entries({
      client_id: APP.client_id, response_type: 'code', redirect_uri: APP.redirect_uri, scope: 'openid', state: 's',
      code_challenge: createHash('sha256').update('v'.repeat(43)).digest('base64url'), code_challenge_method: 'S256',
    })) url.searchParams.set(k, v);
    const page = await browser.follow(await browser.get(url));
    const action = /action="(\/interaction\/[^"]+\/login)"/.exec(page.body)?.[1];
    assert.ok(action, 'a login page');
    const attempt = (ts: TestServer) => ts.fetch(`https://localhost:${ts.server.port}${action}`, {
      method: 'POST',
      body: new URLSearchParams({ username: CLINICIAN.username, password: 'wrong-password-000000' }).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'text/html', cookie: browser.jar.header() },
    });
    for (let i = 0; i < 3; i += 1) {
      const res = await attempt(i % 2 === 0 ? first : second);
      assert.equal(res.status, 401, 'a wrong password, within the limit');
      assert.equal(res.headers.get('retry-after'), null);
    }
    for (const ts of [second, first]) {
      const res = await attempt(ts);
      assert.equal(res.status, 429);
      assert.match(res.headers.get('retry-after') ?? '', /^[1-9][0-9]*$/);
      assert.match(await res.text(), /Sign-in failed\. Check your username and password, or try again later\./, 'the generic message');
    }
    const { rows } = await first.testDb.db.query(
      "SELECT rule FROM audit_events WHERE type = 'rate_limit.exceeded' AND details->>'limiter' = 'loginUser'");
    assert.equal(rows.length, 1);
  });
});
