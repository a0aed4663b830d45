// The oidc-provider adapter on a real database: expiry, consume, revokeByGrantId, replay detection,
// atomicity across connection pools, and a second server instance seeing what the first wrote.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';

import { errors, type Adapter, type AdapterPayload } from 'oidc-provider';

import { migrate } from '../src/db/migrate.ts';
import { createAdapter, grantFamily, linkChildGrant, sweepExpired } from '../src/oidc/adapter.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';
import { basicAuth, FHIR, form, SERVICE, startTestServer } from './support/test-server.ts';

let testDb: TestDb;
let adapterFor: (model: string) => Adapter;

before(async () => {
  testDb = await createTestDb();
  await migrate(testDb.db);
  const Adapter = createAdapter(testDb.db);
  adapterFor = (model) => new Adapter(model);
});
after(() => testDb.drop());

const payload = (extra: Partial<AdapterPayload> = {}): AdapterPayload => ({ kind: 'AuthorizationCode', clientId: 'c1', ...extra });

describe('adapter', () => {
  test('migrations are recorded and applying them again is a no-op', async () => {
    assert.deepEqual(await migrate(testDb.db), []);
    const { rows } = await testDb.db.query<{ version: number }>('SELECT version FROM schema_migrations ORDER BY version');
    assert.ok(rows.length >= 1);
    assert.equal(rows[0]!.version, 1);
  });

  test('upsert and find round-trip; expired rows are never returned and are swept', async () => {
    const codes = adapterFor('AuthorizationCode');
    await codes.upsert('code-live', payload({ grantId: 'g-live' }), 60);
    await codes.upsert('code-short', payload(), 1);
    assert.equal((await codes.find('code-live'))?.grantId, 'g-live');
    assert.ok(await codes.find('code-short'));
    await sleep(1_200);
    assert.equal(await codes.find('code-short'), undefined);
    assert.ok(await sweepExpired(testDb.db) >= 1);
    const { rows } = await testDb.db.query("SELECT id FROM oidc_payloads WHERE id = 'code-short'");
    assert.equal(rows.length, 0);
    assert.ok(await codes.find('code-live'), 'live rows survive the sweep');
  });

  test('derived grants (token exchange) go with their parent: per-model revocation and grant destroy', async () => {
    const soon = new Date(Date.now() + 60_000);
    const tokens = adapterFor('AccessToken');
    const grants = adapterFor('Grant');
    for (const id of ['gp', 'gc', 'gg', 'gx']) await grants.upsert(id, { kind: 'Grant' } as AdapterPayload, 60);
    await linkChildGrant(testDb.db, 'gc', 'gp', soon);
    await linkChildGrant(testDb.db, 'gg', 'gc', soon);
    assert.deepEqual(await grantFamily(testDb.db, 'gp'), ['gp', 'gc', 'gg']);
    assert.deepEqual(await grantFamily(testDb.db, 'gx'), ['gx']);
    await tokens.upsert('at-p', { kind: 'AccessToken', grantId: 'gp' }, 60);
    await tokens.upsert('at-c', { kind: 'AccessToken', grantId: 'gc' }, 60);
    await tokens.upsert('at-g', { kind: 'AccessToken', grantId: 'gg' }, 60);
    await tokens.upsert('at-x', { kind: 'AccessToken', grantId: 'gx' }, 60);

    // Revoking the child's tokens leaves the parent's alone; the parent's takes the whole line.
    await tokens.revokeByGrantId('gc');
    assert.ok(await tokens.find('at-p'));
    assert.equal(await tokens.find('at-c'), undefined);
    assert.equal(await tokens.find('at-g'), undefined);
    await tokens.upsert('at-c2', { kind: 'AccessToken', grantId: 'gc' }, 60);
    await grants.destroy('gp');
    for (const id of ['gp', 'gc', 'gg']) assert.equal(await grants.find(id), undefined, `grant ${id} destroyed`);
    assert.equal(await tokens.find('at-c2'), undefined, 'a derived grant\'s token dies with the parent grant');
    assert.ok(await tokens.find('at-x'), 'unrelated grants are untouched');
    assert.ok(await grants.find('gx'));
  });

  test('models are separate namespaces', async () => {
    await adapterFor('AccessToken').upsert('same-id', { kind: 'AccessToken' }, 60);
    assert.equal(await adapterFor('RefreshToken').find('same-id'), undefined);
  });

  test('findByUid and findByUserCode', async () => {
    await adapterFor('Session').upsert('sess-1', { kind: 'Session', uid: 'uid-1' } as AdapterPayload, 60);
    assert.equal((await adapterFor('Session').findByUid('uid-1'))?.uid, 'uid-1');
    assert.equal(await adapterFor('Session').findByUid('uid-unknown'), undefined);
    await adapterFor('DeviceCode').upsert('dc-1', { kind: 'DeviceCode', userCode: 'ABCD-EFGH' }, 60);
    assert.equal((await adapterFor('DeviceCode').findByUserCode('ABCD-EFGH'))?.userCode, 'ABCD-EFGH');
  });

  test('consume marks once; a second consume is invalid_grant and revokes the grant', async () => {
    const codes = adapterFor('AuthorizationCode');
    const tokens = adapterFor('AccessToken');
    await codes.upsert('code-c', payload({ grantId: 'g-c' }), 60);
    await tokens.upsert('at-c', { kind: 'AccessToken', grantId: 'g-c' }, 60);
    await codes.consume('code-c');
    const found = await codes.find('code-c');
    assert.equal(typeof found?.consumed, 'number');
    await assert.rejects(codes.consume('code-c'), (err: unknown) => err instanceof errors.InvalidGrant);
    assert.equal(await tokens.find('at-c'), undefined, 'tokens of the grant are revoked');
  });

  test('concurrent consume from two connection pools: exactly one wins', async () => {
    const other = testDb.openAnother() ?? testDb.db; // PGlite: one process, same database
    const a = adapterFor('AuthorizationCode');
    const b = new (createAdapter(other))('AuthorizationCode');
    for (let i = 0; i < 10; i += 1) {
      await a.upsert(`race-${i}`, payload({ grantId: `g-race-${i}` }), 60);
      const results = await Promise.allSettled([a.consume(`race-${i}`), b.consume(`race-${i}`)]);
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1, `round ${i}`);
      const rejected = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
      assert.ok(rejected.reason instanceof errors.InvalidGrant);
    }
  });

  test('revokeByGrantId removes its model\'s artefacts of that grant and nothing else', async () => {
    await adapterFor('Grant').upsert('g-r', { kind: 'Grant', accountId: 'u', clientId: 'c' } as AdapterPayload, 60);
    await adapterFor('AccessToken').upsert('at-r', { kind: 'AccessToken', grantId: 'g-r' }, 60);
    await adapterFor('RefreshToken').upsert('rt-r', { kind: 'RefreshToken', grantId: 'g-r' }, 60);
    await adapterFor('AccessToken').upsert('at-other', { kind: 'AccessToken', grantId: 'g-other' }, 60);
    // oidc-provider calls it per model, and destroys the Grant itself only when its policy says so.
    await adapterFor('RefreshToken').revokeByGrantId('g-r');
    assert.equal(await adapterFor('RefreshToken').find('rt-r'), undefined);
    assert.ok(await adapterFor('AccessToken').find('at-r'), 'other models are their own calls');
    assert.ok(await adapterFor('Grant').find('g-r'));
    await adapterFor('AccessToken').revokeByGrantId('g-r');
    assert.equal(await adapterFor('AccessToken').find('at-r'), undefined);
    assert.ok(await adapterFor('AccessToken').find('at-other'));
  });

  test('replay detection is atomic: the second sighting of an id is refused until it expires', async () => {
    const replay = adapterFor('ReplayDetection');
    const other = new (createAdapter(testDb.openAnother() ?? testDb.db))('ReplayDetection');
    const results = await Promise.allSettled([
      replay.upsert('jti-1', { kind: 'ReplayDetection' } as AdapterPayload, 1),
      other.upsert('jti-1', { kind: 'ReplayDetection' } as AdapterPayload, 1),
    ]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    assert.ok((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason instanceof errors.InvalidClientAuth);
    await sleep(1_200);
    await replay.upsert('jti-1', { kind: 'ReplayDetection' } as AdapterPayload, 1);
  });

  test('payloads with NUL characters are refused as invalid_request, not stored', async () => {
    await assert.rejects(
      adapterFor('Interaction').upsert('nul', { kind: 'Interaction', params: { state: 'a\u0000b' } } as AdapterPayload, 60),
      (err: unknown) => err instanceof errors.InvalidRequest,
    );
    assert.equal(await adapterFor('Interaction').find('nul'), undefined);
  });

  test('clients live in their own table', async () => {
    const clients = adapterFor('Client');
    await clients.upsert('client-x', { client_id: 'client-x', redirect_uris: [] } as AdapterPayload);
    assert.equal((await clients.find('client-x'))?.client_id, 'client-x');
    await clients.destroy('client-x');
    assert.equal(await clients.find('client-x'), undefined);
  });
});

describe('two server instances on one database', () => {
  test('a token issued by one is introspected and revoked through the other', async () => {
    const first = await startTestServer();
    // Same database, keys and issuer: a second process behind the same load balancer.
    const second = await startTestServer({
      testDb: first.testDb, keysDir: first.keysDir, seed: null, env: { ISSUER: first.issuer, MTLS_BASE_URL: first.mtlsBaseUrl },
    });
    const port = (ts: typeof first) => ts.server.mtlsPort;
    try {
      const call = (ts: typeof first, path: string, params: Record<string, string>) => ts.fetch(`https://localhost:${port(ts)}${path}`, {
        method: 'POST',
        body: new URLSearchParams(params).toString(),
        headers: { ...form({}).headers, authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) },
      });
      const issued = await call(first, '/token', { grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' });
      assert.equal(issued.status, 200);
      const { access_token: token } = await issued.json() as { access_token: string };
      const active = async (ts: typeof first) => ((await (await call(ts, '/token/introspection', { token })).json()) as { active: boolean }).active;
      assert.equal(await active(second), true, 'the second instance knows the token the first issued');
      assert.equal((await call(second, '/token/revocation', { token })).status, 200);
      assert.equal(await active(first), false, 'a revocation through the second holds on the first');
      assert.equal(await active(second), false);
    } finally {
      await second.stop();
      await first.stop();
    }
  });
});
