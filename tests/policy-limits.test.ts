// Zero-trust limits on what a token can be: audience only where the client has scopes, lifetimes
// capped by configuration, refresh chains with an absolute end, revocation without an oracle.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as oidc from 'openid-client';

import { relyingParty, signIn } from './support/relying-party.ts';
import {
  APP, basicAuth, FHIR, form, OTHER, PUBLIC_APP, SERVICE, startTestServer, TOOLS, type TestServer,
} from './support/test-server.ts';

let ts: TestServer;
before(async () => { ts = await startTestServer(); });
after(() => ts.stop());

function post(path: string, params: Record<string, string>, auth?: string) {
  return ts.fetch(ts.endpoint(path), {
    method: 'POST',
    body: new URLSearchParams(params).toString(),
    headers: { ...form({}).headers, ...(auth ? { authorization: auth } : {}) },
  });
}
const serviceAuth = () => basicAuth(SERVICE.client_id, SERVICE.client_secret);
const appAuth = () => basicAuth(APP.client_id, APP.client_secret);

async function signInWithRefreshToken() {
  const config = await relyingParty(ts);
  const { callback, checks } = await signIn(ts, config, { scope: 'openid offline_access patient/Observation.rs', prompt: 'consent' });
  const tokens = await oidc.authorizationCodeGrant(config, callback, checks, { resource: FHIR });
  return { config, tokens };
}

describe('audience and lifetime', () => {
  test('a resource server outside the client\'s scope ceiling is refused: 400 invalid_target', async () => {
    const res = await post('/token', { grant_type: 'client_credentials', resource: OTHER, scope: 'other/read' }, serviceAuth());
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: string }).error, 'invalid_target');
  });

  test('a resource server\'s longer token lifetime does not beat the configured cap', async () => {
    const res = await post('/token', { grant_type: 'client_credentials', resource: TOOLS, scope: 'tools/run' }, serviceAuth());
    assert.equal(res.status, 200);
    const body = await res.json() as { access_token: string; expires_in: number };
    assert.ok(body.expires_in <= 300, `expires_in ${body.expires_in}`);
    const payload = JSON.parse(Buffer.from(body.access_token.split('.')[1]!, 'base64url').toString()) as { exp: number; iat: number };
    assert.ok(payload.exp - payload.iat <= 300);
  });
});

describe('refresh and revocation', () => {
  test('a rotated refresh token keeps its predecessor\'s expiry (absolute lifetime)', async () => {
    const { config, tokens } = await signInWithRefreshToken();
    const first = await oidc.tokenIntrospection(config, tokens.refresh_token!);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token!, { resource: FHIR });
    const second = await oidc.tokenIntrospection(config, refreshed.refresh_token!);
    assert.equal(second.active, true);
    assert.ok(Math.abs(Number(second.exp) - Number(first.exp)) <= 1, `${first.exp} vs ${second.exp}`);
  });

  test('revoking an access token revokes the grant\'s tokens but keeps the grant (oidc-provider\'s revokeGrantPolicy)', async () => {
    const { config, tokens } = await signInWithRefreshToken();
    const grantId = (await ts.testDb.db.query<{ grant_id: string }>(
      "SELECT grant_id FROM oidc_payloads WHERE model = 'RefreshToken' ORDER BY expires_at DESC LIMIT 1",
    )).rows[0]!.grant_id;
    const grantCount = async () => (await ts.testDb.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM oidc_payloads WHERE model = 'Grant' AND id = $1", [grantId],
    )).rows[0]!.n;
    assert.equal(await grantCount(), 1);
    await oidc.tokenRevocation(config, tokens.access_token);
    assert.equal((await oidc.tokenIntrospection(config, tokens.access_token)).active, false);
    await assert.rejects(oidc.refreshTokenGrant(config, tokens.refresh_token!, { resource: FHIR }),
      (err: oidc.ResponseBodyError) => err.error === 'invalid_grant', 'tokens of the grant are revoked with it');
    assert.equal(await grantCount(), 1, 'the grant (the consent) itself stays');
    const { rows } = await ts.testDb.db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_events WHERE type = 'grant.revoked'");
    assert.equal(rows[0]!.n, 0, 'no grant revocation was recorded');
  });

  test('revoking a refresh token revokes the grant, recorded once', async () => {
    const { config, tokens } = await signInWithRefreshToken();
    const before = (await ts.testDb.db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_events WHERE type = 'grant.revoked'")).rows[0]!.n;
    await oidc.tokenRevocation(config, tokens.refresh_token!);
    assert.equal((await oidc.tokenIntrospection(config, tokens.access_token)).active, false, 'the grant\'s access token dies too');
    const after = (await ts.testDb.db.query<{ n: number }>("SELECT count(*)::int AS n FROM audit_events WHERE type = 'grant.revoked'")).rows[0]!.n;
    assert.equal(after - before, 1);
  });

  test('a public client cannot tell another client\'s live token from garbage at revocation', async () => {
    const { tokens } = await signInWithRefreshToken();
    const live = await post('/token/revocation', { token: tokens.refresh_token!, client_id: PUBLIC_APP.client_id });
    const garbage = await post('/token/revocation', { token: 'garbage-token-value', client_id: PUBLIC_APP.client_id });
    assert.equal(live.status, 200);
    assert.equal(garbage.status, 200);
    const still = await (await post('/token/introspection', { token: tokens.refresh_token! }, appAuth())).json() as { active: boolean };
    assert.equal(still.active, true, 'and the token was not revoked');
  });
});
