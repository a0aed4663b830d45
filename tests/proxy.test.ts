// Forwarded headers count only from configured proxies; the per-client limit counts per source.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { ConfigError, loadConfig } from '../src/config.ts';
import { basicAuth, FHIR, form, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

function token(ts: TestServer, secret: string, forwardedFor?: string) {
  return ts.fetch(ts.endpoint("/token"), {
    method: 'POST',
    body: new URLSearchParams({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }).toString(),
    headers: { ...form({}).headers, authorization: basicAuth(SERVICE.client_id, secret), ...(forwardedFor ? { 'x-forwarded-for': forwardedFor } : {}) },
  });
}
async function lastSourceIp(ts: TestServer): Promise<string | null> {
  const { rows } = await ts.testDb.db.query<{ source_ip: string | null }>(
    "SELECT source_ip FROM audit_events WHERE type = 'client.authentication_failed' ORDER BY seq DESC LIMIT 1",
  );
  return rows[0]?.source_ip ?? null;
}

test('configuration: TRUST_PROXY needs TRUSTED_PROXIES; production refuses SEED_FILE', () => {
  assert.throws(() => loadConfig({ TRUST_PROXY: 'true' }), (e: Error) => e instanceof ConfigError && /TRUSTED_PROXIES/.test(e.message));
  assert.throws(() => loadConfig({ NODE_ENV: 'production', ISSUER: 'https://a.example', DATABASE_URL: 'postgres://db/a', SEED_FILE: 'seeds/demo.json' }),
    (e: Error) => e instanceof ConfigError && /SEED_FILE/.test(e.message));
  assert.equal(loadConfig({}).host, '127.0.0.1', 'development listens on loopback only');
});

describe('behind a trusted proxy', () => {
  let ts: TestServer;
  before(async () => {
    ts = await startTestServer({ env: { TRUST_PROXY: 'true', TRUSTED_PROXIES: '127.0.0.1/32,::1', RATE_LIMIT_CLIENT_POINTS: '3' } });
  });
  after(() => ts.stop());

  test('the client address is the right-most address the proxies did not add', async () => {
    assert.equal((await token(ts, 'wrong-secret-0123456789-0123456789', '203.0.113.7')).status, 401);
    assert.equal(await lastSourceIp(ts), '203.0.113.7');
    // A client cannot prepend its way out: the proxy appends the real address last.
    assert.equal((await token(ts, 'wrong-secret-0123456789-0123456789', '198.51.100.1, 203.0.113.9')).status, 401);
    assert.equal(await lastSourceIp(ts), '203.0.113.9');
  });

  test('wrong secrets from one address do not exhaust the real client elsewhere', async () => {
    for (let i = 0; i < 3; i += 1) assert.equal((await token(ts, 'wrong-secret-0123456789-0123456789', '203.0.113.50')).status, 401);
    const limited = await token(ts, 'wrong-secret-0123456789-0123456789', '203.0.113.50');
    assert.equal(limited.status, 429);
    assert.ok(Number(limited.headers.get('retry-after')) >= 1);
    assert.equal((await token(ts, SERVICE.client_secret, '203.0.113.51')).status, 200, 'the real client elsewhere is served');
  });
});

describe('from a peer that is not a trusted proxy', () => {
  let ts: TestServer;
  before(async () => { ts = await startTestServer({ env: { TRUST_PROXY: 'true', TRUSTED_PROXIES: '10.9.9.9' } }); });
  after(() => ts.stop());

  test('X-Forwarded-For is ignored and the TCP peer is recorded', async () => {
    assert.equal((await token(ts, 'wrong-secret-0123456789-0123456789', '203.0.113.7')).status, 401);
    assert.match(String(await lastSourceIp(ts)), /^(127\.0\.0\.1|::1)$/);
  });
});
