// The admin API for break-glass reviews and the audit view, over real mTLS on the real database:
// review items listed and read with the clinician's justification (reading audited, the justification
// never), reviews closed once with If-Match (note never audited, reviewer = the caller), instant
// revocation of a user's live emergency accesses (a real grant's token stops working), and the audit
// events of one client or one user, newest first, with patient pseudonyms only.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { createUser, findUserByUsername } from '../src/accounts/users.ts';
import { openBreakGlassEvent, recordBreakGlassToken } from '../src/break-glass/events.ts';
import { ADMIN, OPS_BOT, startAdminBench, type AdminBench } from './support/admin.ts';
import { CLINICIAN } from './support/test-server.ts';

// Distinctive, so that finding them in an audit or change record cannot be a coincidence.
const JUSTIFICATION = 'Unconscious in resus bay 2, allergy list needed qv8r';
const NOTE = 'Confirmed with the charge nurse, appropriate hz4k';
const BAD_NOTE = 'No treating relationship found, referred on wq2m';
const RAW_PATIENT = 'pt-glass-7731';
const AUDIENCE = 'https://fhir.test/r4';

type Review = Record<string, unknown> & { id: string; tokens: Array<Record<string, unknown>> };

describe('admin API: break-glass reviews, revocation and the audit view', () => {
  let bench: AdminBench;
  let readOnly: string;
  const ids = { clinician: '', alpha: '', admin: '', realGrant: '', live1: '', live2: '', expired: '', alphaLive: '' };

  const db = () => bench.ts.testDb.db;
  const auditRows = async (type: string) => (await db().query<{
    severity: string; rule: string; actor_user: string | null; actor_client: string | null; target_client: string | null; details: Record<string, unknown>;
  }>('SELECT severity, rule, actor_user, actor_client, target_client, details FROM audit_events WHERE type = $1 ORDER BY seq', [type])).rows;
  /** Nothing written to the audit log or the change records contains `text`. */
  const neverRecorded = async (text: string) => {
    const { rows } = await db().query<{ row: string }>('SELECT to_jsonb(a)::text AS row FROM audit_events a UNION ALL SELECT to_jsonb(c)::text FROM admin_changes c');
    assert.ok(rows.length > 0);
    assert.ok(rows.every((r) => !r.row.includes(text)), `${text} is recorded somewhere`);
  };

  async function openEvent(userId: string, grantId: string, justification: string, ageMinutes: number, expired = false) {
    const event = await db().transaction((tx) => openBreakGlassEvent(tx, {
      userId, clientId: 'ai-scribe', patientPseudonym: bench.ts.server.audit.pseudonym('patient', RAW_PATIENT), reasonCode: 'ETREAT',
      justification, launchKind: 'standalone', grantId, scope: 'openid fhirUser patient/Observation.rs', credentialId: 'cred-bg',
      lifetimeSeconds: 3600, dailyLimit: 10,
    }));
    // Fixed, distinct times: oldest first; an expired access is no longer live (and not revoked again).
    await db().query(
      `UPDATE break_glass_events SET created_at = now() - make_interval(mins => $2),
              expires_at = CASE WHEN $3::boolean THEN now() - interval '1 minute' ELSE now() + interval '1 hour' END WHERE id = $1`,
      [event.id, ageMinutes, expired],
    );
    return event.id;
  }

  /** A Grant and an AccessToken issued from it, as oidc-provider stores them. */
  async function storeGrant(grantId: string, accountId: string) {
    await db().query(`INSERT INTO oidc_payloads (model, id, payload, expires_at) VALUES ('Grant', $1, $2::jsonb, now() + interval '1 hour')`,
      [grantId, JSON.stringify({ kind: 'Grant', jti: grantId, accountId, clientId: 'ai-scribe' })]);
    await db().query(`INSERT INTO oidc_payloads (model, id, payload, grant_id, expires_at) VALUES ('AccessToken', $1, $2::jsonb, $3, now() + interval '1 hour')`,
      [`at-${grantId}`, JSON.stringify({ kind: 'AccessToken', jti: `at-${grantId}`, accountId, clientId: 'ai-scribe', grantId }), grantId]);
  }

  before(async () => {
    bench = await startAdminBench();
    const origin = new URL(bench.ts.issuer).origin;
    readOnly = await bench.userToken(ADMIN.username, ADMIN.password, 'admin:read', (o) => bench.adminKey.authenticate(o, { origin }));
    ids.clinician = (await findUserByUsername(db(), CLINICIAN.username))!.id;
    ids.admin = (await findUserByUsername(db(), ADMIN.username))!.id;
    ids.alpha = (await createUser(db(), { username: 'dr.alpha', password: 'alpha-emergency-password-1' })).id;
    // dr.test's first emergency access is (for this test) the real grant behind the clinician's admin-tool
    // token: revoking the access must make that token stop working at once.
    const { rows: [real] } = await db().query<{ grant_id: string }>(
      `SELECT grant_id FROM oidc_payloads WHERE model = 'AccessToken' AND payload->>'accountId' = $1 AND payload->>'clientId' = 'admin-tool'`, [ids.clinician],
    );
    ids.realGrant = real!.grant_id;
    ids.expired = await openEvent(ids.clinician, 'grant-old', 'An old access, long expired', 60, true);
    ids.live1 = await openEvent(ids.clinician, ids.realGrant, JUSTIFICATION, 5);
    ids.live2 = await openEvent(ids.clinician, 'grant-b', 'Second access in the same shift', 4);
    ids.alphaLive = await openEvent(ids.alpha, 'grant-alpha', 'Covering the night shift on ward 9', 3);
    for (const [tokenRef, kind, clientId] of [['jti-bg-1', 'access_token', 'ai-scribe'], ['jti-bg-2', 'exchanged_token', 'fhir-agent']] as const) {
      await recordBreakGlassToken(db(), ids.live1, { tokenRef, kind, clientId, audience: AUDIENCE, scope: 'patient/Observation.rs', expiresAt: new Date(Date.now() + 300_000) });
    }
    for (const [grant, user] of [['grant-old', ids.clinician], ['grant-b', ids.clinician], ['grant-b-child', ids.clinician], ['grant-other', ids.clinician], ['grant-alpha', ids.alpha]]) {
      await storeGrant(grant!, user!);
    }
    await db().query(`INSERT INTO grant_links (child_grant_id, parent_grant_id, expires_at) VALUES ('grant-b-child', 'grant-b', now() + interval '1 hour')`);
  });
  after(async () => bench?.stop());

  test('list and read: the justification shown to reviewers, reading audited without it; filters; refusals', async () => {
    const clinician = await bench.call('GET', '/admin/api/break-glass', { token: bench.clinicianToken });
    assert.equal(clinician.status, 403);
    assert.equal(clinician.body.error, 'insufficient_scope');
    const passwordOnly = await bench.call('GET', '/admin/api/break-glass', { token: bench.passwordAdminToken });
    assert.equal(passwordOnly.status, 401);
    assert.equal(passwordOnly.body.error, 'insufficient_user_authentication');
    assert.equal((await bench.call('GET', '/admin/api/break-glass')).status, 401);

    const listed = await bench.call('GET', '/admin/api/break-glass', { token: readOnly });
    assert.equal(listed.status, 200, JSON.stringify(listed.body));
    assert.match(listed.headers.get('etag') ?? '', /^"[A-Za-z0-9_-]{27}"$/);
    assert.equal(listed.headers.get('cache-control'), 'no-store');
    const open = listed.body.reviews as Review[];
    assert.deepEqual(open.map((r) => r.id), [ids.expired, ids.live1, ids.live2, ids.alphaLive], 'open reviews, oldest first');
    const first = open[1]!;
    assert.deepEqual({ ...first, created_at: typeof first.created_at, expires_at: typeof first.expires_at, tokens: first.tokens.length }, {
      id: ids.live1, user_id: ids.clinician, username: CLINICIAN.username, client_id: 'ai-scribe',
      patient_pseudonym: bench.ts.server.audit.pseudonym('patient', RAW_PATIENT), reason_code: 'ETREAT', justification: JUSTIFICATION,
      launch_kind: 'standalone', scope: 'openid fhirUser patient/Observation.rs', created_at: 'string', expires_at: 'string', revoked_at: null,
      status: 'open', outcome: null, note: null, reviewed_by: null, reviewed_at: null, tokens: 2,
    });
    assert.deepEqual(first.tokens.map((t) => [t.token_ref, t.kind, t.client_id, t.audience, t.scope]).sort(), [
      ['jti-bg-1', 'access_token', 'ai-scribe', AUDIENCE, 'patient/Observation.rs'], ['jti-bg-2', 'exchanged_token', 'fhir-agent', AUDIENCE, 'patient/Observation.rs'],
    ]);
    assert.ok(first.tokens.every((t) => typeof t.issued_at === 'string' && typeof t.expires_at === 'string'));
    assert.ok(!JSON.stringify(listed.body).includes(RAW_PATIENT), 'the patient as its pseudonym only');

    const mine = await bench.call('GET', `/admin/api/break-glass?status=all&user=${ids.clinician}`, { token: bench.automationToken, cert: bench.opsBotCert });
    assert.equal(mine.status, 200, JSON.stringify(mine.body));
    assert.deepEqual((mine.body.reviews as Review[]).map((r) => r.id), [ids.expired, ids.live1, ids.live2]);
    assert.deepEqual((await bench.call('GET', '/admin/api/break-glass?status=closed', { token: bench.adminToken })).body, { reviews: [] });

    const one = await bench.call('GET', `/admin/api/break-glass/${ids.live1}`, { token: readOnly });
    assert.equal(one.status, 200);
    assert.deepEqual(one.body.review, first);
    assert.match(one.headers.get('etag') ?? '', /^"[A-Za-z0-9_-]{27}"$/);
    assert.equal((await bench.call('GET', `/admin/api/break-glass/${ids.live1}`, { token: readOnly })).headers.get('etag'), one.headers.get('etag'), 'a stable ETag');
    const unknown = await bench.call('GET', '/admin/api/break-glass/bg_nonexistent', { token: readOnly });
    assert.deepEqual([unknown.status, unknown.body.error], [404, 'not_found']);

    const bad: Array<[string, number, string, RegExp]> = [
      ['status=pending', 400, 'invalid_request', /^status must be open, closed or all/],
      ['status=open&status=closed', 400, 'invalid_request', /^status must be given once/],
      [`user=${'x'.repeat(201)}`, 400, 'invalid_request', /^user must be an identifier/],
      ['user=', 400, 'invalid_request', /^user must be an identifier/],
      ['user=nobody', 404, 'not_found', /^no such user/],
    ];
    for (const [query, status, error, description] of bad) {
      const res = await bench.call('GET', `/admin/api/break-glass?${query}`, { token: readOnly });
      assert.deepEqual([res.status, res.body.error], [status, error], `${query} → ${JSON.stringify(res.body)}`);
      assert.match(String(res.body.error_description), description);
    }

    // Every read that showed a justification is recorded, by whom, with the ids, never the text.
    const reads = await auditRows('break_glass.reviews_listed');
    assert.deepEqual(reads.map((r) => [r.rule, r.actor_user, r.actor_client, r.details.count]), [
      ['admin_api', ids.admin, 'admin-tool', 4], ['admin_api', null, OPS_BOT, 3], ['admin_api', ids.admin, 'admin-tool', 0],
      ['admin_api', ids.admin, 'admin-tool', 1], ['admin_api', ids.admin, 'admin-tool', 1],
    ], 'three lists and two single reads answered; refusals and 404s show nothing and record nothing');
    assert.deepEqual(reads[0]!.details.event_ids, [ids.expired, ids.live1, ids.live2, ids.alphaLive]);
    assert.deepEqual([reads[1]!.details.status, reads[1]!.details.target_user], ['all', ids.clinician]);
    await neverRecorded(JUSTIFICATION);
  });

  test('review: fields checked one by one, If-Match required (428) and current (412), closed once (409), reviewer = the caller, note never recorded', async () => {
    const path = `/admin/api/break-glass/${ids.live1}/review`;
    const etag = (await bench.call('GET', `/admin/api/break-glass/${ids.live1}`, { token: bench.adminToken })).headers.get('etag')!;
    const review = (body: unknown, headers: Record<string, string> = { 'if-match': etag }, token = bench.adminToken) => bench.call('POST', path, { token, body, headers });

    const readOnlyWrite = await review({ outcome: 'appropriate', note: NOTE }, { 'if-match': etag }, readOnly);
    assert.deepEqual([readOnlyWrite.status, readOnlyWrite.body.error], [403, 'insufficient_scope']);
    assert.match(readOnlyWrite.headers.get('www-authenticate') ?? '', /scope="admin:write"/);
    const clinician = await review({ outcome: 'appropriate', note: NOTE }, { 'if-match': etag }, bench.clinicianToken);
    assert.equal(clinician.status, 403);

    const invalid: Array<[unknown, string, RegExp]> = [
      [{ note: NOTE }, 'outcome', /^outcome is required/],
      [{ outcome: 'fine', note: NOTE }, 'outcome', /^outcome must be appropriate or inappropriate/],
      [{ outcome: 1, note: NOTE }, 'outcome', /^outcome must be appropriate or inappropriate/],
      [{ outcome: 'appropriate' }, 'note', /^note is required/],
      [{ outcome: 'appropriate', note: 42 }, 'note', /^note must be a string/],
      [{ outcome: 'appropriate', note: ' \n ' }, 'note', /^note must not be empty/],
      [{ outcome: 'appropriate', note: 'x'.repeat(2001) }, 'note', /^note must be at most 2000 characters/],
      [{ outcome: 'appropriate', note: 'null byte \u0000 here' }, 'note', /^note must not contain control characters/],
      [{ outcome: 'appropriate', note: 'lone \ud800 surrogate' }, 'note', /^note must be well-formed Unicode/],
      [{ outcome: 'appropriate', note: NOTE, reviewer: 'Someone Else' }, 'reviewer', /^reviewer is not a review field/],
    ];
    for (const [body, field, description] of invalid) {
      const res = await review(body);
      assert.deepEqual([res.status, res.body.error, res.body.field], [400, 'invalid_request', field], `${JSON.stringify(body).slice(0, 80)} → ${JSON.stringify(res.body)}`);
      assert.match(String(res.body.error_description), description);
    }
    assert.equal((await review('{"outcome":')).status, 400);
    assert.equal((await review('[]')).status, 400);
    assert.equal((await bench.call('POST', path, { token: bench.adminToken, body: 'x', headers: { 'content-type': 'text/plain', 'if-match': etag } })).status, 415);
    const unknown = await bench.call('POST', '/admin/api/break-glass/bg_nonexistent/review', { token: bench.adminToken, body: { outcome: 'appropriate', note: NOTE }, headers: { 'if-match': etag } });
    assert.deepEqual([unknown.status, unknown.body.error], [404, 'not_found']);
    const noPrecondition = await review({ outcome: 'appropriate', note: NOTE }, {});
    assert.deepEqual([noPrecondition.status, noPrecondition.body.error], [428, 'precondition_required']);
    const stale = await review({ outcome: 'appropriate', note: NOTE }, { 'if-match': '"not-the-current-version-000"' });
    assert.deepEqual([stale.status, stale.body.error], [412, 'precondition_failed']);
    const { rows: [still] } = await db().query<{ review_status: string }>('SELECT review_status FROM break_glass_events WHERE id = $1', [ids.live1]);
    assert.equal(still!.review_status, 'open', 'nothing written by any refusal');

    const closed = await review({ outcome: 'appropriate', note: `  ${NOTE}\n` }, { 'if-match': etag, 'idempotency-key': 'review-live1' });
    assert.equal(closed.status, 200, JSON.stringify(closed.body));
    const item = closed.body.review as Review;
    assert.deepEqual([item.id, item.status, item.outcome, item.note, item.reviewed_by, item.justification], [ids.live1, 'closed', 'appropriate', NOTE, ids.admin, JUSTIFICATION]);
    assert.equal(typeof item.reviewed_at, 'string');
    const newEtag = closed.headers.get('etag')!;
    assert.notEqual(newEtag, etag);
    assert.equal((await bench.call('GET', `/admin/api/break-glass/${ids.live1}`, { token: bench.adminToken })).headers.get('etag'), newEtag);

    // A retry of the same request (lost answer) gets the first answer; anything else finds the review closed.
    const replay = await review({ outcome: 'appropriate', note: `  ${NOTE}\n` }, { 'if-match': etag, 'idempotency-key': 'review-live1' });
    assert.deepEqual([replay.status, replay.headers.get('idempotent-replayed'), replay.headers.get('etag')], [200, 'true', newEtag]);
    assert.deepEqual(replay.body, closed.body);
    const rewrite = await review({ outcome: 'inappropriate', note: 'rewrite' }, { 'if-match': newEtag });
    assert.deepEqual([rewrite.status, rewrite.body.error, rewrite.body.error_description], [409, 'conflict', 'this review is already closed']);
    assert.equal((await review({ outcome: 'inappropriate', note: 'rewrite' })).status, 412, 'a rewrite against the version read before the close');

    // The automation client reviews the second access: inappropriate (high).
    const etag2 = (await bench.call('GET', `/admin/api/break-glass/${ids.live2}`, { token: bench.automationToken, cert: bench.opsBotCert })).headers.get('etag')!;
    const byBot = await bench.call('POST', `/admin/api/break-glass/${ids.live2}/review`, {
      token: bench.automationToken, cert: bench.opsBotCert, body: { outcome: 'inappropriate', note: BAD_NOTE }, headers: { 'if-match': etag2 },
    });
    assert.equal(byBot.status, 200, JSON.stringify(byBot.body));
    assert.deepEqual([(byBot.body.review as Review).reviewed_by, (byBot.body.review as Review).outcome], [OPS_BOT, 'inappropriate']);

    // Two reviewers who read the same version of dr.alpha's access: the row lock lets one close it, the other
    // finds it changed (412), whichever comes second.
    const etag3 = (await bench.call('GET', `/admin/api/break-glass/${ids.alphaLive}`, { token: bench.adminToken })).headers.get('etag')!;
    const race = await Promise.all([
      bench.call('POST', `/admin/api/break-glass/${ids.alphaLive}/review`, { token: bench.adminToken, body: { outcome: 'appropriate', note: 'first' }, headers: { 'if-match': etag3 } }),
      bench.call('POST', `/admin/api/break-glass/${ids.alphaLive}/review`, {
        token: bench.automationToken, cert: bench.opsBotCert, body: { outcome: 'inappropriate', note: 'second' }, headers: { 'if-match': etag3 },
      }),
    ]);
    assert.deepEqual(race.map((r) => r.status).sort(), [200, 412], JSON.stringify(race.map((r) => r.body)));

    const closedList = await bench.call('GET', `/admin/api/break-glass?status=closed&user=${ids.clinician}`, { token: bench.adminToken });
    assert.deepEqual((closedList.body.reviews as Review[]).map((r) => [r.id, r.outcome, r.note, r.reviewed_by]), [
      [ids.live1, 'appropriate', NOTE, ids.admin], [ids.live2, 'inappropriate', BAD_NOTE, OPS_BOT],
    ]);

    const reviewed = await auditRows('break_glass.reviewed');
    assert.deepEqual(reviewed.map((r) => r.details.target_id), [ids.live1, ids.live2, ids.alphaLive], 'one record per review closed, none for refusals');
    assert.deepEqual(reviewed.slice(0, 2).map((r) => [r.severity, r.rule, r.actor_user, r.actor_client, r.target_client, r.details.target_id, r.details.target_user, r.details.target_kind]), [
      ['info', 'admin_api', ids.admin, 'admin-tool', 'ai-scribe', ids.live1, ids.clinician, 'break_glass_event'],
      ['high', 'admin_api', null, OPS_BOT, 'ai-scribe', ids.live2, ids.clinician, 'break_glass_event'],
    ]);
    assert.deepEqual(reviewed[0]!.details.fields, ['outcome', 'reviewed_at', 'reviewed_by', 'status']);
    const { rows: [change] } = await db().query<{ before: Record<string, unknown>; after: Record<string, unknown> }>(
      'SELECT before, after FROM admin_changes WHERE id = $1', [reviewed[1]!.details.change_id],
    );
    assert.deepEqual([change!.before.status, change!.after.status, change!.after.outcome, change!.after.reviewed_by], ['open', 'closed', 'inappropriate', OPS_BOT]);
    for (const text of [NOTE, BAD_NOTE, JUSTIFICATION]) await neverRecorded(text);
  });

  test('revoke: a user\'s live emergency accesses end at once, their grants and tokens revoked; recorded high', async () => {
    const path = `/admin/api/users/${ids.clinician}/break-glass/revoke`;
    assert.equal((await bench.call('GET', '/admin/api/break-glass', { token: bench.clinicianToken })).status, 403, 'the clinician\'s token works (no admin role)');
    const readOnlyRevoke = await bench.call('POST', path, { token: readOnly });
    assert.deepEqual([readOnlyRevoke.status, readOnlyRevoke.body.error], [403, 'insufficient_scope']);
    const passwordOnly = await bench.call('POST', path, { token: bench.passwordAdminToken });
    assert.deepEqual([passwordOnly.status, passwordOnly.body.error], [401, 'insufficient_user_authentication']);
    const unknown = await bench.call('POST', '/admin/api/users/no-such-user/break-glass/revoke', { token: bench.adminToken });
    assert.deepEqual([unknown.status, unknown.body.error], [404, 'not_found']);

    const revoked = await bench.call('POST', path, { token: bench.adminToken });
    assert.equal(revoked.status, 200, JSON.stringify(revoked.body));
    const byId = new Map((revoked.body.revoked as Array<Record<string, unknown>>).map((r) => [r.id, r]));
    assert.deepEqual([revoked.body.user_id, revoked.body.username, [...byId.keys()].sort()], [ids.clinician, CLINICIAN.username, [ids.live1, ids.live2].sort()]);
    assert.equal(byId.get(ids.live2)!.grants_revoked, 2, 'the grant and the one exchanged from it');
    assert.equal(byId.get(ids.live1)!.grants_revoked, 1);
    assert.ok(Number(byId.get(ids.live2)!.artefacts_revoked) >= 4);
    assert.equal(typeof byId.get(ids.live1)!.revoked_at, 'string');

    // The real grant is gone: the clinician's token behind it is no longer active.
    const dead = await bench.call('GET', '/admin/api/break-glass', { token: bench.clinicianToken });
    assert.deepEqual([dead.status, dead.body.error], [401, 'invalid_token']);
    const { rows: left } = await db().query<{ id: string }>(`SELECT id FROM oidc_payloads WHERE id LIKE 'grant-%' OR id LIKE 'at-grant-%' OR grant_id = $1 ORDER BY id`, [ids.realGrant]);
    assert.deepEqual(left.map((r) => r.id), ['at-grant-alpha', 'at-grant-old', 'at-grant-other', 'grant-alpha', 'grant-old', 'grant-other'],
      'the emergency grants, their tokens and the exchanged grant are gone; the expired access\'s, another grant and another user\'s stay');
    const { rows: events } = await db().query<{ id: string; revoked_at: Date | null }>('SELECT id, revoked_at FROM break_glass_events');
    const revokedAt = new Map(events.map((e) => [e.id, e.revoked_at]));
    assert.ok(revokedAt.get(ids.live1) && revokedAt.get(ids.live2));
    assert.equal(revokedAt.get(ids.expired), null);
    assert.equal(revokedAt.get(ids.alphaLive), null, 'another user\'s access is untouched');
    const read = await bench.call('GET', `/admin/api/break-glass/${ids.live1}`, { token: bench.adminToken });
    assert.equal(typeof (read.body.review as Review).revoked_at, 'string');

    const records = await auditRows('break_glass.revoked');
    assert.deepEqual(records.map((r) => [r.severity, r.rule, r.actor_user, r.details.target_user]), [
      ['high', 'admin_api', ids.admin, ids.clinician], ['high', 'admin_api', ids.admin, ids.clinician],
    ]);
    assert.deepEqual(records.map((r) => r.details.target_id).sort(), [ids.live1, ids.live2].sort());
    const grantsRevoked = (await auditRows('grant.revoked')).map((r) => r.details.grant_id);
    assert.ok(grantsRevoked.includes('grant-b') && grantsRevoked.includes(ids.realGrant), JSON.stringify(grantsRevoked));

    // Nothing live is left: a second call ends nothing and records nothing; idempotent by nature.
    const again = await bench.call('POST', path, { token: bench.automationToken, cert: bench.opsBotCert });
    assert.deepEqual([again.status, again.body.revoked], [200, []]);
    assert.equal((await auditRows('break_glass.revoked')).length, 2);
  });

  test('audit view: one client\'s or one user\'s events, newest first, pseudonyms only; limits; refusals', async () => {
    await bench.ts.server.audit.record({
      type: 'break_glass.granted', outcome: 'success', severity: 'high', rule: 'break_glass',
      actor: { userId: ids.clinician, clientId: 'ai-scribe' }, target: { clientId: 'ai-scribe', audience: AUDIENCE, patientId: RAW_PATIENT },
      details: { reason_code: 'ETREAT' },
    });
    const byUser = await bench.call('GET', `/admin/api/audit?user=${ids.clinician}&limit=200`, { token: readOnly });
    assert.equal(byUser.status, 200, JSON.stringify(byUser.body));
    assert.match(byUser.headers.get('etag') ?? '', /^"[A-Za-z0-9_-]{27}"$/);
    const events = byUser.body.events as Array<Record<string, unknown> & { seq: number; actor: Record<string, unknown>; details: Record<string, unknown> }>;
    assert.ok(events.length > 5 && events.length <= 200);
    assert.ok(events.every((e, i) => i === 0 || e.seq < events[i - 1]!.seq), 'newest first');
    assert.ok(events.every((e) => e.actor.user === ids.clinician || e.details.target_user === ids.clinician));
    const granted = events[0]!;
    assert.deepEqual({ ...granted, seq: typeof granted.seq, id: typeof granted.id, time: typeof granted.time }, {
      seq: 'number', id: 'string', type: 'break_glass.granted', time: 'string', outcome: 'success', severity: 'high', rule: 'break_glass',
      actor: { user: ids.clinician, client: 'ai-scribe' }, target: { client: 'ai-scribe', audience: AUDIENCE },
      patient_pseudonym: bench.ts.server.audit.pseudonym('patient', RAW_PATIENT), details: { reason_code: 'ETREAT' },
    });
    assert.ok(!JSON.stringify(byUser.body).includes(RAW_PATIENT), 'never the raw patient id');
    const types = new Set(events.map((e) => e.type));
    for (const type of ['break_glass.revoked', 'break_glass.reviewed', 'break_glass.reviews_listed']) assert.ok(types.has(type), type);

    const limited = await bench.call('GET', `/admin/api/audit?user=${ids.clinician}&limit=3`, { token: bench.automationToken, cert: bench.opsBotCert });
    assert.equal(limited.status, 200);
    const three = limited.body.events as typeof events;
    assert.equal(three[0]!.type, 'admin.audit_viewed', 'the earlier view of this user is itself on record');
    assert.deepEqual(three.slice(1).map((e) => e.seq), [events[0]!.seq, events[1]!.seq]);
    assert.equal((limited.body.events as typeof events).length, 3);

    const byClient = await bench.call('GET', '/admin/api/audit?client=ai-scribe', { token: bench.adminToken });
    const clientEvents = byClient.body.events as Array<{ type: string; actor: { client: string | null }; target: { client: string | null } }>;
    assert.ok(clientEvents.length > 0 && clientEvents.length <= 50);
    assert.ok(clientEvents.every((e) => e.actor.client === 'ai-scribe' || e.target.client === 'ai-scribe'));
    assert.ok(clientEvents.some((e) => e.type === 'break_glass.reviewed'), 'events aimed at the client as well as those it acted in');
    assert.deepEqual((await bench.call('GET', '/admin/api/audit?client=never-seen', { token: bench.adminToken })).body, { events: [] });

    const viewed = await auditRows('admin.audit_viewed');
    assert.deepEqual(viewed.map((r) => [r.actor_user, r.actor_client, r.target_client, r.details.by, r.details.target_user, r.details.limit, r.details.count]), [
      [ids.admin, 'admin-tool', null, 'user', ids.clinician, 200, events.length], [null, OPS_BOT, null, 'user', ids.clinician, 3, 3],
      [ids.admin, 'admin-tool', 'ai-scribe', 'client', undefined, 50, clientEvents.length], [ids.admin, 'admin-tool', 'never-seen', 'client', undefined, 50, 0],
    ], 'who looked, at whom; refused views record nothing');

    const bad: Array<[string, string, RegExp]> = [
      ['', 'client', /^client or user is required/],
      [`client=ai-scribe&user=${ids.clinician}`, 'user', /^client or user is required/],
      ['client=a&client=b', 'client', /^client must be given once/],
      ['user=', 'user', /^user must be an identifier/],
      ['client=ai-scribe&limit=0', 'limit', /^limit must be 1-200/],
      ['client=ai-scribe&limit=201', 'limit', /^limit must be 1-200/],
      ['client=ai-scribe&limit=ten', 'limit', /^limit must be 1-200/],
      ['client=ai-scribe&limit=1.5', 'limit', /^limit must be 1-200/],
    ];
    for (const [query, field, description] of bad) {
      const res = await bench.call('GET', `/admin/api/audit?${query}`, { token: bench.adminToken });
      assert.deepEqual([res.status, res.body.error, res.body.field], [400, 'invalid_request', field], `${query} → ${JSON.stringify(res.body)}`);
      assert.match(String(res.body.error_description), description);
    }
    const passwordOnly = await bench.call('GET', '/admin/api/audit?client=ai-scribe', { token: bench.passwordAdminToken });
    assert.deepEqual([passwordOnly.status, passwordOnly.body.error], [401, 'insufficient_user_authentication']);
    const secretBot = await bench.call('GET', '/admin/api/audit?client=ai-scribe', { token: bench.secretBotToken });
    assert.deepEqual([secretBot.status, secretBot.body.error], [403, 'insufficient_scope']);
    const write = await bench.ts.fetch(`${bench.ts.mtlsBaseUrl}/admin/api/audit?client=ai-scribe`, { method: 'POST', headers: { authorization: `Bearer ${bench.adminToken}` } });
    assert.equal(write.status, 405, 'read-only');
    await write.arrayBuffer();
  });
});
