// npm run bench: the server under load over real HTTPS/mTLS from this (second) process, against a
// fresh PostgreSQL database, next to baselines measured in the same run on the same machine.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench
//   BENCH_DURATION=5 npm run bench                       quick run (seconds per scenario, default 15)
//   BENCH_SCENARIOS=client_credentials,token_exchange   only these (baselines they are compared with run too)
//   BENCH_CPU_PROF=1 npm run bench                      --cpu-prof on the server process (bench/results/*.cpuprofile)
// A partial (BENCH_SCENARIOS) or profiled run writes bench/results/run-<date>.json, a full one latest.json.
//
// See bench/README.md for what each scenario measures and the targets.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import autocannon, { type Result } from 'autocannon';
import pg from 'pg';
import { Agent, request } from 'undici';

import { hashPassword, verifyPassword, ARGON2_OPTIONS } from '../src/accounts/passwords.ts';
import { TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN } from '../src/exchange/decision.ts';
import { issueTestCertificate } from '../src/keystore/pki.ts';
import {
  APP, CLINICIAN, FHIR, LABS, loginUser, OPAQUE_API, ORCHESTRATOR, PATIENT, SYSTEM_SCOPE, WORKLOAD, type ServerInfo,
} from './lib/fixtures.ts';
import { startChild, type Child } from './lib/ipc.ts';
import { signIn } from './lib/login.ts';
import { median, percentile } from './lib/stats.ts';

const RESULTS_DIR = fileURLToPath(new URL('./results/', import.meta.url));
const positive = (name: string, fallback: number) => {
  const value = Number(process.env[name] ?? fallback);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number`);
  return value;
};
const DURATION = positive('BENCH_DURATION', 15);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 3);
const CONNECTIONS = positive('BENCH_CONNECTIONS', 32);
const ONLY = process.env.BENCH_SCENARIOS ? new Set(process.env.BENCH_SCENARIOS.split(',').map((s) => s.trim())) : undefined;
const CPU_PROF = process.env.BENCH_CPU_PROF === '1';
const ADMIN_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
/** High enough that the per-client limiter never refuses the benchmark's load (see README). */
const UNLIMITED = '100000000';

const TARGETS = {
  clientCredentialsRatio: 0.6,
  tokenExchangeRatio: 0.5,
  introspectionRatio: 0.7,
  p99Ms: 50,
  /**
   * RSS at the end of a scenario at most this much above RSS at its half time: warm-up growth (JIT,
   * heap sizing, pools) flattens out, a leak keeps growing.
   */
  rssSecondHalfGrowth: 0.05,
};

type Scenario =
  | 'koa_hello_world' | 'bare_client_credentials_jwt' | 'bare_client_credentials_opaque' | 'bare_introspection'
  | 'discovery' | 'jwks' | 'client_credentials' | 'introspection' | 'token_exchange' | 'password_login';

const DESCRIPTIONS: Record<Scenario, string> = {
  koa_hello_world: 'baseline: koa hello world, HTTPS, same certificate',
  bare_client_credentials_jwt: 'baseline: bare oidc-provider, in-memory adapter, tls_client_auth, ES256 JWT access token',
  bare_client_credentials_opaque: 'baseline: bare oidc-provider, in-memory adapter, tls_client_auth, opaque access token',
  bare_introspection: 'baseline: bare oidc-provider introspection of its opaque token (tls_client_auth)',
  discovery: 'GET /.well-known/openid-configuration',
  jwks: 'GET /jwks',
  client_credentials: 'POST /token client_credentials over mTLS (tls_client_auth), RFC 9068 JWT, audit + rate limit on PostgreSQL',
  introspection: 'POST /token/introspection of a client-credentials JWT by its client over mTLS',
  token_exchange: 'POST /token RFC 8693: orchestrator (tls_client_auth) exchanges a clinician\'s token for a narrower one',
  password_login: 'one complete sign-in: authorization request, login page, password POST (argon2id), consent, redirect with code',
};

const BASELINE_OF: Partial<Record<Scenario, { baseline: Scenario; target?: number }>> = {
  client_credentials: { baseline: 'bare_client_credentials_jwt', target: TARGETS.clientCredentialsRatio },
  token_exchange: { baseline: 'bare_client_credentials_jwt', target: TARGETS.tokenExchangeRatio },
  introspection: { baseline: 'bare_introspection', target: TARGETS.introspectionRatio },
  discovery: { baseline: 'koa_hello_world' },
  jwks: { baseline: 'koa_hello_world' },
  bare_client_credentials_opaque: { baseline: 'bare_client_credentials_jwt' },
};

interface Measurement {
  scenario: Scenario;
  description: string;
  process: 'authz' | 'bare-oidc-provider' | 'koa';
  durationSeconds: number;
  connections: number;
  requests: number;
  requestsPerSecond: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number; mean: number };
  errors: { total: number; non2xx: number; socket: number; timeouts: number };
  rssMB: {
    start: number; end: number; max: number; firstQuarterMean: number; lastQuarterMean: number;
    /** (last quarter mean - first quarter mean) / first quarter mean: includes the warm-up growth of a fresh process. */
    drift: number;
    /** (end - RSS at half time) / RSS at half time: what a leak would show once the heap has warmed up. */
    secondHalfGrowth: number;
    samples: number;
    /** One sample per second (MB). */
    perSecond: number[];
  };
  /** V8 heapUsed of the server process, one sample per second (MB). */
  heapUsedMB: { perSecond: number[] };
  /** password_login: HTTP requests per sign-in. */
  httpRequestsPerOperation?: number;
}

const wanted = (s: Scenario) => !ONLY || ONLY.has(s) || Object.entries(BASELINE_OF).some(([k, v]) => ONLY.has(k) && v.baseline === s);
const round = (n: number, digits = 2) => Number(n.toFixed(digits));
const mb = (bytes: number) => round(bytes / 1024 / 1024, 1);
/** RSS samples per second (the children sample every 250 ms). */
const PER_SECOND = 4;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length);

const perSecond = (samples: number[]) => samples.filter((_, i) => i % PER_SECOND === 0).map(mb);

function rssSummary(samples: number[]): Measurement['rssMB'] {
  const quarter = Math.max(1, Math.floor(samples.length / 4));
  const first = mean(samples.slice(0, quarter));
  const last = mean(samples.slice(-quarter));
  const half = samples[Math.floor(samples.length / 2)] ?? 1;
  return {
    start: mb(samples[0] ?? 0), end: mb(samples.at(-1) ?? 0), max: mb(Math.max(...samples)),
    firstQuarterMean: mb(first), lastQuarterMean: mb(last), drift: round((last - first) / first, 3),
    secondHalfGrowth: round(((samples.at(-1) ?? 0) - half) / half, 3),
    samples: samples.length,
    perSecond: perSecond(samples),
  };
}

interface Load {
  url: string;
  method?: 'GET' | 'POST';
  body?: string;
  headers?: Record<string, string>;
  /** Client certificate (mTLS). */
  cert?: { certPem: string; keyPem: string };
}

async function cannon(load: Load, ca: string, seconds: number): Promise<Result> {
  return autocannon({
    url: load.url,
    method: load.method ?? 'GET',
    connections: CONNECTIONS,
    pipelining: 1,
    duration: seconds,
    timeout: 10,
    // The Host a real client sends (the listener's name, not the loopback address it connects to).
    headers: { host: `localhost:${new URL(load.url).port}`, ...load.headers },
    ...(load.body !== undefined ? { body: load.body } : {}),
    servername: 'localhost',
    // autocannon sets rejectUnauthorized: false itself; the CA is passed for completeness.
    tlsOptions: { ca, ...(load.cert ? { cert: load.cert.certPem, key: load.cert.keyPem } : {}) },
  });
}

async function measureHttp(
  scenario: Scenario, child: Child<unknown>, processName: Measurement['process'], load: Load, ca: string,
): Promise<Measurement> {
  if (WARMUP > 0) await cannon(load, ca, WARMUP);
  child.rssStart();
  const r = await cannon(load, ca, DURATION);
  const memory = await child.rssStop();
  const m: Measurement = {
    scenario, description: DESCRIPTIONS[scenario], process: processName, durationSeconds: DURATION, connections: CONNECTIONS,
    requests: r.requests.total,
    requestsPerSecond: round(r.requests.total / r.duration, 1),
    latencyMs: { p50: r.latency.p50, p90: r.latency.p90, p99: r.latency.p99, max: r.latency.max, mean: round(r.latency.mean) },
    errors: { total: r.non2xx + r.errors, non2xx: r.non2xx, socket: r.errors - r.timeouts, timeouts: r.timeouts },
    rssMB: rssSummary(memory.rss),
    heapUsedMB: { perSecond: perSecond(memory.heapUsed) },
  };
  progress(m);
  return m;
}

function progress(m: Measurement) {
  console.error(`  ${m.scenario}: ${m.requestsPerSecond} req/s, p50 ${m.latencyMs.p50} ms, p99 ${m.latencyMs.p99} ms, errors ${m.errors.total}, RSS ${m.rssMB.start}→${m.rssMB.end} MB, heapUsed ${m.heapUsedMB.perSecond[0]}→${m.heapUsedMB.perSecond.at(-1)} MB`);
}

/** POST a form with undici (preflight checks and setup), returning status and JSON body. */
async function postForm(url: string, agent: Agent, form: Record<string, string>, headers: Record<string, string> = {}) {
  const res = await request(url, {
    method: 'POST', dispatcher: agent, body: new URLSearchParams(form).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
  });
  const text = await res.body.text();
  let body: Record<string, unknown> = {};
  try {
    body = JSON.parse(text) as Record<string, unknown>;
  } catch {
    body = { raw: text.slice(0, 300) };
  }
  return { status: res.statusCode, body };
}

/** The scenario's request, once, before the load: it must succeed and say what we expect. */
async function preflight(what: string, res: { status: number; body: Record<string, unknown> }, ok: (b: Record<string, unknown>) => boolean) {
  if (res.status !== 200 || !ok(res.body)) throw new Error(`${what}: preflight failed (${res.status}): ${JSON.stringify(res.body).slice(0, 400)}`);
  return res.body;
}

const form = (params: Record<string, string>) => ({
  method: 'POST' as const,
  body: new URLSearchParams(params).toString(),
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
});
const basic = (id: string, secret: string) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;

/** Loopback URL of a listener (autocannon connects by IP; the certificate names 127.0.0.1 too). */
const loopback = (base: string, p: string) => {
  const url = new URL(p, base);
  url.hostname = '127.0.0.1';
  return url.href;
};

async function argon2Timing() {
  const password = 'correct horse battery staple 0123';
  const hashes: number[] = [];
  const verifies: number[] = [];
  let hash = '';
  for (let i = 0; i < 6; i++) {
    let t = performance.now();
    hash = await hashPassword(password);
    hashes.push(performance.now() - t);
    t = performance.now();
    if (!await verifyPassword(hash, password)) throw new Error('argon2 verify failed');
    verifies.push(performance.now() - t);
  }
  // The first call pays for loading the binding: reported, not counted in the median.
  return {
    parameters: ARGON2_OPTIONS,
    firstHashMs: round(hashes[0]!), hashMedianMs: round(median(hashes.slice(1))), hashMinMs: round(Math.min(...hashes.slice(1))),
    verifyMedianMs: round(median(verifies.slice(1))), verifyMinMs: round(Math.min(...verifies.slice(1))),
  };
}

async function main() {
  await fs.mkdir(RESULTS_DIR, { recursive: true });
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const cleanups: Array<() => Promise<unknown>> = [];
  const cleanup = async () => {
    for (const fn of cleanups.splice(0).reverse()) await fn().catch((err: Error) => console.error(`cleanup: ${err.message}`));
  };
  process.once('SIGINT', () => void cleanup().finally(() => process.exit(130)));

  const dbName = `bench_authz_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: ADMIN_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  cleanups.push(async () => {
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
  });
  const dbUrl = new URL(ADMIN_URL);
  dbUrl.pathname = `/${dbName}`;
  const keysDir = await fs.mkdtemp(path.join(os.tmpdir(), 'authz-bench-keys-'));
  cleanups.push(() => fs.rm(keysDir, { recursive: true, force: true }));

  try {
    console.error(`benchmark: ${DURATION} s per scenario (+${WARMUP} s warm-up), ${CONNECTIONS} connections, keep-alive; database ${dbName}`);
    const argon2 = await argon2Timing();
    console.error(`  argon2id: hash ${argon2.hashMedianMs} ms, verify ${argon2.verifyMedianMs} ms (median)`);

    const serverEnv: NodeJS.ProcessEnv = {
      DATABASE_URL: dbUrl.href,
      KEYS_DIR: keysDir,
      DATA_DIR: path.join(keysDir, 'data'),
      BENCH_LOGIN_USERS: String(CONNECTIONS),
      RATE_LIMIT_CLIENT_POINTS: process.env.RATE_LIMIT_CLIENT_POINTS ?? UNLIMITED,
      RATE_LIMIT_LOGIN_IP_POINTS: process.env.RATE_LIMIT_LOGIN_IP_POINTS ?? UNLIMITED,
      RATE_LIMIT_LOGIN_USER_POINTS: process.env.RATE_LIMIT_LOGIN_USER_POINTS ?? UNLIMITED,
    };
    const server = await startChild<ServerInfo>(new URL('./server-child.ts', import.meta.url), {
      env: serverEnv,
      logFile: path.join(RESULTS_DIR, 'server.log'),
      execArgv: CPU_PROF ? ['--cpu-prof', '--cpu-prof-dir', RESULTS_DIR, '--cpu-prof-name', `server-${stamp}.cpuprofile`] : [],
    });
    cleanups.push(() => server.stop());
    const { tls, issuer, mtlsBaseUrl } = server.info;
    const baselineEnv = { BENCH_TLS: JSON.stringify(tls) };

    const ca = {
      caCertPem: await fs.readFile(path.join(keysDir, 'tls', 'ca.pem'), 'utf8'),
      caKeyPem: await fs.readFile(path.join(keysDir, 'tls', 'ca.key'), 'utf8'),
    };
    const workloadCert = await issueTestCertificate({ ...ca, commonName: WORKLOAD });
    const orchestratorCert = await issueTestCertificate({ ...ca, commonName: ORCHESTRATOR });
    // The app's tokens are certificate-bound (server policy): its code redemption presents one.
    const appCert = await issueTestCertificate({ ...ca, commonName: APP.client_id });
    const agent = (cert?: { certPem: string; keyPem: string }) => {
      const a = new Agent({ connect: { ca: tls.caPem, ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}) } });
      cleanups.push(() => a.close());
      return a;
    };
    const workloadAgent = agent(workloadCert);
    const orchestratorAgent = agent(orchestratorCert);
    const browserAgent = agent();
    const appAgent = agent(appCert);

    const results: Measurement[] = [];
    const ccForm = (resource: string) => ({ grant_type: 'client_credentials', client_id: WORKLOAD, resource, scope: SYSTEM_SCOPE });

    // Baselines, each in its own process, one at a time.
    if (wanted('koa_hello_world')) {
      const koa = await startChild<{ baseUrl: string }>(new URL('./baseline-koa.ts', import.meta.url), { env: baselineEnv });
      try {
        results.push(await measureHttp('koa_hello_world', koa, 'koa', { url: loopback(koa.info.baseUrl, '/') }, tls.caPem));
      } finally {
        await koa.stop();
      }
    }
    if (wanted('bare_client_credentials_jwt') || wanted('bare_client_credentials_opaque') || wanted('bare_introspection')) {
      const bare = await startChild<{ baseUrl: string }>(new URL('./baseline-oidc.ts', import.meta.url), { env: baselineEnv });
      try {
        const token = loopback(bare.info.baseUrl, '/token');
        const tokenUrl = new URL('/token', bare.info.baseUrl).href;
        if (wanted('bare_client_credentials_jwt')) {
          await preflight('bare JWT client credentials', await postForm(tokenUrl, workloadAgent, ccForm(FHIR)),
            (b) => typeof b.access_token === 'string' && b.access_token.split('.').length === 3);
          results.push(await measureHttp('bare_client_credentials_jwt', bare, 'bare-oidc-provider',
            { url: token, ...form(ccForm(FHIR)), cert: workloadCert }, tls.caPem));
        }
        if (wanted('bare_client_credentials_opaque')) {
          await preflight('bare opaque client credentials', await postForm(tokenUrl, workloadAgent, ccForm(OPAQUE_API)),
            (b) => typeof b.access_token === 'string' && !b.access_token.includes('.'));
          results.push(await measureHttp('bare_client_credentials_opaque', bare, 'bare-oidc-provider',
            { url: token, ...form(ccForm(OPAQUE_API)), cert: workloadCert }, tls.caPem));
        }
        if (wanted('bare_introspection')) {
          const issued = await preflight('bare opaque token for introspection', await postForm(tokenUrl, workloadAgent, ccForm(OPAQUE_API)),
            (b) => typeof b.access_token === 'string');
          const params = { token: String(issued.access_token), client_id: WORKLOAD };
          await preflight('bare introspection', await postForm(new URL('/token/introspection', bare.info.baseUrl).href, workloadAgent, params),
            (b) => b.active === true);
          results.push(await measureHttp('bare_introspection', bare, 'bare-oidc-provider',
            { url: loopback(bare.info.baseUrl, '/token/introspection'), ...form(params), cert: workloadCert }, tls.caPem));
        }
      } finally {
        await bare.stop();
      }
    }

    // The server under test.
    if (wanted('discovery')) {
      results.push(await measureHttp('discovery', server, 'authz', { url: loopback(issuer, '/.well-known/openid-configuration') }, tls.caPem));
    }
    if (wanted('jwks')) {
      results.push(await measureHttp('jwks', server, 'authz', { url: loopback(issuer, '/jwks') }, tls.caPem));
    }
    const mtlsToken = `${mtlsBaseUrl}/token`;
    if (wanted('client_credentials')) {
      await preflight('client credentials', await postForm(mtlsToken, workloadAgent, ccForm(FHIR)),
        (b) => typeof b.access_token === 'string' && b.access_token.split('.').length === 3);
      results.push(await measureHttp('client_credentials', server, 'authz',
        { url: loopback(mtlsBaseUrl, '/token'), ...form(ccForm(FHIR)), cert: workloadCert }, tls.caPem));
    }
    if (wanted('introspection')) {
      const issued = await preflight('client credentials token for introspection', await postForm(mtlsToken, workloadAgent, ccForm(FHIR)),
        (b) => typeof b.access_token === 'string');
      const params = { token: String(issued.access_token), client_id: WORKLOAD };
      await preflight('introspection', await postForm(`${mtlsBaseUrl}/token/introspection`, workloadAgent, params), (b) => b.active === true);
      results.push(await measureHttp('introspection', server, 'authz',
        { url: loopback(mtlsBaseUrl, '/token/introspection'), ...form(params), cert: workloadCert }, tls.caPem));
    }
    if (wanted('token_exchange')) {
      // The clinician signs in to the app (code + PKCE, patient picked at consent); the app's token is the subject.
      const signedIn = await signIn({
        issuer, agent: browserAgent, clientId: APP.client_id, redirectUri: APP.redirect_uri,
        username: CLINICIAN.username, password: CLINICIAN.password, patient: PATIENT,
        scope: 'openid fhirUser launch/patient patient/Observation.rs', params: { aud: FHIR, prompt: 'consent' },
      });
      const clinician = await preflight('clinician code redemption', await postForm(mtlsToken, appAgent, {
        grant_type: 'authorization_code', code: signedIn.code, redirect_uri: APP.redirect_uri, code_verifier: signedIn.codeVerifier,
      }, { authorization: basic(APP.client_id, APP.client_secret) }), (b) => typeof b.access_token === 'string');
      const params = {
        grant_type: TOKEN_EXCHANGE_GRANT, client_id: ORCHESTRATOR, subject_token: String(clinician.access_token),
        subject_token_type: TOKEN_TYPE_ACCESS_TOKEN, resource: FHIR, scope: LABS,
      };
      await preflight('token exchange', await postForm(mtlsToken, orchestratorAgent, params),
        (b) => typeof b.access_token === 'string' && b.issued_token_type === TOKEN_TYPE_ACCESS_TOKEN);
      results.push(await measureHttp('token_exchange', server, 'authz',
        { url: loopback(mtlsBaseUrl, '/token'), ...form(params), cert: orchestratorCert }, tls.caPem));
    }
    if (wanted('password_login')) {
      results.push(await measureLogin(server, issuer, tls.caPem));
    }

    const ratios = Object.entries(BASELINE_OF).flatMap(([scenario, { baseline, target }]) => {
      const m = results.find((r) => r.scenario === scenario);
      const b = results.find((r) => r.scenario === baseline);
      if (!m || !b) return [];
      const ratio = round(m.requestsPerSecond / b.requestsPerSecond, 3);
      return [{ scenario, baseline, ratio, ...(target !== undefined ? { target, met: ratio >= target } : {}) }];
    });
    const ours = results.filter((r) => r.process === 'authz');
    const checks = {
      ratios: ratios.filter((r) => r.target !== undefined),
      p99: ours.filter((r) => r.scenario !== 'password_login')
        .map((r) => ({ scenario: r.scenario, p99Ms: r.latencyMs.p99, target: TARGETS.p99Ms, met: r.latencyMs.p99 < TARGETS.p99Ms })),
      errors: results.map((r) => ({ scenario: r.scenario, errors: r.errors.total, met: r.errors.total === 0 })),
      rss: ours.map((r) => ({
        scenario: r.scenario, secondHalfGrowth: r.rssMB.secondHalfGrowth, target: TARGETS.rssSecondHalfGrowth,
        met: r.rssMB.secondHalfGrowth <= TARGETS.rssSecondHalfGrowth,
      })),
    };

    const cpus = os.cpus();
    const report = {
      date: new Date().toISOString(),
      machine: { cpus: cpus.length, cpuModel: cpus[0]?.model, memoryGB: round(os.totalmem() / 1024 ** 3, 1), node: process.version, platform: `${os.platform()} ${os.release()}` },
      settings: {
        durationSeconds: DURATION, warmupSeconds: WARMUP, connections: CONNECTIONS, pipelining: 1, keepAlive: true,
        database: 'PostgreSQL (fresh database, dropped afterwards)', rateLimitClientPoints: serverEnv.RATE_LIMIT_CLIENT_POINTS,
        rateLimitLoginPoints: { ip: serverEnv.RATE_LIMIT_LOGIN_IP_POINTS, user: serverEnv.RATE_LIMIT_LOGIN_USER_POINTS },
        cpuProfile: CPU_PROF ? `bench/results/server-${stamp}.cpuprofile` : undefined,
      },
      targets: TARGETS,
      argon2,
      scenarios: results,
      ratios,
      checks,
    };
    // A partial or profiled run does not replace the figures of record.
    const output = ONLY || CPU_PROF ? `run-${stamp}.json` : 'latest.json';
    await fs.writeFile(path.join(RESULTS_DIR, output), `${JSON.stringify(report, null, 2)}\n`);
    printTable(results, ratios);
    console.log(`\nargon2id (m=${ARGON2_OPTIONS.memoryCost} KiB, t=${ARGON2_OPTIONS.timeCost}, p=${ARGON2_OPTIONS.parallelism}): hash ${argon2.hashMedianMs} ms, verify ${argon2.verifyMedianMs} ms (median of 5, one at a time)`);
    printChecks(checks);
    console.log(`\nresults: bench/results/${output}`);
  } finally {
    await cleanup();
  }
}

/** Complete sign-ins, CONNECTIONS at a time, for DURATION seconds (undici; autocannon cannot follow a cookie flow). */
async function measureLogin(server: Child<ServerInfo>, issuer: string, caPem: string): Promise<Measurement> {
  const agent = new Agent({ connect: { ca: caPem }, connections: CONNECTIONS });
  const run = async (seconds: number) => {
    const latencies: number[] = [];
    let errors = 0;
    let requests = 0;
    let firstError: string | undefined;
    const deadline = performance.now() + seconds * 1000;
    await Promise.all(Array.from({ length: CONNECTIONS }, async (_, i) => {
      while (performance.now() < deadline) {
        const t = performance.now();
        try {
          const done = await signIn({
            issuer, agent, clientId: APP.client_id, redirectUri: APP.redirect_uri,
            username: loginUser(i), password: CLINICIAN.password, scope: 'openid',
          });
          requests += done.requests;
          latencies.push(performance.now() - t);
        } catch (err) {
          errors++;
          firstError ??= (err as Error).message;
        }
      }
    }));
    return { latencies, errors, requests, firstError };
  };
  try {
    if (WARMUP > 0) await run(WARMUP);
    server.rssStart();
    const started = performance.now();
    const r = await run(DURATION);
    const elapsed = (performance.now() - started) / 1000;
    const memory = await server.rssStop();
    if (r.firstError) console.error(`  password_login: first error: ${r.firstError}`);
    const sorted = [...r.latencies].sort((a, b) => a - b);
    const m: Measurement = {
      scenario: 'password_login', description: DESCRIPTIONS.password_login, process: 'authz', durationSeconds: DURATION, connections: CONNECTIONS,
      requests: sorted.length,
      requestsPerSecond: round(sorted.length / elapsed, 1),
      latencyMs: {
        p50: round(percentile(sorted, 0.5)), p90: round(percentile(sorted, 0.9)), p99: round(percentile(sorted, 0.99)),
        max: round(sorted.at(-1) ?? 0), mean: round(mean(sorted)),
      },
      errors: { total: r.errors, non2xx: r.errors, socket: 0, timeouts: 0 },
      rssMB: rssSummary(memory.rss),
      heapUsedMB: { perSecond: perSecond(memory.heapUsed) },
      httpRequestsPerOperation: sorted.length ? round(r.requests / sorted.length, 1) : 0,
    };
    progress(m);
    return m;
  } finally {
    await agent.close();
  }
}

function printTable(results: Measurement[], ratios: Array<{ scenario: string; baseline: string; ratio: number; target?: number; met?: boolean }>) {
  const rows = results.map((r) => {
    const ratio = ratios.find((x) => x.scenario === r.scenario);
    return {
      scenario: r.scenario,
      'req/s': r.requestsPerSecond,
      'p50 ms': r.latencyMs.p50,
      'p99 ms': r.latencyMs.p99,
      errors: r.errors.total,
      'RSS MB start→end (max)': `${r.rssMB.start}→${r.rssMB.end} (${r.rssMB.max})`,
      ratio: ratio ? `${ratio.ratio}x ${ratio.baseline}` : '',
      target: ratio?.target !== undefined ? `≥${ratio.target}x ${ratio.met ? 'met' : 'NOT met'}` : '',
    };
  });
  const headers = Object.keys(rows[0] ?? {});
  const cells = rows.map((row) => headers.map((h) => String(row[h as keyof typeof row])));
  const widths = headers.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)));
  const line = (values: string[]) => values.map((v, i) => (i === 0 || i >= 5 ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ');
  console.log(`\n${line(headers)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const c of cells) console.log(line(c));
}

function printChecks(checks: {
  ratios: Array<{ scenario: string; ratio: number; target?: number; met?: boolean }>;
  p99: Array<{ scenario: string; p99Ms: number; met: boolean }>;
  errors: Array<{ scenario: string; errors: number; met: boolean }>;
  rss: Array<{ scenario: string; secondHalfGrowth: number; met: boolean }>;
}) {
  console.log('\ntargets:');
  for (const r of checks.ratios) console.log(`  ${r.met ? 'met    ' : 'NOT met'}  ${r.scenario} ≥ ${r.target}x baseline (${r.ratio}x)`);
  const slow = checks.p99.filter((c) => !c.met);
  console.log(`  ${slow.length ? 'NOT met' : 'met    '}  p99 < ${TARGETS.p99Ms} ms at ${CONNECTIONS} connections${slow.length ? ` (over: ${slow.map((s) => `${s.scenario} ${s.p99Ms} ms`).join(', ')})` : ''}`);
  const failing = checks.errors.filter((c) => !c.met);
  console.log(`  ${failing.length ? 'NOT met' : 'met    '}  no errors${failing.length ? ` (${failing.map((s) => `${s.scenario}: ${s.errors}`).join(', ')})` : ''}`);
  const growing = checks.rss.filter((c) => !c.met);
  console.log(`  ${growing.length ? 'NOT met' : 'met    '}  RSS stable (≤ +${TARGETS.rssSecondHalfGrowth * 100}% over the second half of each scenario)${growing.length ? ` (${growing.map((s) => `${s.scenario} +${round(s.secondHalfGrowth * 100, 1)}%`).join(', ')})` : ''}`);
}

await main();
