// The admin API for users, care teams and launch contexts over real mTLS: create (password write-only,
// idempotent), read with ETag, list / search / lookup by username, update with If-Match (428, 412),
// disable (sessions, grants and tokens gone) and enable, unlock (failed-login lock), passkey reset,
// the break-glass switch; care-team memberships (add idempotent, end with If-Match); EHR launch values
// shown once. Every change recorded; no password, launch value or raw patient id in the audit log or
// change records; every bad field refused with a 400 naming it, and nothing written.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { LoginThrottle } from '../src/accounts/login-throttle.ts';
import { LOGIN_FAILED_MESSAGE } from '../src/interactions/password-login.ts';
import { resolveLaunch } from '../src/smart/launch-contexts.ts';
import { upsertPatient } from '../src/smart/patients.ts';
import { ADMIN, startAdminBench, type AdminBench, type AdminResponse } from './support/admin.ts';
import { Browser, enrolPasskey } from './support/login-flow.ts';
import { SoftAuthenticator } from './support/soft-authenticator.ts';
import { APP, CLINICIAN } from './support/test-server.ts';

const PATIENT = 'pat-zx91';
const NURSE = { username: 'Nurse.Jo', password: 'nurse-jo-password-2024', display_name: 'Jo Nurse', fhir_user: 'Practitioner/nj-1', roles: ['clinician', 'clinician'] };
const OPS = { username: 'ops.admin', password: 'ops-admin-password-2024' };

describe('admin API: users, care teams, launches', () => {
  let bench: AdminBench;
  before(async () => {
    bench = await startAdminBench();
    await upsertPatient(bench.ts.testDb.db, { id: PATIENT, displayName: 'Zed Example' });
  });
  after(async () => bench?.stop());

  const db = () => bench.ts.testDb.db;
  /** A call as the passkey admin; no answer ever carries a password hash or a passkey's public key. */
  async function call(method: string, path: string, options: { body?: unknown; headers?: Record<string, string>; token?: string } = {}): Promise<AdminResponse> {
    const res = await bench.call(method, path, { token: bench.adminToken, ...options });
    const text = JSON.stringify(res.body);
    assert.ok(!/\$argon2|password_?hash|public_?key/i.test(text), `${method} ${path} leaks: ${text.slice(0, 200)}`);
    return res;
  }
  const ifMatch = (res: AdminResponse) => ({ 'if-match': res.headers.get('etag')! });
  const refused = (res: AdminResponse, status: number, error: string, field?: string, description?: RegExp) => {
    assert.equal(res.status, status, JSON.stringify(res.body));
    assert.equal(res.body.error, error, JSON.stringify(res.body));
    if (field) assert.equal(res.body.field, field, JSON.stringify(res.body));
    if (description) assert.match(String(res.body.error_description), description);
  };

  async function lastChange(type: string) {
    const { rows: [event] } = await db().query<{ details: Record<string, unknown>; severity: string; patient_pseudonym: string | null; target_client: string | null; rule: string }>(
      'SELECT details, severity, patient_pseudonym, target_client, rule FROM audit_events WHERE type = $1 ORDER BY seq DESC LIMIT 1', [type],
    );
    assert.ok(event, `audit event ${type}`);
    const { rows: [change] } = await db().query<{ target: string; before: Record<string, unknown> | null; after: Record<string, unknown> | null }>(
      'SELECT target, before, after FROM admin_changes WHERE id = $1', [event.details.change_id],
    );
    return { event, change: change! };
  }
  const countEvents = async (type: string) => (await db().query<{ n: number }>('SELECT count(*)::int AS n FROM audit_events WHERE type = $1', [type])).rows[0]!.n;
  /** None of `values` anywhere in the audit log or the change records (and, with `idempotency`, the kept answers). */
  async function nowhere(values: string[], idempotency = false) {
    const { rows } = await db().query<{ row: string }>(
      `SELECT to_jsonb(a)::text AS row FROM audit_events a UNION ALL SELECT to_jsonb(c)::text FROM admin_changes c
       ${idempotency ? 'UNION ALL SELECT to_jsonb(k)::text FROM idempotency_keys k' : ''}`,
    );
    for (const value of values) assert.ok(rows.every((r) => !r.row.includes(value)), `${value} is recorded somewhere`);
  }
  const origin = () => new URL(bench.ts.issuer).origin;
  /** A password sign-in on the real login form (for an ordinary app): accepted, or the generic failure. */
  async function passwordAccepted(username: string, password: string): Promise<boolean> {
    const browser = new Browser(bench.ts);
    const url = new URL('/auth', bench.ts.issuer);
    url.search = new URLSearchParams({
      client_id: APP.client_id, redirect_uri: APP.redirect_uri, response_type: 'code', scope: 'openid', state: 'st',
      code_challenge: 'E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM', code_challenge_method: 'S256',
    }).toString();
    const step = await browser.signIn(await browser.follow(await browser.get(url)), username, password);
    return !step.body.includes(LOGIN_FAILED_MESSAGE);
  }

  test('users: refusals, create (password write-only, idempotent), field errors, read, list and lookup, update with If-Match', async () => {
    refused(await call('GET', '/admin/api/users', { token: bench.clinicianToken }), 403, 'insufficient_scope');
    refused(await call('POST', '/admin/api/users', { token: bench.passwordAdminToken, body: NURSE }), 401, 'insufficient_user_authentication');
    const readOnly = await bench.userToken(ADMIN.username, ADMIN.password, 'admin:read', (o) => bench.adminKey.authenticate(o, { origin: origin() }));
    assert.equal((await call('GET', '/admin/api/users', { token: readOnly })).status, 200);
    refused(await call('POST', '/admin/api/users', { token: readOnly, body: NURSE }), 403, 'insufficient_scope');

    const created = await call('POST', '/admin/api/users', { body: NURSE, headers: { 'idempotency-key': 'create-jo' } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const user = created.body.user as Record<string, unknown>;
    const id = String(user.id);
    assert.deepEqual(
      { ...user, id: undefined, created_at: undefined, updated_at: undefined },
      { id: undefined, username: 'nurse.jo', display_name: 'Jo Nurse', fhir_user: 'Practitioner/nj-1', roles: ['clinician'], disabled: false, break_glass_disabled: false, passkeys: 0, created_at: undefined, updated_at: undefined },
    );
    assert.equal(created.headers.get('location'), `/admin/api/users/${id}`);
    assert.ok(!JSON.stringify(created.body).includes(NURSE.password), 'the password is never echoed');
    const { rows: [stored] } = await db().query<{ password_hash: string }>('SELECT password_hash FROM users WHERE id = $1', [id]);
    assert.match(stored!.password_hash, /^\$argon2id\$/);

    const replay = await call('POST', '/admin/api/users', { body: NURSE, headers: { 'idempotency-key': 'create-jo' } });
    assert.equal(replay.status, 201);
    assert.equal(replay.headers.get('idempotent-replayed'), 'true');
    assert.deepEqual(replay.body, created.body);
    assert.equal(replay.headers.get('etag'), created.headers.get('etag'));
    refused(await call('POST', '/admin/api/users', { body: { ...NURSE, password: 'another-password-2024' }, headers: { 'idempotency-key': 'create-jo' } }), 422, 'invalid_request');
    refused(await call('POST', '/admin/api/users', { body: NURSE }), 409, 'conflict', 'username');

    const bad = { username: 'bad.user', password: 'bad-user-password-1' };
    const invalid: Array<[Record<string, unknown>, string, RegExp]> = [
      [{ ...bad, username: 'x' }, 'username', /^username must be 2-63 characters/],
      [{ ...bad, username: 42 }, 'username', /^username: /],
      [{ username: 'bad.user' }, 'password', /^password is required/],
      [{ ...bad, password: 'short' }, 'password', /^password must have at least 12 characters/],
      [{ ...bad, password: 'p'.repeat(257) }, 'password', /^password: /],
      [{ ...bad, display_name: '' }, 'display_name', /^display_name: /],
      [{ ...bad, display_name: 'Bell\u0007' }, 'display_name', /^display_name must not contain control characters/],
      [{ ...bad, fhir_user: 'Observation/1' }, 'fhir_user', /^fhir_user must be a FHIR reference/],
      [{ ...bad, roles: ['Admin'] }, 'roles', /^roles: /],
      [{ ...bad, roles: 'clinician' }, 'roles', /^roles: /],
      [{ ...bad, isAdmin: true }, 'isAdmin', /^isAdmin is not a user field/],
    ];
    for (const [body, field, description] of invalid) refused(await call('POST', '/admin/api/users', { body }), 400, 'invalid_request', field, description);
    refused(await call('POST', '/admin/api/users', { body: '[1]' }), 400, 'invalid_request');
    assert.equal((await db().query("SELECT 1 FROM users WHERE username = 'bad.user'")).rows.length, 0, 'no partial write');

    const { event, change } = await lastChange('admin.user_created');
    assert.equal(event.rule, 'admin_api');
    assert.equal(event.details.target_user, id);
    assert.ok((event.details.fields as string[]).includes('password'));
    assert.equal(change.before, null);
    assert.equal(change.after!.password, '[redacted]');
    await nowhere([NURSE.password, 'another-password-2024', stored!.password_hash], true);

    // Read, list, search, lookup by username.
    const read = await call('GET', `/admin/api/users/${id}`);
    assert.equal(read.status, 200);
    assert.equal(read.headers.get('etag'), created.headers.get('etag'));
    refused(await call('GET', '/admin/api/users/no-such-user'), 404, 'not_found');
    const ids = (res: AdminResponse) => (res.body.users as Array<{ id: string; username: string }>).map((u) => u.username);
    assert.deepEqual(ids(await call('GET', '/admin/api/users?username=NURSE.JO')), ['nurse.jo']);
    assert.deepEqual(ids(await call('GET', '/admin/api/users?username=nobody.here')), []);
    assert.deepEqual(ids(await call('GET', `/admin/api/users?search=${encodeURIComponent('jo nur')}`)), ['nurse.jo']);
    assert.deepEqual(ids(await call('GET', '/admin/api/users?role=admin')), ['dr.admin', 'it.admin']);
    assert.deepEqual(ids(await call('GET', '/admin/api/users?limit=2')).length, 2);
    refused(await call('GET', '/admin/api/users?limit=0'), 400, 'invalid_request', 'limit');
    refused(await call('GET', '/admin/api/users?username=%25%25'), 400, 'invalid_request', 'username');
    refused(await call('GET', '/admin/api/users?disabled=maybe'), 400, 'invalid_request', 'disabled');
    refused(await call('GET', '/admin/api/users?search=a&search=b'), 400, 'invalid_request', 'search');

    // Update: If-Match required, a stale one refused, bad fields named.
    const path = `/admin/api/users/${id}`;
    const change1 = { display_name: 'Jo N.', roles: ['clinician', 'charge_nurse'] };
    refused(await call('PATCH', path, { body: change1 }), 428, 'precondition_required');
    const updated = await call('PATCH', path, { body: change1, headers: ifMatch(read) });
    assert.equal(updated.status, 200, JSON.stringify(updated.body));
    assert.deepEqual((updated.body.user as Record<string, unknown>).roles, ['clinician', 'charge_nurse']);
    assert.notEqual(updated.headers.get('etag'), read.headers.get('etag'));
    refused(await call('PATCH', path, { body: { display_name: 'Lost update' }, headers: ifMatch(read) }), 412, 'precondition_failed');
    const badUpdates: Array<[Record<string, unknown>, string | undefined, RegExp]> = [
      [{ password: 'x'.repeat(20) }, 'password', /^password is write-only/],
      [{ username: 'someone.else' }, 'username', /^username cannot be changed here/],
      [{}, undefined, /^the body must change at least one of display_name, fhir_user, roles/],
      [{ fhir_user: 'Practitioner/a b' }, 'fhir_user', /^fhir_user must be a FHIR reference/],
      [{ display_name: 7 }, 'display_name', /^display_name: /],
      [{ roles: ['ok', 'Not OK'] }, 'roles', /^roles must be an array/],
    ];
    for (const [body, field, description] of badUpdates) refused(await call('PATCH', path, { body, headers: ifMatch(updated) }), 400, 'invalid_request', field, description);
    const cleared = await call('PATCH', path, { body: { fhir_user: null }, headers: ifMatch(updated) });
    assert.equal(cleared.status, 200);
    assert.equal((cleared.body.user as Record<string, unknown>).fhir_user, null);
    const { event: updateEvent, change: updateChange } = await lastChange('admin.user_updated');
    assert.deepEqual(updateEvent.details.fields, ['fhir_user', 'updated_at']);
    assert.equal(updateChange.before!.fhir_user, 'Practitioner/nj-1');

    // An administrator cannot take their own admin role away.
    const me = (await call('GET', '/admin/api/users?username=dr.admin')).body.users as Array<{ id: string }>;
    const myRecord = await call('GET', `/admin/api/users/${me[0]!.id}`);
    refused(await call('PATCH', `/admin/api/users/${me[0]!.id}`, { body: { roles: [] }, headers: ifMatch(myRecord) }), 409, 'conflict', 'roles');
    // The automation token is bound to ops-bot's certificate, not the one this call presents.
    refused(await call('GET', '/admin/api/users/x', { token: bench.automationToken }), 401, 'invalid_token');
  });

  test('disable (sessions, grants, tokens gone) and enable, unlock, passkey reset, break-glass switch', async () => {
    const created = await call('POST', '/admin/api/users', { body: { ...OPS, roles: ['admin'] } });
    assert.equal(created.status, 201);
    const id = String((created.body.user as { id: string }).id);
    const path = `/admin/api/users/${id}`;
    // A real administrator: a passkey, then a passkey sign-in for an admin token that works.
    const key = new SoftAuthenticator();
    assert.equal((await enrolPasskey(bench.ts, OPS.username, OPS.password, (o) => key.register(o, { origin: origin() }))).status, 303);
    const withPasskey = () => bench.userToken(OPS.username, OPS.password, 'admin:read', (o) => key.authenticate(o, { origin: origin() }));
    const token = await withPasskey();
    assert.equal((await call('GET', '/admin/api/users', { token })).status, 200);
    const artefacts = async () => (await db().query<{ model: string }>("SELECT model FROM oidc_payloads WHERE payload->>'accountId' = $1", [id])).rows.map((r) => r.model);
    for (const model of ['Session', 'Grant', 'AccessToken']) assert.ok((await artefacts()).includes(model), `${model} before`);

    let current = await call('GET', path);
    refused(await call('POST', `${path}/disable`), 428, 'precondition_required');
    const disabled = await call('POST', `${path}/disable`, { headers: ifMatch(current) });
    assert.equal(disabled.status, 200, JSON.stringify(disabled.body));
    assert.equal((disabled.body.user as Record<string, unknown>).disabled, true);
    assert.ok(Number(disabled.body.revoked) >= 3, JSON.stringify(disabled.body));
    assert.deepEqual(await artefacts(), []);
    refused(await call('GET', '/admin/api/users', { token }), 401, 'invalid_token');
    await assert.rejects(withPasskey(), /did not redirect/);
    refused(await call('POST', `${path}/enable`, { headers: ifMatch(current) }), 412, 'precondition_failed');
    const { event } = await lastChange('admin.user_disabled');
    assert.equal(event.severity, 'high');
    assert.deepEqual(event.details.fields, ['disabled', 'updated_at']);
    const me = ((await call('GET', '/admin/api/users?username=dr.admin')).body.users as Array<{ id: string }>)[0]!.id;
    refused(await call('POST', `/admin/api/users/${me}/disable`, { headers: ifMatch(await call('GET', `/admin/api/users/${me}`)) }), 409, 'conflict');
    refused(await call('POST', '/admin/api/users/no-such-user/disable', { headers: { 'if-match': '*' } }), 404, 'not_found');

    current = await call('GET', path);
    const enabled = await call('POST', `${path}/enable`, { headers: ifMatch(current) });
    assert.equal((enabled.body.user as Record<string, unknown>).disabled, false);

    // Unlock: five failed attempts lock the username (counted in the server's throttle rows, under the
    // server's key and its test policy); the right password is refused until an administrator clears the lock.
    const throttle = new LoginThrottle(db(), bench.ts.server.secrets.auditKey, { maxFailures: 5, lockSeconds: 60, baseDelayMs: 0, maxDelayMs: 0 });
    for (let i = 0; i < 5; i += 1) await throttle.reserve(OPS.username);
    assert.equal(await passwordAccepted(OPS.username, OPS.password), false);
    current = await call('GET', path);
    refused(await call('POST', `${path}/unlock`), 428, 'precondition_required');
    const unlocked = await call('POST', `${path}/unlock`, { headers: ifMatch(current) });
    assert.equal(unlocked.status, 200);
    assert.equal(unlocked.body.cleared, true);
    assert.equal((await call('POST', `${path}/unlock`, { headers: ifMatch(unlocked) })).body.cleared, false);
    assert.equal(await passwordAccepted(OPS.username, OPS.password), true);
    assert.deepEqual((await lastChange('admin.user_unlocked')).event.details.fields, []);
    const unlockEvents = await db().query<{ details: { fields: string[] } }>("SELECT details FROM audit_events WHERE type = 'admin.user_unlocked' ORDER BY seq");
    assert.deepEqual(unlockEvents.rows.map((r) => r.details.fields), [['failed_login_counter'], []]);

    // Passkey reset: every WebAuthn credential of the user goes (the API never shows the keys); an
    // admin token now needs a new passkey first.
    current = await call('GET', path);
    assert.equal((current.body.user as Record<string, unknown>).passkeys, 1);
    const reset = await call('POST', `${path}/passkeys/reset`, { headers: ifMatch(current) });
    assert.equal(reset.status, 200);
    assert.equal(reset.body.removed, 1);
    assert.equal((reset.body.user as Record<string, unknown>).passkeys, 0);
    assert.equal((await db().query('SELECT 1 FROM webauthn_credentials WHERE user_id = $1', [id])).rows.length, 0);
    const resetChange = await lastChange('admin.user_passkeys_reset');
    assert.equal(resetChange.event.severity, 'high');
    assert.deepEqual(resetChange.event.details.fields, ['passkeys']);
    refused(await call('POST', `${path}/passkeys/reset`, { headers: ifMatch(current) }), 412, 'precondition_failed');
    await assert.rejects(withPasskey(), /A passkey is required/);

    // The break-glass switch.
    const bgOff = await call('POST', `${path}/break-glass/disable`, { headers: ifMatch(reset) });
    assert.equal(bgOff.status, 200);
    assert.deepEqual([(bgOff.body.user as Record<string, unknown>).break_glass_disabled, bgOff.body.changed], [true, true]);
    assert.equal((await call('POST', `${path}/break-glass/disable`, { headers: ifMatch(bgOff) })).body.changed, false);
    const bgOn = await call('POST', `${path}/break-glass/enable`, { headers: ifMatch(await call('GET', path)) });
    assert.deepEqual([(bgOn.body.user as Record<string, unknown>).break_glass_disabled, bgOn.body.changed], [false, true]);
    assert.deepEqual((await lastChange('admin.user_break_glass_disabled')).event.details.fields, []);
    assert.equal(await countEvents('admin.user_break_glass_disabled'), 2);
    refused(await call('POST', `${path}/break-glass/enable`, { token: bench.clinicianToken, headers: ifMatch(bgOn) }), 403, 'insufficient_scope');
  });

  test('care teams: memberships with ETag, add (idempotent, optional If-Match), end (If-Match), field errors, no raw patient id recorded', async () => {
    const clinician = ((await call('GET', `/admin/api/users?username=${CLINICIAN.username}`)).body.users as Array<{ id: string }>)[0]!.id;
    const teamPath = `/admin/api/users/${clinician}/care-team`;
    const team = await call('GET', teamPath);
    assert.equal(team.status, 200);
    const patients = (res: AdminResponse) => ((res.body.care_team ?? res.body) as { memberships: Array<{ patient: string; current: boolean }> }).memberships.map((m) => `${m.patient}${m.current ? '' : ' (later)'}`);
    assert.deepEqual(patients(team), ['p1', 'p2']);
    assert.match(team.headers.get('etag') ?? '', /^"[A-Za-z0-9_-]{27}"$/);
    refused(await call('GET', '/admin/api/users/nobody/care-team'), 404, 'not_found');
    refused(await call('GET', teamPath, { token: bench.clinicianToken }), 403, 'insufficient_scope');

    const add = { user: clinician, patient: `Patient/${PATIENT}` };
    const added = await call('POST', '/admin/api/care-team', { body: add, headers: { 'idempotency-key': 'ct-add-1' } });
    assert.equal(added.status, 201, JSON.stringify(added.body));
    assert.equal(added.body.added, true);
    assert.deepEqual(patients(added), ['p1', 'p2', PATIENT]);
    const replay = await call('POST', '/admin/api/care-team', { body: add, headers: { 'idempotency-key': 'ct-add-1' } });
    assert.deepEqual([replay.status, replay.headers.get('idempotent-replayed')], [201, 'true']);
    assert.deepEqual(replay.body, added.body);
    const again = await call('POST', '/admin/api/care-team', { body: add });
    assert.deepEqual([again.status, again.body.added], [200, false]);
    assert.equal(await countEvents('admin.care_team_added'), 1, 'nothing changed, nothing recorded');
    refused(await call('POST', '/admin/api/care-team', { body: { user: clinician, patient: 'p3' }, headers: ifMatch(team) }), 412, 'precondition_failed');
    const later = await call('POST', '/admin/api/care-team', { body: { user: clinician, patient: 'p3', valid_from: '2999-01-01', valid_to: '2999-02-01T00:00:00Z' }, headers: ifMatch(added) });
    assert.equal(later.status, 201, JSON.stringify(later.body));
    assert.deepEqual(patients(later), ['p1', 'p2', 'p3 (later)', PATIENT]);

    const invalid: Array<[Record<string, unknown>, string, RegExp]> = [
      [{ patient: PATIENT }, 'user', /^user is required/],
      [{ user: 'nobody', patient: PATIENT }, 'user', /^user is not a known user id/],
      [{ user: clinician }, 'patient', /^patient is required/],
      [{ user: clinician, patient: 'Observation/1' }, 'patient', /^patient must be a FHIR Patient id/],
      [{ user: clinician, patient: 'nope-404' }, 'patient', /^patient is not a known patient/],
      [{ user: clinician, patient: 'p3', valid_from: 'yesterday' }, 'valid_from', /^valid_from must be an ISO 8601/],
      [{ user: clinician, patient: 'p3', valid_to: 12 }, 'valid_to', /^valid_to must be an ISO 8601/],
      [{ user: clinician, patient: 'p3', valid_from: '2030-01-02', valid_to: '2030-01-01' }, 'valid_to', /^valid_to must be after valid_from/],
      [{ user: clinician, patient: 'p3', valid_to: '2001-01-01' }, 'valid_to', /^valid_to must be after/],
      [{ user: clinician, patient: 'p3', role: 'nurse' }, 'role', /^role is not a care-team field/],
    ];
    for (const [body, field, description] of invalid) refused(await call('POST', '/admin/api/care-team', { body }), 400, 'invalid_request', field, description);
    assert.equal(await countEvents('admin.care_team_added'), 2);

    const end = { user: clinician, patient: PATIENT };
    refused(await call('POST', '/admin/api/care-team/end', { body: end }), 428, 'precondition_required');
    refused(await call('POST', '/admin/api/care-team/end', { body: end, headers: ifMatch(added) }), 412, 'precondition_failed');
    refused(await call('POST', '/admin/api/care-team/end', { body: { ...end, patient: 'a b' }, headers: ifMatch(later) }), 400, 'invalid_request', 'patient');
    const ended = await call('POST', '/admin/api/care-team/end', { body: end, headers: ifMatch(later) });
    assert.equal(ended.status, 200, JSON.stringify(ended.body));
    assert.equal(ended.body.ended, 1);
    assert.deepEqual(patients(ended), ['p1', 'p2', 'p3 (later)']);
    assert.equal(ended.headers.get('etag'), (await call('GET', teamPath)).headers.get('etag'));
    refused(await call('POST', '/admin/api/care-team/end', { body: end, headers: ifMatch(ended) }), 409, 'conflict', 'patient');
    refused(await call('POST', '/admin/api/care-team/end', { body: { ...end, user: 'nobody' }, headers: ifMatch(ended) }), 400, 'invalid_request', 'user');

    for (const type of ['admin.care_team_added', 'admin.care_team_ended']) {
      const { event, change } = await lastChange(type);
      assert.equal(event.details.target_id, undefined, 'no target id beside a patient');
      assert.equal(event.details.target_user, clinician);
      assert.equal(event.patient_pseudonym, bench.ts.server.audit.pseudonym('patient', type.endsWith('added') ? 'p3' : PATIENT));
      assert.equal(change.target, clinician);
      assert.equal(change.after!.patient, event.patient_pseudonym);
    }
    const { change } = await lastChange('admin.care_team_ended');
    assert.equal((change.before!.memberships as unknown[]).length, 1);
    assert.deepEqual(change.after!.memberships, []);
    await nowhere([PATIENT]);
  });

  test('launches: the value once (never recorded), idempotent replay without it, field errors', async () => {
    const clinician = ((await call('GET', `/admin/api/users?username=${CLINICIAN.username}`)).body.users as Array<{ id: string }>)[0]!.id;
    const body = { patient: `Patient/${PATIENT}`, encounter: 'Encounter/enc-5', client: APP.client_id, user: clinician, ttl_seconds: 120 };
    const started = Date.now();
    const created = await call('POST', '/admin/api/launches', { body, headers: { 'idempotency-key': 'launch-1' } });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const launch = String(created.body.launch);
    assert.match(launch, /^[A-Za-z0-9_-]{43}$/);
    assert.deepEqual({ ...created.body, launch: undefined, expires_at: undefined }, { launch: undefined, patient: PATIENT, encounter: 'enc-5', client: APP.client_id, user: clinician, expires_at: undefined });
    const expiresIn = Date.parse(String(created.body.expires_at)) - started;
    assert.ok(expiresIn > 110_000 && expiresIn < 130_000, String(expiresIn));
    assert.deepEqual(await resolveLaunch(db(), launch), { patientId: PATIENT, encounterId: 'enc-5', clientId: APP.client_id, userId: clinician, expiresAt: new Date(String(created.body.expires_at)) });

    const replay = await call('POST', '/admin/api/launches', { body, headers: { 'idempotency-key': 'launch-1' } });
    assert.deepEqual([replay.status, replay.headers.get('idempotent-replayed')], [201, 'true']);
    assert.equal(replay.body.launch, undefined);
    assert.equal(replay.body.launch_shown, 'in the first response only');
    assert.equal(replay.body.expires_at, created.body.expires_at);

    const minimal = await call('POST', '/admin/api/launches', { body: { patient: PATIENT } });
    assert.equal(minimal.status, 201);
    const ttl = Date.parse(String(minimal.body.expires_at)) - Date.now();
    assert.ok(ttl > 290_000 && ttl <= 300_000, String(ttl));
    assert.notEqual(minimal.body.launch, launch);

    const invalid: Array<[Record<string, unknown>, string, RegExp]> = [
      [{}, 'patient', /^patient is required/],
      [{ patient: 'Observation/1' }, 'patient', /^patient must be a FHIR Patient id/],
      [{ patient: 'nope-404' }, 'patient', /^patient is not a known patient/],
      [{ patient: PATIENT, encounter: 'Encounter/a b' }, 'encounter', /^encounter must be a FHIR Encounter id/],
      [{ patient: PATIENT, client: 'no-such-client' }, 'client', /^client is not a registered client/],
      [{ patient: PATIENT, client: 5 }, 'client', /^client must be a client id/],
      [{ patient: PATIENT, user: 'nobody' }, 'user', /^user is not a known user id/],
      [{ patient: PATIENT, ttl_seconds: 0 }, 'ttl_seconds', /^ttl_seconds must be a whole number of seconds from 1 to 3600/],
      [{ patient: PATIENT, ttl_seconds: 3601 }, 'ttl_seconds', /^ttl_seconds/],
      [{ patient: PATIENT, ttl_seconds: '60' }, 'ttl_seconds', /^ttl_seconds/],
      [{ patient: PATIENT, ttl_seconds: 1.5 }, 'ttl_seconds', /^ttl_seconds/],
      [{ patient: PATIENT, scope: 'launch' }, 'scope', /^scope is not a launch field/],
    ];
    const launches = async () => (await db().query<{ n: number }>('SELECT count(*)::int AS n FROM launch_contexts')).rows[0]!.n;
    const before = await launches();
    for (const [bad, field, description] of invalid) refused(await call('POST', '/admin/api/launches', { body: bad }), 400, 'invalid_request', field, description);
    assert.equal(await launches(), before, 'no partial write');
    refused(await call('POST', '/admin/api/launches', { body, token: bench.clinicianToken }), 403, 'insufficient_scope');
    refused(await call('POST', '/admin/api/launches', { body, token: bench.passwordAdminToken }), 401, 'insufficient_user_authentication');

    assert.equal(await countEvents('admin.launch_created'), 2);
    const { event, change } = await lastChange('admin.launch_created');
    assert.equal(event.details.target_id, undefined);
    assert.equal(event.patient_pseudonym, bench.ts.server.audit.pseudonym('patient', PATIENT));
    assert.equal(change.after!.patient, event.patient_pseudonym);
    assert.equal(change.after!.ttl_seconds, 300);
    const first = await db().query<{ target_client: string | null }>("SELECT target_client FROM audit_events WHERE type = 'admin.launch_created' ORDER BY seq LIMIT 1");
    assert.equal(first.rows[0]!.target_client, APP.client_id);
    await nowhere([launch, String(minimal.body.launch)], true);
    await nowhere([PATIENT, 'enc-5']);
  });
});
