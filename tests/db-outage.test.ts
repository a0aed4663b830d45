// Faults: PostgreSQL goes away under load and comes back. Two real servers (startServer, each in its
// own process, sharing keys like replicas: one as configured by default, one without the rate limiter
// so that requests reach oidc-provider, the adapter and the audit log) run on a throwaway cluster this
// test owns (tests/support/disposable-postgres.ts); the test drives client credentials, token
// exchange and introspection over mTLS with keep-alive from a few concurrent loops per server,
// stops PostgreSQL (fast, then immediate) for a few seconds each time, starts it again, and asserts:
//   - while it is down every answer is a quick 503 temporarily_unavailable with Retry-After (never a
//     500, a reset connection or a hang), /healthz stays 200 from the same process, /readyz says 503;
//   - the service answers 200 again by itself within seconds of the database being back;
//   - every access token answered 200 has exactly one `token.issued` audit event (by jti) and its
//     registry row, every stored token has its event (by token_ref), and the audit chain verifies;
//   - the server logged no uncaught exception, unhandled rejection or 500.
// Only in the PostgreSQL pass of CI (DATABASE_URL set), though it does not use that database. Before
// it, two small regression tests for the crash it found (a connection lost under a transaction).
// DB_OUTAGE_SERVER_LOG=FILE keeps the server's whole log when the outage test fails.
import assert from 'node:assert/strict';
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, test, type TestContext } from 'node:test';

import pg from 'pg';
import { Agent, request } from 'undici';

import { APP, CLINICIAN, FHIR, LABS, ORCHESTRATOR, PATIENT, SYSTEM_SCOPE, WORKLOAD, type ServerInfo } from '../bench/lib/fixtures.ts';
import { signIn } from '../bench/lib/login.ts';
import { deriveAuditKeys, pseudonymise } from '../src/audit/keys.ts';
import { verifyAuditChain } from '../src/audit/verify.ts';
import { DatabaseUnavailableError } from '../src/db/db.ts';
import type { Db } from '../src/db/index.ts';
import { createPostgresDb } from '../src/db/postgres.ts';
import { TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN } from '../src/exchange/decision.ts';
import { issueTestCertificate } from '../src/keystore/pki.ts';
import { loadOrCreateSecrets } from '../src/keystore/secrets.ts';
import { createDisposablePostgres, disposablePostgresUnavailable, type DisposablePostgres, type StopMode } from './support/disposable-postgres.ts';
import { CRASH_MARKERS } from './support/outage-markers.ts';
import { createTestDb } from './support/test-db.ts';

const SKIP = !process.env.DATABASE_URL
  ? 'runs in the PostgreSQL pass only (DATABASE_URL set); it brings up its own cluster'
  : disposablePostgresUnavailable() ?? false;

/** Concurrent loops per request kind. */
const LOOPS_PER_KIND = 2;
/** Pause between two requests of one loop: enough load to matter, few enough 503s to read. */
const PACE_MS = 10;
/** How long the database stays down each time. */
const DOWN_MS = 4_000;
/** Load before the first outage and after each recovery. */
const STEADY_MS = 1_500;
/** No answer may take longer, whatever the database is doing (the pool's connect timeout is 5 s). */
const MAX_LATENCY_MS = 3_000;
/** From `pg_ctl start` returning (accepting connections) to the first 200 of every kind. */
const MAX_RECOVERY_MS = 10_000;
/** undici gives up on an answer after this: a hang shows as status 0, not as a stuck test. */
const REQUEST_TIMEOUT_MS = 15_000;

type Kind = 'client_credentials' | 'token_exchange' | 'introspection';
const KINDS: Kind[] = ['client_credentials', 'token_exchange', 'introspection'];

/**
 * Two servers on the one cluster, sharing keys (one issuer, one audit chain) like replicas: `default`
 * as configured out of the box, where the PostgreSQL-backed rate limiter is the first to meet the
 * outage and refuses with 503; and `no-rate-limit`, whose requests go on into oidc-provider, the
 * configuration cache, the adapter and the audit log while the database is away.
 */
const SERVERS = [
  { name: 'default', env: { RATE_LIMIT_CLIENT_POINTS: '100000000' } },
  { name: 'no-rate-limit', env: { RATE_LIMIT_ENABLED: 'false', OUTAGE_SEED: 'false' } },
] as const;
type ServerName = (typeof SERVERS)[number]['name'];

interface Sample {
  server: string;
  kind: Kind | 'healthz' | 'readyz';
  /** performance.now() in this process. */
  start: number;
  end: number;
  /** 0: no HTTP answer (connection error or timeout, in `failure`). */
  status: number;
  error?: string | undefined;
  retryAfter?: string | undefined;
  /** The access token of a 200 from the token endpoint. */
  token?: string;
  /** introspection: `active` of a 200; readyz: `status`. */
  active?: unknown;
  failure?: string;
}

interface Outage {
  mode: StopMode;
  stopInvoked: number;
  /** pg_ctl stop returned: the server is gone. */
  stopped: number;
  startInvoked: number;
  /** pg_ctl start returned: accepting connections. */
  started: number;
}

/** A server under test: forked like bench/lib/ipc.ts's startChild, with stdout and stderr kept for the log check. */
interface ServerChild {
  info: ServerInfo;
  process: ChildProcess;
  output(): string;
  stop(): Promise<void>;
}

async function startServerChild(env: NodeJS.ProcessEnv): Promise<ServerChild> {
  const { REDIS_URL: _redis, NODE_TEST_CONTEXT: _testContext, ...inherited } = process.env;
  const child = fork(new URL('./support/outage-server.ts', import.meta.url), [], {
    execArgv: ['--import', 'tsx'],
    env: { ...inherited, ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  const chunks: Buffer[] = [];
  child.stdout!.on('data', (c: Buffer) => chunks.push(c));
  child.stderr!.on('data', (c: Buffer) => chunks.push(c));
  const output = () => Buffer.concat(chunks).toString('utf8');
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const info = await new Promise<ServerInfo>((resolve, reject) => {
    const timeout = setTimeout(() => reject(new Error(`server child not ready after 60 s:\n${output().slice(-3_000)}`)), 60_000);
    child.on('message', (msg: { type: string; info?: ServerInfo }) => {
      if (msg.type === 'ready' && msg.info) {
        clearTimeout(timeout);
        resolve(msg.info);
      }
    });
    void exited.then(() => {
      clearTimeout(timeout);
      reject(new Error(`server child exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${output().slice(-3_000)}`));
    });
  });
  return {
    info,
    process: child,
    output,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.send({ type: 'stop' });
      const timeout = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timeout);
    },
  };
}

const alive = (child: ServerChild) => child.process.exitCode === null && child.process.signalCode === null;

async function post(url: string, agent: Agent, form: Record<string, string>) {
  const res = await request(url, {
    method: 'POST', dispatcher: agent, body: new URLSearchParams(form).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    headersTimeout: REQUEST_TIMEOUT_MS, bodyTimeout: REQUEST_TIMEOUT_MS,
  });
  const text = await res.body.text();
  let body: Record<string, unknown>;
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { raw: text.slice(0, 300) };
  }
  const retryAfter = res.headers['retry-after'];
  return { status: res.statusCode, body, retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined };
}

const jwtPayload = (token: string) => JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { jti?: string };
const round = (n: number) => Math.round(n);

// What the outage test first found: a connection dropping under a transaction's checked-out client
// (pg-pool removes its error listener while a client is out, and pg then emits 'error' on the client)
// was an uncaught exception that ended the whole process. Two ways a connection goes: the server
// ends it with a FATAL message (pg_terminate_backend, like `pg_ctl stop -m fast`), or the socket just
// closes (a reset, like `-m immediate` or a network failure), here by cutting a TCP relay.
describe('a connection lost inside a transaction', { skip: !process.env.DATABASE_URL && 'needs PostgreSQL (DATABASE_URL)' }, () => {
  const unavailable = (err: unknown) => err instanceof DatabaseUnavailableError && err.status === 503 && err.error === 'temporarily_unavailable';

  async function withRelay(fn: (db: Db, url: string, cut: () => void) => Promise<void>) {
    const testDb = await createTestDb();
    const target = new URL(testDb.url!);
    const sockets = new Set<net.Socket>();
    const relay = net.createServer((client) => {
      const upstream = net.connect(Number(target.port || 5432), target.hostname);
      sockets.add(client).add(upstream);
      client.pipe(upstream).pipe(client);
      const drop = () => { client.destroy(); upstream.destroy(); sockets.delete(client); sockets.delete(upstream); };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const relayUrl = new URL(target.href);
    relayUrl.host = `127.0.0.1:${(relay.address() as net.AddressInfo).port}`;
    const db = createPostgresDb(relayUrl.href, 2);
    try {
      await fn(db, testDb.url!, () => { for (const socket of sockets) socket.destroy(); });
      // The broken client was destroyed, not returned to the pool: the next queries get working ones.
      for (let i = 0; i < 4; i++) assert.equal((await db.query<{ ok: number }>('SELECT 1 AS ok')).rows[0]!.ok, 1);
      assert.equal(await db.transaction(async (tx) => (await tx.query<{ ok: number }>('SELECT 2 AS ok')).rows[0]!.ok), 2);
    } finally {
      await db.close().catch(() => {});
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => relay.close(() => resolve()));
      await testDb.drop();
    }
  }

  test('ended by the server between two statements: DatabaseUnavailableError (503), the process survives, the pool serves again', async () => {
    await withRelay(async (db, directUrl) => {
      const admin = new pg.Client({ connectionString: directUrl });
      await admin.connect();
      try {
        await assert.rejects(db.transaction(async (tx) => {
          const { rows } = await tx.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
          await admin.query('SELECT pg_terminate_backend($1)', [rows[0]!.pid]);
          // The FATAL arrives while the client is checked out and idle.
          await sleep(300);
          await tx.query('SELECT 1');
        }), unavailable);
      } finally {
        await admin.end();
      }
    });
  });

  test('socket closed during a statement: DatabaseUnavailableError (503), the process survives, the pool serves again', async () => {
    await withRelay(async (db, _directUrl, cut) => {
      await assert.rejects(db.transaction(async (tx) => {
        await tx.query('SELECT 1');
        setTimeout(cut, 200);
        await tx.query('SELECT pg_sleep(5)');
      }), unavailable);
      // Late events of the dead connection, if any, arrive now: still no uncaught exception.
      await sleep(300);
    });
  });
});

describe('database outage under load (disposable PostgreSQL cluster, servers in child processes)', { skip: SKIP }, () => {
  test('fails fast with 503 while PostgreSQL is down, recovers by itself, and no token lacks its audit record', { timeout: 120_000 }, async (t) => {
    const cleanups: Array<() => Promise<unknown>> = [];
    const state: { servers: Array<{ name: string; child: ServerChild }> } = { servers: [] };
    try {
      await run(t, cleanups, state);
    } catch (err) {
      // What the servers said is usually the explanation: their last lines with the failure, and all
      // of it to DB_OUTAGE_SERVER_LOG when set.
      const all: string[] = [];
      for (const { name, child } of state.servers) {
        const log = child.output();
        all.push(`--- ${name} ---\n${log}`);
        // Without the one-per-refused-request rate-limiter warnings, which drown everything else.
        const telling = log.split('\n').filter((l) => l && !l.includes('rate-limit store failed')).slice(-30).join('\n');
        t.diagnostic(`${name}: exit ${child.process.exitCode ?? child.process.signalCode ?? 'none (running)'}; log (last 30 lines, rate-limiter warnings left out):\n${telling.slice(-5_000)}`);
      }
      if (process.env.DB_OUTAGE_SERVER_LOG) await fs.writeFile(process.env.DB_OUTAGE_SERVER_LOG, all.join('\n'));
      throw err;
    } finally {
      for (const fn of cleanups.splice(0).reverse()) await fn().catch((err: Error) => t.diagnostic(`cleanup: ${err.message}`));
    }
  });
});

async function run(t: TestContext, cleanups: Array<() => Promise<unknown>>, state: { servers: Array<{ name: string; child: ServerChild }> }) {
  const cluster: DisposablePostgres = await createDisposablePostgres();
  cleanups.push(() => cluster.destroy());
  const keysDir = await fs.mkdtemp(path.join(os.tmpdir(), 'authz-outage-keys-'));
  cleanups.push(() => fs.rm(keysDir, { recursive: true, force: true }));

  // One after the other: the first migrates, seeds and writes the keys the second one loads.
  const servers: Array<{ name: ServerName; child: ServerChild }> = [];
  for (const { name, env } of SERVERS) {
    const child = await startServerChild({
      NODE_ENV: 'development',
      // The log check below reads warnings and errors.
      LOG_LEVEL: 'warn',
      DATABASE_URL: cluster.url,
      KEYS_DIR: keysDir,
      DATA_DIR: path.join(keysDir, 'data'),
      ...env,
    });
    cleanups.push(() => child.stop());
    servers.push({ name, child });
    state.servers.push({ name, child });
    assert.equal(child.info.pid, child.process.pid);
  }
  const { tls } = servers[0]!.child.info;

  const ca = {
    caCertPem: await fs.readFile(path.join(keysDir, 'tls', 'ca.pem'), 'utf8'),
    caKeyPem: await fs.readFile(path.join(keysDir, 'tls', 'ca.key'), 'utf8'),
  };
  const agent = (cert?: { certPem: string; keyPem: string }) => {
    // keep-alive is undici's default; a few connections per origin, like a real workload's pool.
    const a = new Agent({ connections: 8, connect: { ca: tls.caPem, ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}) } });
    cleanups.push(() => a.close());
    return a;
  };
  const workloadAgent = agent(await issueTestCertificate({ ...ca, commonName: WORKLOAD }));
  const orchestratorAgent = agent(await issueTestCertificate({ ...ca, commonName: ORCHESTRATOR }));
  const appAgent = agent(await issueTestCertificate({ ...ca, commonName: APP.client_id }));
  const browserAgent = agent();

  // The subject token of the exchanges: the clinician signs in to the app, which redeems the code over
  // mTLS. One per server: each has its own issuer here (its own port), and a token names its issuer.
  const subjectTokens = new Map<ServerName, string>();
  for (const { name, child: { info } } of servers) {
    const signedIn = await signIn({
      issuer: info.issuer, agent: browserAgent, clientId: APP.client_id, redirectUri: APP.redirect_uri,
      username: CLINICIAN.username, password: CLINICIAN.password, patient: PATIENT,
      scope: 'openid fhirUser launch/patient patient/Observation.rs', params: { aud: FHIR, prompt: 'consent' },
    });
    const redeemed = await request(`${info.mtlsBaseUrl}/token`, {
      method: 'POST', dispatcher: appAgent,
      body: new URLSearchParams({
        grant_type: 'authorization_code', code: signedIn.code, redirect_uri: APP.redirect_uri, code_verifier: signedIn.codeVerifier,
      }).toString(),
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${APP.client_id}:${encodeURIComponent(APP.client_secret)}`).toString('base64')}`,
      },
    });
    const clinician = await redeemed.body.json() as { access_token?: string };
    assert.equal(redeemed.statusCode, 200, `${name}: ${JSON.stringify(clinician)}`);
    assert.equal(typeof clinician.access_token, 'string');
    subjectTokens.set(name, clinician.access_token!);
  }

  const ccForm = { grant_type: 'client_credentials', client_id: WORKLOAD, resource: FHIR, scope: SYSTEM_SCOPE };
  const exchangeForm = (server: ServerName) => ({
    grant_type: TOKEN_EXCHANGE_GRANT, client_id: ORCHESTRATOR, subject_token: subjectTokens.get(server)!,
    subject_token_type: TOKEN_TYPE_ACCESS_TOKEN, resource: FHIR, scope: LABS,
  });
  const samples: Sample[] = [];
  /** Introspected by the loops: the newest client-credentials token a server answered 200 (a fresh one keeps coming). */
  const latestCc = new Map<ServerName, string>();
  for (const { name, child } of servers) {
    const first = await post(`${child.info.mtlsBaseUrl}/token`, workloadAgent, ccForm);
    assert.equal(first.status, 200, `${name}: ${JSON.stringify(first.body)}`);
    latestCc.set(name, String(first.body.access_token));
    samples.push({ server: name, kind: 'client_credentials', start: 0, end: 0, status: 200, token: String(first.body.access_token) });
  }

  // ---- the load ----
  let loading = true;
  const once = async (server: ServerName, mtlsBaseUrl: string, kind: Kind): Promise<void> => {
    const start = performance.now();
    try {
      const res = kind === 'client_credentials' ? await post(`${mtlsBaseUrl}/token`, workloadAgent, ccForm)
        : kind === 'token_exchange' ? await post(`${mtlsBaseUrl}/token`, orchestratorAgent, exchangeForm(server))
          : await post(`${mtlsBaseUrl}/token/introspection`, workloadAgent, { token: latestCc.get(server)!, client_id: WORKLOAD });
      const sample: Sample = {
        server, kind, start, end: performance.now(), status: res.status,
        error: typeof res.body.error === 'string' ? res.body.error : undefined, retryAfter: res.retryAfter,
      };
      if (res.status === 200 && kind !== 'introspection') {
        sample.token = String(res.body.access_token);
        if (kind === 'client_credentials') latestCc.set(server, sample.token);
      }
      if (kind === 'introspection') sample.active = res.body.active;
      samples.push(sample);
    } catch (err) {
      samples.push({ server, kind, start, end: performance.now(), status: 0, failure: `${(err as Error).name}: ${(err as Error).message}` });
    }
  };
  const loops = servers.flatMap(({ name, child }) => KINDS.flatMap((kind) => Array.from({ length: LOOPS_PER_KIND }, async () => {
    while (loading) {
      await once(name, child.info.mtlsBaseUrl, kind);
      await sleep(PACE_MS);
    }
  })));
  // Liveness and readiness, as an orchestrator's probes would ask (browser listener, no certificate).
  const probes = servers.map(({ name, child }) => (async () => {
    while (loading) {
      for (const kind of ['healthz', 'readyz'] as const) {
        const start = performance.now();
        try {
          const res = await request(`${child.info.issuer}/${kind}`, { dispatcher: browserAgent, headersTimeout: REQUEST_TIMEOUT_MS, bodyTimeout: REQUEST_TIMEOUT_MS });
          const body = await res.body.json() as { status?: unknown };
          samples.push({ server: name, kind, start, end: performance.now(), status: res.statusCode, active: body.status });
        } catch (err) {
          samples.push({ server: name, kind, start, end: performance.now(), status: 0, failure: (err as Error).message });
        }
      }
      await sleep(100);
    }
  })());
  const stopLoad = async () => {
    loading = false;
    await Promise.all([...loops, ...probes]);
  };
  cleanups.push(stopLoad);

  /** Once every server answered 200 for every kind (and /readyz) to a request sent after `since`: when the last of those came. */
  const recovered = async (since: number): Promise<number> => {
    const deadline = performance.now() + MAX_RECOVERY_MS + 5_000;
    for (;;) {
      const firsts = servers.flatMap(({ name }) => [...KINDS, 'readyz' as const]
        .map((kind) => samples.find((s) => s.server === name && s.kind === kind && s.start >= since && s.status === 200)?.end));
      if (firsts.every((f) => f !== undefined)) return Math.max(...(firsts as number[]));
      if (performance.now() > deadline || servers.some(({ child }) => !alive(child))) return Number.NaN;
      await sleep(20);
    }
  };

  const outages: Outage[] = [];
  const recoveries: number[] = [];
  await sleep(STEADY_MS);
  for (const mode of ['fast', 'immediate'] as const) {
    const stopInvoked = performance.now();
    await cluster.stop(mode);
    const stopped = performance.now();
    await sleep(DOWN_MS);
    const startInvoked = performance.now();
    await cluster.start();
    const started = performance.now();
    outages.push({ mode, stopInvoked, stopped, startInvoked, started });
    recoveries.push(await recovered(started));
    if (servers.some(({ child }) => !alive(child))) break; // asserted below, with the server's log
    await sleep(STEADY_MS);
  }
  const lastSteadyFrom = performance.now() - STEADY_MS + 250;
  await stopLoad();

  // ---- what was answered ----
  const calls = samples.filter((s) => s.start > 0 && KINDS.includes(s.kind as Kind));
  const latency = (s: Sample) => s.end - s.start;
  const count = (xs: Sample[], status: number) => xs.filter((s) => s.status === status).length;
  const label = (s: Sample) => `${s.server} ${s.kind}`;

  // The same processes served throughout (a crash shows here first, with its log in the diagnostics).
  for (const { name, child } of servers) {
    assert.equal(child.process.exitCode, null, `${name}: the server process did not exit`);
    assert.equal(child.process.signalCode, null, `${name}: the server process was not killed`);
  }
  const noAnswer = samples.filter((s) => s.status === 0);
  assert.deepEqual(noAnswer.map((s) => `${label(s)}: ${s.failure}`), [], 'every request got an HTTP answer (no reset connection, no hang)');
  const unexpected = calls.filter((s) => s.status !== 200 && s.status !== 503);
  assert.deepEqual(unexpected.map((s) => `${label(s)} ${s.status} ${s.error}`), [], 'only 200 or 503, never a 500');
  for (const s of calls.filter((c) => c.status === 503)) {
    assert.equal(s.error, 'temporarily_unavailable', `${label(s)} 503 body`);
    assert.match(s.retryAfter ?? '', /^[1-9][0-9]*$/, `${label(s)} 503 has Retry-After`);
  }
  const slow = calls.filter((s) => latency(s) > MAX_LATENCY_MS);
  assert.deepEqual(slow.map((s) => `${label(s)} ${s.status} ${round(latency(s))} ms`), [], `every answer within ${MAX_LATENCY_MS} ms`);
  for (const s of calls.filter((c) => c.kind === 'introspection' && c.status === 200)) {
    assert.equal(s.active, true, `${label(s)}: a token answered 200 is found by introspection (its registry row exists)`);
  }

  const perOutage = outages.map((o, i) => {
    const during = (s: Sample) => s.start >= o.stopped && s.end <= o.startInvoked;
    const recoveredAt = recoveries[i]!;
    assert.ok(Number.isFinite(recoveredAt), `${o.mode}: every server answered 200 for every kind again after PostgreSQL came back`);
    const recoveryMs = recoveredAt - o.started;
    assert.ok(recoveryMs < MAX_RECOVERY_MS, `${o.mode}: recovered ${round(recoveryMs)} ms after PostgreSQL accepted connections again`);
    const perServer = servers.map(({ name }) => {
      const mine = (s: Sample) => s.server === name;
      const down = calls.filter((s) => mine(s) && during(s));
      for (const kind of KINDS) {
        const xs = down.filter((s) => s.kind === kind);
        assert.ok(xs.length >= 5, `${o.mode}/${name}: ${kind} was exercised while the database was down (${xs.length} requests)`);
        assert.deepEqual([...new Set(xs.map((s) => s.status))], [503], `${o.mode}/${name}: ${kind} answers only 503 while the database is down`);
      }
      const health = samples.filter((s) => mine(s) && s.kind === 'healthz' && during(s));
      const ready = samples.filter((s) => mine(s) && s.kind === 'readyz' && during(s));
      assert.ok(health.length >= 5 && ready.length >= 5, `${o.mode}/${name}: probes ran while down`);
      assert.deepEqual([...new Set(health.map((s) => s.status))], [200], `${o.mode}/${name}: /healthz stays 200 (the process is up)`);
      assert.deepEqual([...new Set(ready.map((s) => `${s.status} ${String(s.active)}`))], ['503 unavailable'], `${o.mode}/${name}: /readyz says unavailable`);
      const firstFailure = calls.find((s) => mine(s) && s.start >= o.stopInvoked && s.status === 503);
      const sorted = down.map(latency).sort((a, b) => a - b);
      return [name, {
        firstFailureAfterStopMs: firstFailure ? round(firstFailure.end - o.stopInvoked) : undefined,
        downRequests: down.length,
        downMaxLatencyMs: round(sorted.at(-1) ?? 0),
        downMedianLatencyMs: round(sorted[Math.floor(sorted.length / 2)] ?? 0),
        firstOkPerKindAfterPgStartMs: Object.fromEntries(KINDS.map((k) => [k,
          round((calls.find((s) => mine(s) && s.kind === k && s.start >= o.started && s.status === 200)?.end ?? Number.NaN) - o.started)])),
      }] as const;
    });
    return {
      mode: o.mode,
      pgStopMs: round(o.stopped - o.stopInvoked),
      pgStartMs: round(o.started - o.startInvoked),
      recoveryAfterPgStartMs: round(recoveryMs),
      servers: Object.fromEntries(perServer),
    };
  });

  // After the last recovery the service is simply back: nothing but 200s.
  const finalSteady = calls.filter((s) => s.start >= Math.max(lastSteadyFrom, recoveries.at(-1)!));
  for (const { name } of servers) {
    const mine = finalSteady.filter((s) => s.server === name);
    assert.ok(mine.length >= 20, `${name}: load after recovery (${mine.length} requests)`);
    assert.deepEqual([...new Set(mine.map((s) => s.status))], [200], `${name}: all 200 once recovered`);
  }

  // Still the same processes, still live.
  for (const { name, child } of servers) {
    assert.ok(alive(child), `${name}: the server process is still running`);
    const live = await request(`${child.info.issuer}/healthz`, { dispatcher: browserAgent });
    assert.equal(live.statusCode, 200);
    await live.body.dump();
  }

  // ---- no token without its audit record ----
  const db: Db = createPostgresDb(cluster.url, 2);
  cleanups.push(() => db.close());
  const secrets = await loadOrCreateSecrets(keysDir, { allowGenerate: false });
  const keys = deriveAuditKeys(secrets.auditKey);
  const tokenRef = (id: string) => pseudonymise(keys, 'token', id);

  const answered = samples.filter((s) => s.status === 200 && s.token !== undefined);
  const jtis = answered.map((s) => jwtPayload(s.token!).jti);
  assert.ok(jtis.every((j): j is string => typeof j === 'string'), 'every access token is a JWT with a jti');
  assert.equal(new Set(jtis).size, jtis.length, 'jtis are unique');
  const issuedEvents = await db.query<{ jti: string | null; token_ref: string; n: number; expired: boolean }>(
    `SELECT details->>'jti' AS jti, details->>'token_ref' AS token_ref, count(*)::int AS n,
            bool_or((details->>'expires_at')::double precision < extract(epoch FROM now())) AS expired
       FROM audit_events WHERE type IN ('token.issued', 'code.issued') AND outcome = 'success'
      GROUP BY 1, 2`,
  );
  const eventsByJti = new Map(issuedEvents.rows.filter((r) => r.jti).map((r) => [r.jti!, r]));
  const eventRefs = new Set(issuedEvents.rows.map((r) => r.token_ref));
  const withoutEvent = (jtis as string[]).filter((jti) => !eventsByJti.has(jti));
  assert.deepEqual(withoutEvent, [], 'every token answered 200 has its token.issued audit event');
  for (const jti of jtis as string[]) {
    const event = eventsByJti.get(jti)!;
    assert.equal(event.n, 1, `one token.issued event for ${jti}`);
    assert.equal(event.token_ref, tokenRef(jti), 'the event\'s token_ref is the pseudonym of the jti');
  }
  const registry = await db.query<{ id: string }>(
    "SELECT id FROM oidc_payloads WHERE model = 'AccessToken' AND payload->>'format' = 'jwt' AND id = ANY($1::text[])", [jtis],
  );
  assert.equal(registry.rowCount, jtis.length, 'every token answered 200 has its registry row');

  // The reverse: whatever the token tables hold was recorded when it was issued.
  const stored = await db.query<{ model: string; id: string }>(
    "SELECT model, id FROM oidc_payloads WHERE model IN ('AccessToken', 'ClientCredentials', 'RefreshToken', 'AuthorizationCode')",
  );
  const storedWithoutEvent = stored.rows.filter((r) => !eventRefs.has(tokenRef(r.id)));
  assert.deepEqual(storedWithoutEvent, [], 'every stored token and code has its issuance event');
  assert.ok(stored.rowCount >= jtis.length);
  // Nor the other way round: a token's row and its event commit together (one group-commit
  // transaction), so no outage leaves an event for a token that was never stored. (Nothing is revoked
  // here; expired rows may have been swept, so those are left out.)
  const storedRefs = new Set(stored.rows.map((r) => tokenRef(r.id)));
  const eventsWithoutToken = issuedEvents.rows.filter((r) => !storedRefs.has(r.token_ref) && !r.expired);
  assert.deepEqual(eventsWithoutToken, [], 'no issuance event without its stored token');

  const chain = await verifyAuditChain(db, keys.chain);
  assert.equal(chain.ok, true, `audit chain verifies after the outages: ${JSON.stringify(chain)}`);

  // ---- the servers' own logs ----
  const logs: Record<string, Record<string, number>> = {};
  for (const { name, child } of servers) {
    await child.stop();
    const lines = child.output().split('\n').filter(Boolean);
    const crashes = lines.filter((l) => l.includes(CRASH_MARKERS.uncaught) || l.includes(CRASH_MARKERS.providerServerError)
      || /unhandled error|Unhandled(Promise)?Rejection|uncaughtException|triggerUncaughtException/i.test(l));
    assert.deepEqual(crashes.map((l) => l.slice(0, 500)), [], `${name}: no uncaught exception, unhandled rejection or 500 in the server log`);
    assert.equal(child.process.exitCode, 0, `${name}: the server stopped cleanly when asked`);
    const messages = new Map<string, number>();
    for (const line of lines) {
      let key = line.slice(0, 120);
      try {
        const entry = JSON.parse(line) as { level?: number; msg?: string; err?: unknown };
        // Ports and addresses vary from run to run: left out so that the same message counts once.
        key = `${entry.level} ${entry.msg}${typeof entry.err === 'string' ? `: ${entry.err.replace(/\d+\.\d+\.\d+\.\d+:\d+/g, 'HOST:PORT').slice(0, 80)}` : ''}`;
      } catch { /* not JSON */ }
      messages.set(key, (messages.get(key) ?? 0) + 1);
    }
    logs[name] = Object.fromEntries([...messages].sort((a, b) => b[1] - a[1]).slice(0, 12));
  }

  const figures = {
    byServer: Object.fromEntries(servers.map(({ name }) => {
      const mine = calls.filter((s) => s.server === name);
      return [name, {
        requests: mine.length,
        maxLatencyMs: round(Math.max(...mine.map(latency))),
        byKind: Object.fromEntries(KINDS.map((k) => {
          const xs = mine.filter((s) => s.kind === k);
          return [k, { ok200: count(xs, 200), unavailable503: count(xs, 503), other: xs.length - count(xs, 200) - count(xs, 503) }];
        })),
      }];
    })),
    outages: perOutage,
    tokensChecked: jtis.length,
    storedTokensChecked: stored.rowCount,
    issuanceEvents: issuedEvents.rows.length,
    auditEvents: chain.ok ? chain.count : undefined,
    serverLogs: logs,
  };
  t.diagnostic(`db-outage figures: ${JSON.stringify(figures)}`);
}
