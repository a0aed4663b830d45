// The admin API for resource servers and token exchange policies, over real mTLS on a real database:
// who may call it, create (idempotent), read with ETag, list, replace with If-Match (stale → 412, none →
// 428), delete, each bad field named, no partial writes, the admin API's own resource server untouchable,
// a resource server still named by a policy or step-up rule not deletable, every change recorded, and the
// effect on tokens (format, lifetime, audience gone).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { findExchangePolicy } from '../src/exchange/policies.ts';
import { ACR_PHISHING_RESISTANT } from '../src/mfa/assurance.ts';
import { setStepUpRule } from '../src/mfa/step-up-rules.ts';
import { ADMIN, OPS_BOT, startAdminBench, type AdminBench } from './support/admin.ts';
import { FHIR, SERVICE } from './support/test-server.ts';

const ADMIN_RS = 'urn:clinical-authz:admin';
const TRIAGE = 'https://triage.hospital.test/api?v=2';
const rsPath = (id: string) => `/admin/api/resource-servers/${encodeURIComponent(id)}`;
const policyPath = (actor: string, audience: string) => `/admin/api/exchange-policies/${encodeURIComponent(actor)}/${encodeURIComponent(audience)}`;

describe('admin API: resource servers and exchange policies', () => {
  let bench: AdminBench;
  before(async () => { bench = await startAdminBench(); });
  after(async () => bench?.stop());

  const db = () => bench.ts.testDb.db;
  const call = (method: string, path: string, options: { body?: unknown; headers?: Record<string, string>; token?: string } = {}) =>
    bench.call(method, path, { token: bench.adminToken, ...options });

  async function lastChange(type: string) {
    const { rows: [event] } = await db().query<{ details: Record<string, unknown>; rule: string; severity: string; actor_client: string | null }>(
      'SELECT details, rule, severity, actor_client FROM audit_events WHERE type = $1 ORDER BY seq DESC LIMIT 1', [type],
    );
    assert.ok(event, `audit event ${type}`);
    const { rows: [change] } = await db().query<{ kind: string; target: string; before: Record<string, unknown> | null; after: Record<string, unknown> | null }>(
      'SELECT kind, target, before, after FROM admin_changes WHERE id = $1', [event.details.change_id],
    );
    return { event, change: change! };
  }

  /** client_credentials for test-service (ceiling `system/Patient.rs tools/run`) at `resource`. */
  async function serviceToken(resource: string) {
    const res = await bench.ts.fetch(bench.ts.endpoint('/token'), {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${SERVICE.client_id}:${SERVICE.client_secret}`).toString('base64')}`,
      },
      body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope: 'tools/run' }).toString(),
    });
    return { status: res.status, body: await res.json() as Record<string, unknown> };
  }

  async function expectInvalid(method: string, path: string, cases: Array<[Record<string, unknown>, string, RegExp]>, headers?: () => Record<string, string>) {
    for (const [body, field, description] of cases) {
      const res = await call(method, path, { body, ...(headers ? { headers: headers() } : {}) });
      assert.equal(res.status, 400, `${JSON.stringify(body)} → ${res.status} ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error, 'invalid_request', JSON.stringify(body));
      assert.equal(res.body.field, field, JSON.stringify(res.body));
      assert.ok(String(res.body.error_description).startsWith(field), `starts with ${field}: ${String(res.body.error_description)}`);
      assert.match(String(res.body.error_description), description);
    }
  }

  test('refusals: clinician (403), password-only admin (401), read-only token cannot write; automation may read', async () => {
    const clinician = await call('GET', '/admin/api/resource-servers', { token: bench.clinicianToken });
    assert.equal(clinician.status, 403);
    assert.equal(clinician.body.error, 'insufficient_scope');
    const passwordOnly = await call('GET', '/admin/api/exchange-policies', { token: bench.passwordAdminToken });
    assert.equal(passwordOnly.status, 401);
    assert.equal(passwordOnly.body.error, 'insufficient_user_authentication');

    const readOnly = await bench.userToken(ADMIN.username, ADMIN.password, 'admin:read', (o) => bench.adminKey.authenticate(o, { origin: new URL(bench.ts.issuer).origin }));
    assert.equal((await call('GET', '/admin/api/exchange-policies', { token: readOnly })).status, 200);
    for (const [method, path] of [['POST', '/admin/api/resource-servers'], ['PUT', rsPath(FHIR)], ['DELETE', rsPath(FHIR)], ['POST', '/admin/api/exchange-policies'], ['DELETE', policyPath(OPS_BOT, FHIR)]] as const) {
      const res = await call(method, path, { token: readOnly, body: {}, headers: { 'if-match': '*' } });
      assert.equal(res.status, 403, `${method} ${path}`);
      assert.equal(res.body.error, 'insufficient_scope');
    }
    const automation = await bench.call('GET', '/admin/api/resource-servers', { token: bench.automationToken, cert: bench.opsBotCert });
    assert.equal(automation.status, 200);
  });

  test('resource servers: list and read, create (idempotent), fields refused one by one, replace with If-Match, effect on tokens', async () => {
    const list = await call('GET', '/admin/api/resource-servers');
    assert.equal(list.status, 200);
    assert.match(list.headers.get('etag') ?? '', /^"[A-Za-z0-9_-]{27}"$/);
    const servers = list.body.resource_servers as Array<Record<string, unknown>>;
    assert.deepEqual(servers.find((s) => s.identifier === ADMIN_RS), {
      identifier: ADMIN_RS, name: 'Clinical AuthZ admin API', scope: 'admin:read admin:write', access_token_format: 'opaque',
      access_token_ttl: 300, introspection_client_id: null, protected: true,
    });
    assert.ok(servers.some((s) => s.identifier === FHIR && s.protected === false));
    const fhir = await call('GET', rsPath(FHIR));
    assert.equal(fhir.status, 200);
    assert.equal((fhir.body.resource_server as Record<string, unknown>).access_token_format, 'jwt');
    assert.ok(fhir.headers.get('etag'));
    assert.equal((await call('GET', rsPath('https://nowhere.test/'))).status, 404);
    assert.equal((await call('GET', `${rsPath(FHIR)}%00`)).status, 404);

    // The admin API's own resource server: readable, never changed or deleted here.
    const admin = await call('GET', rsPath(ADMIN_RS));
    assert.equal(admin.status, 200);
    for (const method of ['PUT', 'DELETE']) {
      const res = await call(method, rsPath(ADMIN_RS), { body: { name: 'mine now', scope: 'admin:write' }, headers: { 'if-match': admin.headers.get('etag')! } });
      assert.equal(res.status, 409, method);
      assert.equal(res.body.error, 'conflict');
      assert.match(String(res.body.error_description), /admin API's own resource server/);
    }

    const TRIAGE_RS = { identifier: TRIAGE, name: '  Triage tools ', scope: 'tools/run   system/Observation.read tools/run', access_token_format: 'opaque', access_token_ttl: 120, introspection_client_id: OPS_BOT };
    const created = await call('POST', '/admin/api/resource-servers', { body: TRIAGE_RS, headers: { 'idempotency-key': 'rs-triage-1' } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.headers.get('location'), rsPath(TRIAGE));
    assert.deepEqual(created.body.resource_server, {
      identifier: TRIAGE, name: 'Triage tools', scope: 'tools/run system/Observation.read', access_token_format: 'opaque',
      access_token_ttl: 120, introspection_client_id: OPS_BOT, protected: false,
    });
    const replay = await call('POST', '/admin/api/resource-servers', { body: TRIAGE_RS, headers: { 'idempotency-key': 'rs-triage-1' } });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(replay.body, created.body);
    assert.equal(replay.headers.get('etag'), created.headers.get('etag'));
    const duplicate = await call('POST', '/admin/api/resource-servers', { body: TRIAGE_RS });
    assert.equal(duplicate.status, 409);
    assert.equal(duplicate.body.error, 'conflict');
    const { event, change } = await lastChange('admin.resource_server_created');
    assert.equal(event.rule, 'admin_api');
    assert.equal(change.kind, 'resource_server');
    assert.equal(change.target, TRIAGE);
    assert.equal(change.before, null);
    assert.equal(change.after?.scope, 'tools/run system/Observation.read');

    // The new audience works at once: an opaque token for 120 s.
    const opaque = await serviceToken(TRIAGE);
    assert.equal(opaque.status, 200, JSON.stringify(opaque.body));
    assert.equal(opaque.body.expires_in, 120);
    assert.equal(opaque.body.scope, 'tools/run');
    assert.equal(String(opaque.body.access_token).split('.').length, 1, 'opaque');

    const fresh = { identifier: 'https://fresh.hospital.test/', name: 'Fresh', scope: 'fresh/use' };
    await expectInvalid('POST', '/admin/api/resource-servers', [
      [{ name: 'x', scope: 'a' }, 'identifier', /is required/],
      [{ ...fresh, identifier: 'not a uri' }, 'identifier', /absolute URI/],
      [{ ...fresh, identifier: 'https://fresh.hospital.test/#f' }, 'identifier', /without fragment/],
      [{ ...fresh, identifier: 42 }, 'identifier', /absolute URI/],
      [{ ...fresh, identifier: 'urn:clinical-authz:other' }, 'identifier', /reserved urn:clinical-authz: namespace/],
      [{ ...fresh, name: ' ' }, 'name', /1-200 characters/],
      [{ ...fresh, name: 'a\nb' }, 'name', /no control characters/],
      [{ ...fresh, name: 'n'.repeat(201) }, 'name', /1-200 characters/],
      [{ identifier: fresh.identifier, name: 'Fresh' }, 'scope', /is required/],
      [{ ...fresh, scope: '   ' }, 'scope', /at least one scope/],
      [{ ...fresh, scope: ['fresh/use'] }, 'scope', /space-separated list/],
      [{ ...fresh, scope: 'patient/Observaton.rs' }, 'scope', /invalid SMART scope: patient\/Observaton\.rs \(malformed: unknown FHIR R4 resource type/],
      [{ ...fresh, scope: 'user/Patient.xyz' }, 'scope', /invalid SMART scope/],
      [{ ...fresh, scope: 'fresh/use openid' }, 'scope', /OpenID Connect or SMART launch scope.*openid/],
      [{ ...fresh, scope: 'Observation.rs' }, 'scope', /resource scope needs patient\/, user\/ or system\//],
      [{ ...fresh, scope: 'fresh/"use"' }, 'scope', /character not allowed/],
      [{ ...fresh, access_token_format: 'paseto' }, 'access_token_format', /jwt or opaque/],
      [{ ...fresh, access_token_ttl: 0 }, 'access_token_ttl', /1 to 3600/],
      [{ ...fresh, access_token_ttl: 3601 }, 'access_token_ttl', /1 to 3600/],
      [{ ...fresh, access_token_ttl: '300' }, 'access_token_ttl', /whole number/],
      [{ ...fresh, access_token_ttl: 1.5 }, 'access_token_ttl', /whole number/],
      [{ ...fresh, introspection_client_id: 'ghost-client' }, 'introspection_client_id', /names no registered client: ghost-client/],
      [{ ...fresh, introspection_client_id: 7 }, 'introspection_client_id', /registered client id/],
      [{ ...fresh, audience: 'x' }, 'audience', /is not a resource server field/],
    ]);
    assert.equal((await call('POST', '/admin/api/resource-servers', { body: '[1]' })).status, 400);
    assert.equal((await call('POST', '/admin/api/resource-servers', { body: 'x', headers: { 'content-type': 'text/plain' } })).status, 415);
    assert.equal((await db().query('SELECT 1 FROM resource_servers WHERE identifier LIKE $1', ['%fresh%'])).rows.length, 0, 'no partial write');

    // Replace: If-Match required, stale refused, identifier fixed, omitted optional fields back to defaults.
    const read = await call('GET', rsPath(TRIAGE));
    const etag = read.headers.get('etag')!;
    assert.equal(etag, created.headers.get('etag'));
    const replacement = { ...(read.body.resource_server as Record<string, unknown>), access_token_format: 'jwt', access_token_ttl: 60, introspection_client_id: null };
    const noPrecondition = await call('PUT', rsPath(TRIAGE), { body: replacement });
    assert.equal(noPrecondition.status, 428);
    assert.equal(noPrecondition.body.error, 'precondition_required');
    await expectInvalid('PUT', rsPath(TRIAGE), [
      [{ ...replacement, identifier: 'https://elsewhere.test/' }, 'identifier', /cannot be changed/],
      [{ ...replacement, protected: true }, 'protected', /read-only/],
      [{ ...replacement, access_token_ttl: 7200 }, 'access_token_ttl', /1 to 3600/],
      [{ ...replacement, scope: 'launch/patient' }, 'scope', /SMART launch scope/],
    ], () => ({ 'if-match': etag }));
    const updated = await call('PUT', rsPath(TRIAGE), { body: replacement, headers: { 'if-match': etag } });
    assert.equal(updated.status, 200, JSON.stringify(updated.body));
    assert.deepEqual(updated.body.resource_server, { ...replacement, protected: false });
    assert.notEqual(updated.headers.get('etag'), etag);
    const stale = await call('PUT', rsPath(TRIAGE), { body: { ...replacement, name: 'Lost update' }, headers: { 'if-match': etag } });
    assert.equal(stale.status, 412);
    assert.equal(stale.body.error, 'precondition_failed');
    const defaults = await call('PUT', rsPath(TRIAGE), { body: { name: 'Triage tools', scope: 'tools/run system/Observation.read' }, headers: { 'if-match': updated.headers.get('etag')! } });
    assert.equal(defaults.status, 200);
    assert.equal((defaults.body.resource_server as Record<string, unknown>).access_token_ttl, null);
    const back = await call('PUT', rsPath(TRIAGE), { body: replacement, headers: { 'if-match': defaults.headers.get('etag')! } });
    assert.equal(back.status, 200);
    const changed = await lastChange('admin.resource_server_updated');
    assert.deepEqual(changed.event.details.fields, ['access_token_ttl']);

    const jwt = await serviceToken(TRIAGE);
    assert.equal(jwt.status, 200, JSON.stringify(jwt.body));
    assert.equal(jwt.body.expires_in, 60);
    const claims = JSON.parse(Buffer.from(String(jwt.body.access_token).split('.')[1]!, 'base64url').toString()) as { aud: unknown };
    assert.equal(claims.aud, TRIAGE);
  });

  test('exchange policies: create (idempotent), fields refused one by one, list, replace, delete; a referenced resource server stays', async () => {
    const POLICY = { actor_client_id: OPS_BOT, audience: TRIAGE, subject_client_ids: ['test-app', 'test-app'], subject_roles: ['clinician'], scope: 'system/Observation.read' };
    const created = await call('POST', '/admin/api/exchange-policies', { body: POLICY, headers: { 'idempotency-key': 'policy-1' } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.equal(created.headers.get('location'), policyPath(OPS_BOT, TRIAGE));
    const expected = {
      actor_client_id: OPS_BOT, audience: TRIAGE, subject_client_ids: ['test-app'], subject_roles: ['clinician'], scope: 'system/Observation.rs',
      max_ttl_seconds: 300, max_depth: 1, allow_break_glass: false,
    };
    assert.deepEqual(created.body.exchange_policy, expected);
    const replay = await call('POST', '/admin/api/exchange-policies', { body: POLICY, headers: { 'idempotency-key': 'policy-1' } });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(replay.body, created.body);
    const duplicate = await call('POST', '/admin/api/exchange-policies', { body: { ...POLICY, scope: 'system/Observation.r' } });
    assert.equal(duplicate.status, 409);
    assert.equal(duplicate.body.error, 'conflict');
    const recorded = await lastChange('admin.exchange_policy_created');
    assert.equal(recorded.event.actor_client, 'admin-tool');
    assert.equal(recorded.event.severity, 'warning');
    assert.deepEqual(recorded.change.after, expected);

    const second = { ...POLICY, audience: FHIR, subject_roles: [], scope: 'patient/Observation.rs' };
    await expectInvalid('POST', '/admin/api/exchange-policies', [
      [{ ...second, actor_client_id: undefined }, 'actor_client_id', /is required/],
      [{ ...second, actor_client_id: 'x' }, 'actor_client_id', /invalid actor client id: 3-128 characters/],
      [{ ...second, actor_client_id: 'ghost-client' }, 'actor_client_id', /unknown actor client ghost-client/],
      [{ ...second, audience: undefined }, 'audience', /is required/],
      [{ ...second, audience: '/relative' }, 'audience', /absolute URL without fragment/],
      [{ ...second, audience: 'https://nowhere.test/' }, 'audience', /unknown audience .* \(not a registered resource server\)/],
      [{ ...second, audience: ADMIN_RS }, 'audience', /never a token exchange audience/],
      [{ ...second, subject_client_ids: ['ghost-client'] }, 'subject_client_ids', /unknown subject client ghost-client/],
      [{ ...second, subject_client_ids: 'test-app' }, 'subject_client_ids', /a list of at most 100/],
      [{ ...second, subject_client_ids: [], subject_roles: [] }, 'subject_client_ids', /at least one subject client or subject role/],
      [{ ...second, subject_roles: ['Head Nurse'] }, 'subject_roles', /invalid subject role/],
      [{ ...second, scope: undefined }, 'scope', /is required/],
      [{ ...second, scope: 'openid patient/Observation.rs' }, 'scope', /not a SMART resource scope.*'openid'/],
      [{ ...second, scope: 'patient/Observaton.rs' }, 'scope', /invalid SMART scope: unknown FHIR R4 resource type/],
      [{ ...second, scope: 7 }, 'scope', /invalid scope/],
      [{ ...second, max_ttl_seconds: 3601 }, 'max_ttl_seconds', /from 1 to 3600/],
      [{ ...second, max_ttl_seconds: null }, 'max_ttl_seconds', /whole number/],
      [{ ...second, max_depth: 6 }, 'max_depth', /from 1 to 5/],
      [{ ...second, allow_break_glass: 'yes' }, 'allow_break_glass', /true or false/],
      [{ ...second, actor: OPS_BOT }, 'actor', /not an exchange policy field/],
    ].map(([body, field, description]) => [JSON.parse(JSON.stringify(body)), field, description] as [Record<string, unknown>, string, RegExp]));
    assert.equal(await findExchangePolicy(db(), OPS_BOT, FHIR), undefined, 'no partial write');

    const fhirPolicy = await call('POST', '/admin/api/exchange-policies', { body: { ...second, max_ttl_seconds: 600, max_depth: 2 } });
    assert.equal(fhirPolicy.status, 201, JSON.stringify(fhirPolicy.body));
    const all = await call('GET', '/admin/api/exchange-policies');
    assert.deepEqual((all.body.exchange_policies as Array<{ audience: string }>).map((p) => p.audience), [FHIR, TRIAGE]);
    assert.ok(all.headers.get('etag'));
    const byAudience = await call('GET', `/admin/api/exchange-policies?actor=${OPS_BOT}&audience=${encodeURIComponent(TRIAGE)}`);
    assert.deepEqual(byAudience.body.exchange_policies, [expected]);
    assert.deepEqual((await call('GET', '/admin/api/exchange-policies?actor=nobody-here')).body.exchange_policies, []);
    const badActor = await call('GET', '/admin/api/exchange-policies?actor=x');
    assert.equal(badActor.status, 400);
    assert.match(String(badActor.body.error_description), /^actor: must be a client id/);
    const read = await call('GET', policyPath(OPS_BOT, TRIAGE));
    assert.equal(read.status, 200);
    assert.deepEqual(read.body.exchange_policy, expected);
    assert.equal(read.headers.get('etag'), created.headers.get('etag'));
    assert.equal((await call('GET', policyPath(OPS_BOT, 'https://nowhere.test/'))).status, 404);
    assert.equal((await call('GET', policyPath('ghost-client', TRIAGE))).status, 404);

    // Replace whole: If-Match, stale refused, key fixed, the policy module's normalisation applies.
    const etag = read.headers.get('etag')!;
    const replacement = { ...expected, scope: 'system/Observation.rs system/Patient.read', subject_roles: [], allow_break_glass: true };
    assert.equal((await call('PUT', policyPath(OPS_BOT, TRIAGE), { body: replacement })).status, 428);
    await expectInvalid('PUT', policyPath(OPS_BOT, TRIAGE), [
      [{ ...replacement, audience: FHIR }, 'audience', /cannot be changed/],
      [{ ...replacement, actor_client_id: 'test-service' }, 'actor_client_id', /cannot be changed/],
      [{ ...replacement, max_depth: 0 }, 'max_depth', /from 1 to 5/],
    ], () => ({ 'if-match': etag }));
    const updated = await call('PUT', policyPath(OPS_BOT, TRIAGE), { body: replacement, headers: { 'if-match': etag } });
    assert.equal(updated.status, 200, JSON.stringify(updated.body));
    assert.deepEqual(updated.body.exchange_policy, { ...replacement, scope: 'system/Observation.rs system/Patient.rs' });
    assert.equal((await findExchangePolicy(db(), OPS_BOT, TRIAGE))?.allowBreakGlass, true, 'what the exchange grant reads');
    const stale = await call('PUT', policyPath(OPS_BOT, TRIAGE), { body: expected, headers: { 'if-match': etag } });
    assert.equal(stale.status, 412);
    const { event, change } = await lastChange('admin.exchange_policy_updated');
    assert.equal(event.severity, 'high', 'break-glass exchange allowed');
    assert.deepEqual(event.details.fields, ['allow_break_glass', 'scope', 'subject_roles']);
    assert.equal(change.target, `${OPS_BOT} ${TRIAGE}`);
    // Without its key fields in the body, and omitted optional fields back to their defaults.
    const minimal = await call('PUT', policyPath(OPS_BOT, TRIAGE), { body: { subject_client_ids: ['test-app'], scope: 'system/Observation.rs' }, headers: { 'if-match': updated.headers.get('etag')! } });
    assert.equal(minimal.status, 200);
    assert.deepEqual(minimal.body.exchange_policy, { ...expected, subject_roles: [] });

    // The resource server cannot go while a policy and a step-up rule name it.
    await setStepUpRule(db(), { audience: TRIAGE, acrValues: [ACR_PHISHING_RESISTANT] });
    const rs = await call('GET', rsPath(TRIAGE));
    const referenced = await call('DELETE', rsPath(TRIAGE), { headers: { 'if-match': rs.headers.get('etag')! } });
    assert.equal(referenced.status, 409);
    assert.equal(referenced.body.error, 'conflict');
    assert.match(String(referenced.body.error_description), /still the audience of 1 exchange policy \(actor ops-bot\) and 1 step-up rule/);

    // Delete the policy: If-Match, stale refused, then gone.
    assert.equal((await call('DELETE', policyPath(OPS_BOT, TRIAGE))).status, 428);
    assert.equal((await call('DELETE', policyPath(OPS_BOT, TRIAGE), { headers: { 'if-match': etag } })).status, 412);
    const deleted = await call('DELETE', policyPath(OPS_BOT, TRIAGE), { headers: { 'if-match': minimal.headers.get('etag')! } });
    assert.equal(deleted.status, 204);
    assert.equal((await call('GET', policyPath(OPS_BOT, TRIAGE))).status, 404);
    assert.equal(await findExchangePolicy(db(), OPS_BOT, TRIAGE), undefined);
    const gone = await lastChange('admin.exchange_policy_deleted');
    assert.deepEqual(gone.change.before, { ...expected, subject_roles: [] });
    assert.equal(gone.change.after, null);
    assert.equal((await call('DELETE', policyPath(OPS_BOT, TRIAGE), { headers: { 'if-match': '*' } })).status, 404);

    const stillRule = await call('DELETE', rsPath(TRIAGE), { headers: { 'if-match': rs.headers.get('etag')! } });
    assert.equal(stillRule.status, 409);
    assert.match(String(stillRule.body.error_description), /audience of 1 step-up rule: remove those first/);
    await db().query('DELETE FROM step_up_rules WHERE audience = $1', [TRIAGE]);
    assert.equal((await call('DELETE', rsPath(TRIAGE))).status, 428);
    assert.equal((await call('DELETE', rsPath(TRIAGE), { headers: { 'if-match': '"stale"' } })).status, 412);
    const removed = await call('DELETE', rsPath(TRIAGE), { headers: { 'if-match': rs.headers.get('etag')! } });
    assert.equal(removed.status, 204);
    assert.equal((await call('GET', rsPath(TRIAGE))).status, 404);
    const rsGone = await lastChange('admin.resource_server_deleted');
    assert.equal(rsGone.event.severity, 'high');
    assert.equal(rsGone.change.before?.identifier, TRIAGE);
    // No token for an audience that is gone; and a policy cannot name it any more.
    const refused = await serviceToken(TRIAGE);
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error, 'invalid_target');
    const orphan = await call('POST', '/admin/api/exchange-policies', { body: POLICY });
    assert.equal(orphan.status, 400);
    assert.equal(orphan.body.field, 'audience');
    assert.equal((await call('DELETE', rsPath(TRIAGE), { headers: { 'if-match': '*' } })).status, 404);
  });
});
