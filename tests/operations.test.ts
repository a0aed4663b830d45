// Operations: health checks, start-up refusals, database outage and recovery, graceful shutdown,
// signing key rotation.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import { decodeProtectedHeader } from 'jose';

import { ConfigError, loadConfig } from '../src/config.ts';
import { createPgliteDb, DatabaseInUseError } from '../src/db/pglite.ts';
import { KeyMaterialError } from '../src/keystore/secrets.ts';
import { rotateSigningKeys } from '../src/keystore/signing-keys.ts';
import { createLogger } from '../src/log.ts';
import { startServer } from '../src/server.ts';
import { createTestDb } from './support/test-db.ts';
import { basicAuth, FHIR, form, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

const ROOT = path.resolve(import.meta.dirname, '..');

function runMain(env: Record<string, string>, untilOutput?: RegExp) {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => { stdout += d; });
  child.stderr.on('data', (d: Buffer) => { stderr += d; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const ready = untilOutput
    ? new Promise<void>((resolve, reject) => {
      const check = () => { if (untilOutput.test(stdout)) resolve(); };
      child.stdout.on('data', check);
      exited.then(() => reject(new Error(`exited before ready: ${stderr}`)));
    })
    : Promise.resolve();
  return { child, exited, ready, output: () => ({ stdout, stderr }) };
}

async function tempDir() {
  return fs.mkdtemp(path.join(os.tmpdir(), 'authz-ops-'));
}

function clientCredentials(ts: TestServer) {
  return ts.fetch(ts.endpoint("/token"), {
    method: 'POST',
    body: new URLSearchParams({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }).toString(),
    headers: { ...form({}).headers, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) },
  });
}

describe('start-up refusals', () => {
  test('production refuses a non-https issuer, a missing DATABASE_URL and the demo seed', () => {
    const base = { NODE_ENV: 'production', DATABASE_URL: 'postgres://db/authz' };
    assert.throws(() => loadConfig({ ...base, ISSUER: 'http://authz.hospital.example' }), (e: Error) => e instanceof ConfigError && /https/.test(e.message));
    assert.throws(() => loadConfig({ NODE_ENV: 'production', ISSUER: 'https://authz.hospital.example' }), /DATABASE_URL/);
    assert.throws(() => loadConfig({ ...base, ISSUER: 'https://authz.hospital.example', DEMO_SEED: 'true' }), /DEMO_SEED/);
    assert.throws(() => loadConfig({ ACCESS_TOKEN_TTL: '86400' }), ConfigError, 'access tokens live minutes, not hours');
  });

  test('break-glass settings: at most an hour, a signed https webhook in production, http(s) only', () => {
    const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
    assert.throws(() => loadConfig({ BREAK_GLASS_TTL: '3601' }), /BREAK_GLASS_TTL/);
    assert.equal(loadConfig({}).breakGlass.ttlSeconds, 900);
    assert.throws(() => loadConfig({ BREAK_GLASS_WEBHOOK_URL: 'https://privacy.example/hook' }), /needs BREAK_GLASS_WEBHOOK_SECRET/);
    assert.throws(() => loadConfig({ BREAK_GLASS_WEBHOOK_URL: 'https://privacy.example/hook', BREAK_GLASS_WEBHOOK_SECRET: 'whsec_short' }), /BREAK_GLASS_WEBHOOK_SECRET/);
    for (const url of ['ftp://privacy.example/hook', 'file:///etc/passwd', 'mailto:po@example.org']) {
      assert.throws(() => loadConfig({ BREAK_GLASS_WEBHOOK_URL: url, BREAK_GLASS_WEBHOOK_SECRET: secret }), /BREAK_GLASS_WEBHOOK_URL/, url);
    }
    assert.throws(() => loadConfig({
      NODE_ENV: 'production', DATABASE_URL: 'postgres://db/authz', ISSUER: 'https://authz.hospital.example',
      BREAK_GLASS_WEBHOOK_URL: 'http://privacy.example/hook', BREAK_GLASS_WEBHOOK_SECRET: secret,
    }), /https:\/\/ BREAK_GLASS_WEBHOOK_URL/);
  });

  test('production refuses development keys and cookie secrets', async () => {
    const keysDir = await tempDir();
    const testDb = await createTestDb();
    try {
      // A development start generates dev material into keysDir...
      const devConfig = loadConfig({ KEYS_DIR: keysDir, ISSUER: 'https://localhost:0', PORT: '0', MTLS_PORT: '0', HOST: '127.0.0.1', DEMO_SEED: 'false' });
      const dev = await startServer({ config: devConfig, logger: createLogger('silent'), db: testDb.db });
      await dev.stop();
      // ...which production then refuses to use.
      const prodConfig = loadConfig({
        NODE_ENV: 'production', KEYS_DIR: keysDir, ISSUER: 'https://localhost:0', PORT: '0', MTLS_PORT: '0', HOST: '127.0.0.1',
        DATABASE_URL: 'postgres://unused.invalid/db',
      });
      await assert.rejects(startServer({ config: prodConfig, logger: createLogger('silent'), db: testDb.db }),
        (e: Error) => e instanceof KeyMaterialError && /development secrets/.test(e.message));
      // And production never generates anything itself.
      const empty = await tempDir();
      await assert.rejects(startServer({ config: { ...prodConfig, keysDir: empty }, logger: createLogger('silent'), db: testDb.db }),
        (e: Error) => e instanceof KeyMaterialError);
      assert.deepEqual(await fs.readdir(empty), []);
    } finally {
      await testDb.drop();
    }
  });

  test('an unreachable database at start: one line on stderr, non-zero exit', async () => {
    const dir = await tempDir();
    const run = runMain({ DATABASE_URL: 'postgres://postgres@127.0.0.1:1/none', KEYS_DIR: dir, PORT: '0', MTLS_PORT: '0', ISSUER: 'https://localhost:0' });
    const code = await run.exited;
    const { stderr } = run.output();
    assert.equal(code, 1);
    assert.match(stderr, /^clinical-authz: database unreachable/);
    assert.equal(stderr.trim().split('\n').length, 1, 'one line, no stack trace');
  });
});

describe('running server', () => {
  let ts: TestServer;
  before(async () => { ts = await startTestServer(); });
  after(() => ts.stop());

  test('healthz and readyz', async () => {
    assert.equal((await ts.fetch(`${ts.issuer}/healthz`)).status, 200);
    const ready = await ts.fetch(`${ts.issuer}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(await ready.json(), { status: 'ready' });
  });

  test('keys rotate: the new key signs, the old one stays published and its tokens stay valid', async () => {
    const before = await clientCredentials(ts);
    const oldToken = ((await before.json()) as { access_token: string }).access_token;
    const oldKid = decodeProtectedHeader(oldToken).kid;

    await rotateSigningKeys(ts.keysDir, { retireAfterSeconds: 600 });
    assert.equal(await ts.server.reloadKeys(), true);

    const jwks = await (await ts.fetch(`${ts.issuer}/jwks`)).json() as { keys: { kid: string; alg: string }[] };
    const es256 = jwks.keys.filter((k) => k.alg === 'ES256').map((k) => k.kid);
    assert.equal(es256.length, 2);
    assert.notEqual(es256[0], oldKid, 'the new key is first, so it signs');
    assert.ok(es256.includes(oldKid!), 'the old key stays published');

    const afterRotation = ((await (await clientCredentials(ts)).json()) as { access_token: string }).access_token;
    assert.equal(decodeProtectedHeader(afterRotation).kid, es256[0]);

    const introspect = await ts.fetch(ts.endpoint("/token/introspection"), {
      method: 'POST',
      body: new URLSearchParams({ token: oldToken }).toString(),
      headers: { ...form({}).headers, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) },
    });
    assert.equal(((await introspect.json()) as { active: boolean }).active, true, 'tokens signed by the retired key still verify');
  });

  test('keys rotate, published ahead: the server publishes the new key at once and switches to it when it activates', async () => {
    const kidOf = async () => decodeProtectedHeader(((await (await clientCredentials(ts)).json()) as { access_token: string }).access_token).kid;
    const signing = await kidOf();
    const rotated = await rotateSigningKeys(ts.keysDir, { retireAfterSeconds: 600, publishAheadSeconds: 3 });
    assert.equal(await ts.server.reloadKeys(), true, 'the changed file is loaded');
    const jwks = await (await ts.fetch(`${ts.issuer}/jwks`)).json() as { keys: { kid: string }[] };
    assert.ok(rotated.added.every((kid) => jwks.keys.some((k) => k.kid === kid)), 'published before use');
    if (Date.now() < Date.parse(rotated.activeFrom) - 1_000) {
      assert.equal(await kidOf(), signing, 'still signing with the current key');
      assert.equal(await ts.server.reloadKeys(), false, 'nothing to do before activation');
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, Date.parse(rotated.activeFrom) - Date.now() + 50)));
    assert.equal(await ts.server.reloadKeys(), true, 'switched at activation, without a file change');
    const switched = await kidOf();
    assert.ok(switched && rotated.added.includes(switched), 'signs with the new key');
    assert.equal(await ts.server.reloadKeys(), false);
  });
});

describe('database outage while running', { skip: process.env.DATABASE_URL ? false : 'needs PostgreSQL (DATABASE_URL): the embedded database cannot go away' }, () => {
  test('requests answer 503 while the database is away and succeed again once it is back', async () => {
    const testDb = await createTestDb();
    const target = new URL(testDb.url!);
    // A TCP relay we can cut: the server talks to PostgreSQL only through it.
    const sockets = new Set<net.Socket>();
    let open = true;
    const relay = net.createServer((client) => {
      if (!open) return client.destroy();
      const upstream = net.connect(Number(target.port || 5432), target.hostname);
      sockets.add(client).add(upstream);
      client.pipe(upstream).pipe(client);
      const drop = () => { client.destroy(); upstream.destroy(); };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
    });
    await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
    const relayUrl = new URL(target.href);
    relayUrl.host = `127.0.0.1:${(relay.address() as net.AddressInfo).port}`;
    const { createPostgresDb } = await import('../src/db/postgres.ts');
    const db = createPostgresDb(relayUrl.href, 4);
    const ts = await startTestServer({ testDb: { ...testDb, db, drop: async () => {} } });
    try {
      assert.equal((await clientCredentials(ts)).status, 200);
      open = false;
      for (const socket of sockets) socket.destroy();
      const down = await clientCredentials(ts);
      assert.equal(down.status, 503);
      assert.equal(((await down.json()) as { error: string }).error, 'temporarily_unavailable');
      assert.equal((await ts.fetch(`${ts.issuer}/readyz`)).status, 503);
      assert.equal((await ts.fetch(`${ts.issuer}/healthz`)).status, 200, 'the process itself is up');
      open = true;
      assert.equal((await ts.fetch(`${ts.issuer}/readyz`)).status, 200);
      assert.equal((await clientCredentials(ts)).status, 200, 'serves again without a restart');
    } finally {
      await ts.stop();
      await db.close().catch(() => {});
      relay.close();
      await testDb.drop();
    }
  });
});

describe('graceful shutdown', () => {
  test('SIGTERM stops the embedded-database server with exit code 0', async () => {
    const dir = await tempDir();
    const run = runMain({
      KEYS_DIR: path.join(dir, 'keys'), DATA_DIR: path.join(dir, 'data'), PORT: '0', MTLS_PORT: '0', ISSUER: 'https://localhost:0',
      HOST: '127.0.0.1', LOG_LEVEL: 'info',
    }, /(?=[\s\S]*"msg":"listening")(?=[\s\S]*Sign in as clinician)/); // listening, and the demo seed guide printed
    const dataDir = path.join(dir, 'data', 'pglite');
    try {
      await run.ready;
      // The embedded database is single-process: a second opener is refused while the server runs.
      await assert.rejects(createPgliteDb(dataDir), (e: Error) => e instanceof DatabaseInUseError && /in use by process/.test(e.message));
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0);
    } finally {
      run.child.kill('SIGKILL');
    }
    const reopened = await createPgliteDb(dataDir); // the lock is released on shutdown
    assert.equal((await reopened.query<{ n: number }>('SELECT count(*)::int AS n FROM users')).rows[0]!.n, 1);
    await reopened.close();
    await fs.rm(dir, { recursive: true, force: true });
  });
});
