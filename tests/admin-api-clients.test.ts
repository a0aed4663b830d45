// The admin API over real mTLS: who may call it (and the exact refusals), and /admin/api/clients end to
// end: create (idempotent), read with ETag, list and search, update with If-Match (stale → 412), metadata
// errors field by field, disable (everything issued revoked), enable, secret rotation, certificate
// subject replacement; every change recorded with a redacted before/after.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { startAdminBench, OPS_BOT, type AdminBench } from './support/admin.ts';

describe('admin API: authentication and clients', () => {
  let bench: AdminBench;
  before(async () => { bench = await startAdminBench(); });
  after(async () => bench?.stop());

  const WEB_CLIENT = {
    client_id: 'ward-dashboard', client_name: 'Ward dashboard', grant_types: ['authorization_code', 'refresh_token'],
    redirect_uris: ['https://ward.hospital.test/callback'], scope: 'openid fhirUser launch/patient', resource_scope: 'patient/Observation.rs',
  };

  async function lastChange(type: string) {
    const { rows: [event] } = await bench.ts.testDb.db.query<{ details: Record<string, unknown>; rule: string; actor_user: string | null; actor_client: string | null; severity: string }>(
      'SELECT details, rule, actor_user, actor_client, severity FROM audit_events WHERE type = $1 ORDER BY seq DESC LIMIT 1', [type],
    );
    assert.ok(event, `audit event ${type}`);
    const { rows: [change] } = await bench.ts.testDb.db.query<{ before: unknown; after: unknown }>(
      'SELECT before, after FROM admin_changes WHERE id = $1', [event.details.change_id],
    );
    return { event, change: change! };
  }

  test('refusals: no token, a foreign token, a clinician, a password-only admin, a secret-authenticated bot, another certificate, read-only scope', async () => {
    const none = await bench.call('GET', '/admin/api/clients');
    assert.equal(none.status, 401);
    assert.match(none.headers.get('www-authenticate') ?? '', /^Bearer realm="admin", error="invalid_token"/);

    const garbage = await bench.call('GET', '/admin/api/clients', { token: 'not-a-token' });
    assert.equal(garbage.status, 401);
    assert.equal(garbage.body.error, 'invalid_token');

    const clinician = await bench.call('GET', '/admin/api/clients', { token: bench.clinicianToken });
    assert.equal(clinician.status, 403);
    assert.equal(clinician.body.error, 'insufficient_scope');
    assert.match(String(clinician.body.error_description), /admin role/);

    const passwordOnly = await bench.call('GET', '/admin/api/clients', { token: bench.passwordAdminToken });
    assert.equal(passwordOnly.status, 401);
    assert.equal(passwordOnly.body.error, 'insufficient_user_authentication');
    assert.match(passwordOnly.headers.get('www-authenticate') ?? '', /acr_values="urn:clinical-authz:acr:phr"/);

    const secretBot = await bench.call('GET', '/admin/api/clients', { token: bench.secretBotToken });
    assert.equal(secretBot.status, 403);
    assert.match(String(secretBot.body.error_description), /mTLS/);

    // The admin's token is bound to the test client certificate: presented with ops-bot's, it is refused.
    const otherCert = await bench.call('GET', '/admin/api/clients', { token: bench.adminToken, cert: bench.opsBotCert });
    assert.equal(otherCert.status, 401);
    assert.match(String(otherCert.body.error_description), /bound to another client certificate/);

    const readOnly = await bench.userToken('dr.admin', 'admin-password-123456', 'admin:read', (o) => bench.adminKey.authenticate(o, { origin: new URL(bench.ts.issuer).origin }));
    assert.equal((await bench.call('GET', '/admin/api/clients', { token: readOnly })).status, 200);
    const write = await bench.call('POST', '/admin/api/clients', { token: readOnly, body: WEB_CLIENT });
    assert.equal(write.status, 403);
    assert.equal(write.body.error, 'insufficient_scope');
    assert.match(write.headers.get('www-authenticate') ?? '', /scope="admin:write"/);

    // An administrator's passkey sign-in older than 15 minutes (a refresh token could otherwise stretch it).
    const { ADMIN, ADMIN_TOOL } = await import('./support/admin.ts');
    const stale = await bench.mint({ clientId: ADMIN_TOOL.client_id, username: ADMIN.username, acr: 'urn:clinical-authz:acr:phr', authTime: Math.floor(Date.now() / 1000) - 901 });
    const staleAnswer = await bench.call('GET', '/admin/api/clients', { token: stale });
    assert.equal(staleAnswer.status, 401);
    assert.equal(staleAnswer.body.error, 'insufficient_user_authentication');
    assert.match(staleAnswer.headers.get('www-authenticate') ?? '', /max_age="900"/);
    const fresh = await bench.mint({ clientId: ADMIN_TOOL.client_id, username: ADMIN.username, acr: 'urn:clinical-authz:acr:phr' });
    assert.equal((await bench.call('GET', '/admin/api/clients', { token: fresh })).status, 200);
    // A delegated (exchanged) token never administers, even the administrator's own.
    const delegated = await bench.mint({ clientId: ADMIN_TOOL.client_id, username: ADMIN.username, acr: 'urn:clinical-authz:acr:phr', act: { sub: 'orchestrator' } });
    const delegatedAnswer = await bench.call('GET', '/admin/api/clients', { token: delegated });
    assert.equal(delegatedAnswer.status, 401);
    assert.match(String(delegatedAnswer.body.error_description), /delegated/);

    const automation = await bench.call('GET', '/admin/api/clients', { token: bench.automationToken, cert: bench.opsBotCert });
    assert.equal(automation.status, 200, JSON.stringify(automation.body));
    assert.equal((await bench.call('GET', '/admin/api/nothing-here', { token: bench.adminToken })).status, 404);
  });

  test('issuance: admin tokens only for administrators with a passkey, or mTLS automation clients', async () => {
    const { Browser } = await import('./support/login-flow.ts');
    const oidc = await import('openid-client');
    const { relyingParty } = await import('./support/relying-party.ts');
    const { ADMIN_TOOL, PASSWORD_ADMIN, SECRET_BOT } = await import('./support/admin.ts');
    const tool = await relyingParty(bench.ts, ADMIN_TOOL.client_id, ADMIN_TOOL.client_secret);
    const url = async () => oidc.buildAuthorizationUrl(tool, {
      redirect_uri: ADMIN_TOOL.redirect_uri, scope: 'openid admin:write', resource: 'urn:clinical-authz:admin', state: 's', prompt: 'consent',
      code_challenge: await oidc.calculatePKCECodeChallenge(oidc.randomPKCECodeVerifier()), code_challenge_method: 'S256',
    });
    // A clinician, even with a passkey: refused at the authorization endpoint, back to the app with access_denied.
    const { enrolPasskey } = await import('./support/login-flow.ts');
    const { SoftAuthenticator } = await import('./support/soft-authenticator.ts');
    const origin = new URL(bench.ts.issuer).origin;
    const clinicianKey = new SoftAuthenticator();
    await enrolPasskey(bench.ts, 'dr.test', 'test-password-123456', (o) => clinicianKey.register(o, { origin }));
    const clinician = new Browser(bench.ts);
    let step = await clinician.signIn(await clinician.follow(await clinician.get(await url())), 'dr.test', 'test-password-123456',
      (o) => clinicianKey.authenticate(o, { origin }));
    assert.ok(step.location, `${step.status} ${step.body.slice(0, 400)}`);
    const denied = new URL(step.location!);
    assert.equal(denied.searchParams.get('error'), 'access_denied');
    assert.match(denied.searchParams.get('error_description') ?? '', /admin role is required/);
    // An administrator without a passkey: the step-up rule on the admin audience stops at the passkey page.
    const pwAdmin = new Browser(bench.ts);
    step = await pwAdmin.signIn(await pwAdmin.follow(await pwAdmin.get(await url())), PASSWORD_ADMIN.username, PASSWORD_ADMIN.password);
    assert.equal(step.location, null);
    assert.match(step.body, /A passkey is required/);
    // A secret-authenticated client: no admin token by client credentials.
    const res = await bench.ts.fetch(`${bench.ts.mtlsBaseUrl}/token`, {
      method: 'POST', body: new URLSearchParams({ grant_type: 'client_credentials', resource: 'urn:clinical-authz:admin', scope: 'admin:read' }).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: `Basic ${Buffer.from(`${SECRET_BOT.client_id}:${SECRET_BOT.client_secret}`).toString('base64')}` },
    });
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { error: string }).error, 'invalid_target');
  });

  test('create: secret once and hashed, idempotent replay, conflicts and metadata errors name the field', async () => {
    const created = await bench.call('POST', '/admin/api/clients', { token: bench.adminToken, body: WEB_CLIENT, headers: { 'idempotency-key': 'create-ward-1' } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const secret = String(created.body.client_secret);
    assert.ok(secret.length >= 32);
    assert.equal(created.headers.get('location'), '/admin/api/clients/ward-dashboard');
    const client = created.body.client as Record<string, unknown>;
    assert.equal(client.client_secret, undefined);
    assert.equal(client.has_client_secret, true);
    const { rows: [stored] } = await bench.ts.testDb.db.query<{ secret: string }>("SELECT metadata->>'client_secret' AS secret FROM clients WHERE client_id = 'ward-dashboard'");
    assert.match(stored!.secret, /^hmac-sha256:/);

    const replay = await bench.call('POST', '/admin/api/clients', { token: bench.adminToken, body: WEB_CLIENT, headers: { 'idempotency-key': 'create-ward-1' } });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(replay.body.client, created.body.client, 'the first result again');
    assert.equal(replay.body.client_secret, undefined, 'the secret was shown once and is not stored');
    assert.equal(replay.headers.get('etag'), created.headers.get('etag'));
    const reused = await bench.call('POST', '/admin/api/clients', { token: bench.adminToken, body: { ...WEB_CLIENT, client_name: 'Other' }, headers: { 'idempotency-key': 'create-ward-1' } });
    assert.equal(reused.status, 422);
    const again = await bench.call('POST', '/admin/api/clients', { token: bench.adminToken, body: WEB_CLIENT });
    assert.equal(again.status, 409);
    assert.equal(again.body.error, 'conflict');

    const invalid: Array<[Record<string, unknown>, string, RegExp]> = [
      [{ redirect_uris: ['http://ward.hospital.test/cb'] }, 'invalid_redirect_uri', /^redirect_uris must use https/],
      [{ redirect_uris: ['https://*.hospital.test/cb'] }, 'invalid_redirect_uri', /^redirect_uris must be exact/],
      [{ redirect_uris: ['https://ward.hospital.test/cb#x'] }, 'invalid_redirect_uri', /^redirect_uris must not contain fragments/],
      [{ jwks_uri: 'http://keys.hospital.test/jwks', token_endpoint_auth_method: 'private_key_jwt' }, 'invalid_client_metadata', /^jwks_uri must use https/],
      [{ resource_scope: 'patient/Observaton.rs' }, 'invalid_client_metadata', /^resource_scope has an invalid SMART scope/],
      [{ grant_types: ['urn:ietf:params:oauth:grant-type:token-exchange'], response_types: [], redirect_uris: [] }, 'invalid_client_metadata', /^token_endpoint_auth_method must be tls_client_auth/],
      [{ token_endpoint_auth_method: 'none', grant_types: ['authorization_code', 'refresh_token'] }, 'invalid_client_metadata', /^grant_types: a public client gets refresh tokens only when they are bound/],
      [{ client_secret: 'short' }, 'invalid_client_metadata', /client_secret/],
    ];
    for (const [change, error, description] of invalid) {
      const res = await bench.call('POST', '/admin/api/clients', { token: bench.adminToken, body: { ...WEB_CLIENT, client_id: 'bad-one', ...change } });
      assert.equal(res.status, 400, `${JSON.stringify(change)} → ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error, error, JSON.stringify(change));
      assert.match(String(res.body.error_description), description);
    }
    assert.equal((await bench.call('POST', '/admin/api/clients', { token: bench.adminToken, body: '{"not json' })).status, 400);
    assert.equal((await bench.call('POST', '/admin/api/clients', { token: bench.adminToken, body: 'x', headers: { 'content-type': 'text/plain' } })).status, 415);
    const { rows } = await bench.ts.testDb.db.query("SELECT 1 FROM clients WHERE client_id = 'bad-one'");
    assert.equal(rows.length, 0, 'no partial write');

    const { event, change } = await lastChange('admin.client_created');
    assert.equal(event.rule, 'admin_api');
    assert.equal(change.before, null);
    assert.equal((change.after as Record<string, unknown>).client_id, 'ward-dashboard');
    const { rows: all } = await bench.ts.testDb.db.query<{ row: string }>("SELECT to_jsonb(a)::text AS row FROM audit_events a UNION ALL SELECT to_jsonb(c)::text FROM admin_changes c");
    assert.ok(all.every((r) => !r.row.includes(secret)), 'the secret is nowhere in the audit log or change records');
  });

  test('read, list, search; update with If-Match; a stale If-Match is refused (412), none at all 428', async () => {
    const read = await bench.call('GET', '/admin/api/clients/ward-dashboard', { token: bench.adminToken });
    assert.equal(read.status, 200);
    const etag = read.headers.get('etag')!;
    assert.match(etag, /^"[A-Za-z0-9_-]{27}"$/);
    assert.equal((await bench.call('GET', '/admin/api/clients/nobody', { token: bench.adminToken })).status, 404);
    const listed = await bench.call('GET', '/admin/api/clients?search=WARD', { token: bench.adminToken });
    assert.deepEqual((listed.body.clients as Array<{ client_id: string }>).map((c) => c.client_id), ['ward-dashboard']);
    assert.equal((await bench.call('GET', '/admin/api/clients?limit=0', { token: bench.adminToken })).status, 400);

    const { client_id: _id, has_client_secret: _s, disabled: _d, disabled_at: _da, created_at: _c, updated_at: _u, ...metadata } = read.body.client as Record<string, unknown>;
    const noPrecondition = await bench.call('PUT', '/admin/api/clients/ward-dashboard', { token: bench.adminToken, body: { ...metadata, client_name: 'Ward board' } });
    assert.equal(noPrecondition.status, 428);
    const anyVersion = await bench.call('PUT', '/admin/api/clients/ward-dashboard', { token: bench.adminToken, body: { ...metadata, client_name: 'Ward board' }, headers: { 'if-match': '*' } });
    assert.equal(anyVersion.status, 428, 'If-Match: * would be a silent overwrite');
    const first = await bench.call('PUT', '/admin/api/clients/ward-dashboard', { token: bench.adminToken, body: { ...metadata, client_name: 'Ward board' }, headers: { 'if-match': etag } });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.equal((first.body.client as Record<string, unknown>).client_name, 'Ward board');
    assert.notEqual(first.headers.get('etag'), etag);
    // A second admin who read the same version cannot silently overwrite the first one's change.
    const second = await bench.call('PUT', '/admin/api/clients/ward-dashboard', { token: bench.adminToken, body: { ...metadata, client_name: 'Ward screen' }, headers: { 'if-match': etag } });
    assert.equal(second.status, 412);
    assert.equal(second.body.error, 'precondition_failed');
    const bad = await bench.call('PUT', '/admin/api/clients/ward-dashboard', { token: bench.adminToken, body: { ...metadata, redirect_uris: ['http://x.test/cb'] }, headers: { 'if-match': first.headers.get('etag')! } });
    assert.equal(bad.body.error, 'invalid_redirect_uri');
    const secretChange = await bench.call('PUT', '/admin/api/clients/ward-dashboard', { token: bench.adminToken, body: { ...metadata, client_secret: 'x'.repeat(40) }, headers: { 'if-match': first.headers.get('etag')! } });
    assert.equal(secretChange.status, 400);
    assert.match(String(secretChange.body.error_description), /^client_secret cannot be changed here/);

    const { event, change } = await lastChange('admin.client_updated');
    assert.deepEqual(event.details.fields, ['client_name', 'updated_at']);
    assert.equal((change.before as Record<string, unknown>).client_name, 'Ward dashboard');
    assert.equal((change.after as Record<string, unknown>).client_name, 'Ward board');
  });

  test('rotate the secret, replace the certificate subject, disable (tokens revoked) and enable', async () => {
    const read = async (id: string) => bench.call('GET', `/admin/api/clients/${id}`, { token: bench.adminToken });
    let current = await read('ward-dashboard');
    const rotated = await bench.call('POST', '/admin/api/clients/ward-dashboard/secret', { token: bench.adminToken, headers: { 'if-match': current.headers.get('etag')! } });
    assert.equal(rotated.status, 200, JSON.stringify(rotated.body));
    assert.ok(String(rotated.body.client_secret).length >= 32);
    assert.equal((await lastChange('admin.client_secret_rotated')).event.severity, 'high');

    current = await read(OPS_BOT);
    const noSecret = await bench.call('POST', `/admin/api/clients/${OPS_BOT}/secret`, { token: bench.adminToken, headers: { 'if-match': current.headers.get('etag')! } });
    assert.equal(noSecret.status, 400);
    const wrongField = await bench.call('PUT', `/admin/api/clients/${OPS_BOT}/credentials`, { token: bench.adminToken, body: { client_name: 'x' }, headers: { 'if-match': current.headers.get('etag')! } });
    assert.equal(wrongField.status, 400);
    assert.match(String(wrongField.body.error_description), /^client_name is not a credential field/);
    const replaced = await bench.call('PUT', `/admin/api/clients/${OPS_BOT}/credentials`, { token: bench.adminToken, body: { tls_client_auth_subject_dn: 'CN=ops-bot-2' }, headers: { 'if-match': current.headers.get('etag')! } });
    assert.equal(replaced.status, 200, JSON.stringify(replaced.body));
    assert.equal((replaced.body.client as Record<string, unknown>).tls_client_auth_subject_dn, 'CN=ops-bot-2');
    // ops-bot's certificate (CN=ops-bot) no longer names the client: it cannot get a token any more.
    const form = new URLSearchParams({ grant_type: 'client_credentials', client_id: OPS_BOT, resource: 'urn:clinical-authz:admin', scope: 'admin:read' });
    const { Agent, fetch } = await import('undici');
    const agent = new Agent({ connect: { ca: bench.ts.caPem, cert: bench.opsBotCert.certPem, key: bench.opsBotCert.keyPem } });
    const refused = await fetch(`${bench.ts.mtlsBaseUrl}/token`, { method: 'POST', body: form.toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' }, dispatcher: agent });
    assert.equal(refused.status, 401);
    assert.equal(((await refused.json()) as { error: string }).error, 'invalid_client');
    await agent.close();

    // Disabling the automation client revokes its live token at once.
    current = await read(OPS_BOT);
    const disabled = await bench.call('POST', `/admin/api/clients/${OPS_BOT}/disable`, { token: bench.adminToken, headers: { 'if-match': current.headers.get('etag')! } });
    assert.equal(disabled.status, 200, JSON.stringify(disabled.body));
    assert.ok(Number(disabled.body.revoked) >= 1);
    assert.equal((disabled.body.client as Record<string, unknown>).disabled, true);
    const afterDisable = await bench.call('GET', '/admin/api/clients', { token: bench.automationToken, cert: bench.opsBotCert });
    assert.equal(afterDisable.status, 401);
    current = await read(OPS_BOT);
    const enabled = await bench.call('POST', `/admin/api/clients/${OPS_BOT}/enable`, { token: bench.adminToken, headers: { 'if-match': current.headers.get('etag')! } });
    assert.equal((enabled.body.client as Record<string, unknown>).disabled, false);
  });
});
