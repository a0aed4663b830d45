// `break-glass list|review|disable|enable|revoke` as the privacy office and administrators run them: a real
// CLI process on its own database (fresh PostgreSQL when DATABASE_URL is set, else PGlite under DATA_DIR).
// The justification is shown by `list` and never reaches the audit log, nor does the review note; each
// change commits with its audit record; revocation removes the emergency grant, its tokens and the
// grants exchanged from it.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';

import { findUserByUsername } from '../src/accounts/users.ts';
import { openBreakGlassEvent, recordBreakGlassToken } from '../src/break-glass/events.ts';
import type { Db } from '../src/db/index.ts';
import { cliDatabase, cliEnv, failure, result, runCli, tempDir } from './support/cli.ts';

// Distinctive, so that finding them in an audit record cannot be a coincidence.
const JUSTIFICATION = 'Collapsed in corridor 4B, anticoagulant history needed zq7w';
const NOTE = 'Confirmed with the ward sister, appropriate xk9v';
const BAD_NOTE = 'No clinical reason found, referred to HR mm3p';
const AUDIENCE = 'https://fhir.example.test/r4';

type Review = Record<string, unknown> & { id: string; tokens: Record<string, unknown>[] };

async function openEvent(db: Db, userId: string, grantId: string, justification: string, ageMinutes: number, expired = false) {
  const event = await openBreakGlassEvent(db, {
    userId, clientId: 'ai-scribe', patientPseudonym: `pp-${grantId}`, reasonCode: 'ETREAT', justification,
    launchKind: 'standalone', grantId, scope: 'openid fhirUser patient/Observation.rs', credentialId: 'cred-bg',
    lifetimeSeconds: 3600, dailyLimit: 10,
  });
  // Fixed, distinct times: the list is oldest first; an expired access is no longer live.
  await db.query(
    `UPDATE break_glass_events SET created_at = now() - make_interval(mins => $2),
            expires_at = CASE WHEN $3::boolean THEN now() - interval '1 minute' ELSE now() + interval '1 hour' END
      WHERE id = $1`,
    [event.id, ageMinutes, expired],
  );
  return event.id;
}

/** A Grant row and an AccessToken issued from it, as oidc-provider stores them. */
async function storeGrant(db: Db, grantId: string, accountId: string) {
  await db.query(
    `INSERT INTO oidc_payloads (model, id, payload, expires_at)
     VALUES ('Grant', $1, $2::jsonb, now() + interval '1 hour')`,
    [grantId, JSON.stringify({ kind: 'Grant', jti: grantId, accountId, clientId: 'ai-scribe' })],
  );
  await db.query(
    `INSERT INTO oidc_payloads (model, id, payload, grant_id, expires_at)
     VALUES ('AccessToken', $1, $2::jsonb, $3, now() + interval '1 hour')`,
    [`at-${grantId}`, JSON.stringify({ kind: 'AccessToken', jti: `at-${grantId}`, accountId, clientId: 'ai-scribe', grantId }), grantId],
  );
}

test('break-glass review, switch and revocation: justification shown but never audited, changes audited, grants revoked', async (t) => {
  const dir = await tempDir(t, 'cli-break-glass-test-');
  const { url, withDb } = await cliDatabase(t, dir);
  const env = cliEnv(dir, url);
  const run = (args: string[]) => runCli(env, args);
  const seedFile = path.join(dir, 'seed.json');
  await writeFile(seedFile, JSON.stringify({
    users: [
      { username: 'dr.alpha', password: 'alpha-emergency-password-1' },
      { username: 'dr.beta', password: 'beta-emergency-password-1' },
    ],
    patients: [{ id: 'pt-bg-1', name: 'Glass Patient' }],
  }));
  result(await run(['seed', seedFile]));

  // dr.alpha: an expired access (oldest), two live ones (the first with an exchanged child grant);
  // dr.beta: one live access. Another grant of dr.alpha's must survive every revocation.
  const ids = await withDb(async (db) => {
    const alpha = (await findUserByUsername(db, 'dr.alpha'))!;
    const beta = (await findUserByUsername(db, 'dr.beta'))!;
    const expired = await openEvent(db, alpha.id, 'grant-old', 'Expired access, old reason', 60, true);
    const first = await openEvent(db, alpha.id, 'grant-a1', JUSTIFICATION, 4);
    const second = await openEvent(db, alpha.id, 'grant-a2', 'Second access for the same shift', 3);
    const third = await openEvent(db, beta.id, 'grant-b1', 'Covering the night shift on ward 9', 2);
    await recordBreakGlassToken(db, first, {
      tokenRef: 'jti-bg-1', kind: 'access_token', clientId: 'ai-scribe', audience: AUDIENCE,
      scope: 'patient/Observation.rs', expiresAt: new Date(Date.now() + 300_000),
    });
    await recordBreakGlassToken(db, first, {
      tokenRef: 'jti-bg-2', kind: 'exchanged_token', clientId: 'fhir-agent', audience: AUDIENCE,
      scope: 'patient/Observation.rs', expiresAt: new Date(Date.now() + 300_000),
    });
    for (const [grant, user] of [['grant-a1', alpha], ['grant-a1-child', alpha], ['grant-a2', alpha], ['grant-b1', beta],
      ['grant-other', alpha]] as const) {
      await storeGrant(db, grant, user.id);
    }
    await db.query(`INSERT INTO grant_links (child_grant_id, parent_grant_id, expires_at) VALUES ('grant-a1-child', 'grant-a1', now() + interval '1 hour')`);
    return { alpha: alpha.id, beta: beta.id, expired, first, second, third };
  });

  // Usage errors answer before any database is touched, so they may run alongside.
  const [listed, noNote, badOutcome, noReviewer, noId, badStatus, enableRevoke] = await Promise.all([
    run(['break-glass', 'list']),
    run(['break-glass', 'review', '--id', ids.first, '--outcome', 'appropriate', '--reviewer', 'Privacy Office']),
    run(['break-glass', 'review', '--id', ids.first, '--outcome', 'fine', '--note', 'x', '--reviewer', 'P']),
    run(['break-glass', 'review', '--id', ids.first, '--outcome', 'appropriate', '--note', 'x']),
    run(['break-glass', 'review', '--outcome', 'appropriate', '--note', 'x', '--reviewer', 'P']),
    run(['break-glass', 'list', '--status', 'pending']),
    run(['break-glass', 'enable', '--username', 'dr.beta', '--revoke']),
  ]);
  failure(noNote!, 2, /break-glass review: --note is required/);
  failure(badOutcome!, 2, /break-glass review: --outcome must be appropriate or inappropriate/);
  failure(noReviewer!, 2, /break-glass review: --reviewer is required/);
  failure(noId!, 2, /break-glass review: --id is required/);
  failure(badStatus!, 2, /break-glass list: --status must be open, closed or all/);
  failure(enableRevoke!, 2, /break-glass enable: unknown option --revoke/);

  // Open reviews, oldest first, with the justification and the tokens that followed.
  const open = result(listed!).reviews as Review[];
  assert.deepEqual(open.map((r) => r.id), [ids.expired, ids.first, ids.second, ids.third]);
  const first = open[1]!;
  assert.equal(first.justification, JUSTIFICATION);
  assert.deepEqual(
    { username: first.username, clientId: first.clientId, patientPseudonym: first.patientPseudonym, reasonCode: first.reasonCode,
      launchKind: first.launchKind, status: first.status, outcome: first.outcome, note: first.note, revokedAt: first.revokedAt },
    { username: 'dr.alpha', clientId: 'ai-scribe', patientPseudonym: 'pp-grant-a1', reasonCode: 'ETREAT', launchKind: 'standalone',
      status: 'open', outcome: null, note: null, revokedAt: null },
  );
  assert.equal(open[3]!.username, 'dr.beta');
  assert.deepEqual(first.tokens.map((tk) => [tk.tokenRef, tk.kind, tk.clientId, tk.audience]).sort(), [
    ['jti-bg-1', 'access_token', 'ai-scribe', AUDIENCE], ['jti-bg-2', 'exchanged_token', 'fhir-agent', AUDIENCE],
  ]);
  assert.ok(first.tokens.every((tk) => typeof tk.issuedAt === 'string' && typeof tk.expiresAt === 'string' && tk.scope));
  assert.deepEqual(open[2]!.tokens, []);

  // Reviews: one appropriate, one inappropriate; a second close and an unknown id fail with exit 1.
  const reviewed = result(await run(['break-glass', 'review', '--id', ids.first, '--outcome', 'appropriate', '--note', NOTE,
    '--reviewer', 'Privacy Office (J. Doe)']));
  assert.deepEqual({ ...reviewed, reviewedAt: typeof reviewed.reviewedAt }, {
    id: ids.first, username: 'dr.alpha', status: 'closed', outcome: 'appropriate', note: NOTE, reviewedBy: 'Privacy Office (J. Doe)',
    reviewedAt: 'string',
  });
  result(await run(['break-glass', 'review', '--id', ids.second, '--outcome', 'inappropriate', '--note', BAD_NOTE,
    '--reviewer', 'Privacy Office (J. Doe)']));
  failure(await run(['break-glass', 'review', '--id', ids.first, '--outcome', 'inappropriate', '--note', 'rewrite',
    '--reviewer', 'Someone Else']), 1, /break-glass review: this review is already closed/);
  failure(await run(['break-glass', 'review', '--id', 'bg_nonexistent', '--outcome', 'appropriate', '--note', 'x',
    '--reviewer', 'P']), 1, /break-glass review: no such break-glass event/);

  const closed = result(await run(['break-glass', 'list', '--status', 'closed', '--username', 'DR.ALPHA'])).reviews as Review[];
  assert.deepEqual(closed.map((r) => [r.id, r.outcome, r.note, r.reviewedBy]), [
    [ids.first, 'appropriate', NOTE, 'Privacy Office (J. Doe)'], [ids.second, 'inappropriate', BAD_NOTE, 'Privacy Office (J. Doe)'],
  ]);
  assert.equal(closed[0]!.justification, JUSTIFICATION);

  // Instant revocation of dr.alpha's live accesses (closed reviews or not); the expired one is left alone.
  const revoked = result(await run(['break-glass', 'revoke', '--username', 'dr.alpha']));
  assert.deepEqual({ ...revoked, revoked: (revoked.revoked as string[]).toSorted() },
    { username: 'dr.alpha', revoked: [ids.first, ids.second].sort() });

  // The switch: disable --revoke takes the path away and ends dr.beta's live access; enable gives it
  // back. Unknown user: exit 1.
  assert.deepEqual(result(await run(['break-glass', 'disable', '--username', 'dr.beta', '--revoke'])),
    { username: 'dr.beta', breakGlassDisabled: true, changed: true, revoked: [ids.third] });
  const disabledState = await withDb(async (db) => (await findUserByUsername(db, 'dr.beta'))!.breakGlassDisabled);
  assert.equal(disabledState, true);
  assert.deepEqual(result(await run(['break-glass', 'enable', '--username', 'dr.beta'])),
    { username: 'dr.beta', breakGlassDisabled: false, changed: true });
  failure(await run(['break-glass', 'revoke', '--username', 'nobody']), 1, /break-glass revoke: no such user/);

  await withDb(async (db) => {
    assert.equal((await findUserByUsername(db, 'dr.beta'))!.breakGlassDisabled, false);
    const events = await db.query<{ id: string; revoked_at: Date | null }>('SELECT id, revoked_at FROM break_glass_events');
    const revokedAt = new Map(events.rows.map((r) => [r.id, r.revoked_at]));
    for (const id of [ids.first, ids.second, ids.third]) assert.ok(revokedAt.get(id), `${id} revoked`);
    assert.equal(revokedAt.get(ids.expired), null, 'an expired access is not revoked again');

    const left = await db.query<{ model: string; id: string }>('SELECT model, id FROM oidc_payloads ORDER BY id');
    assert.deepEqual(left.rows.map((r) => [r.model, r.id]), [['AccessToken', 'at-grant-other'], ['Grant', 'grant-other']],
      'the emergency grants, their tokens and the exchanged child grant are gone; the other grant stays');

    const audit = await db.query<{ type: string; severity: string; rule: string; actor_user: string | null; details: Record<string, unknown> }>(
      `SELECT type, severity, rule, actor_user, details FROM audit_events WHERE type LIKE 'break_glass.%' ORDER BY seq`,
    );
    assert.deepEqual(audit.rows.map((r) => r.type), [
      'break_glass.reviews_listed', 'break_glass.reviewed', 'break_glass.reviewed', 'break_glass.reviews_listed',
      'break_glass.revoked', 'break_glass.revoked', 'break_glass.user_disabled', 'break_glass.revoked', 'break_glass.user_enabled',
    ]);
    assert.ok(audit.rows.every((r) => r.rule === 'admin.cli'));
    const [listedAll, reviewOk, reviewBad, listedClosed, revokeA, revokeB, disabled, revokeC, enabled] = audit.rows;
    assert.deepEqual([listedAll!.details.count, listedAll!.details.status], [4, 'open']);
    assert.deepEqual([listedClosed!.details.count, listedClosed!.details.status], [2, 'closed']);
    assert.deepEqual(
      [reviewOk!.severity, reviewOk!.actor_user, reviewOk!.details.event_id, reviewOk!.details.review_outcome, reviewOk!.details.reviewer],
      ['info', ids.alpha, ids.first, 'appropriate', 'Privacy Office (J. Doe)'],
    );
    assert.deepEqual([reviewBad!.severity, reviewBad!.details.event_id, reviewBad!.details.review_outcome], ['high', ids.second, 'inappropriate']);
    for (const [row, user] of [[revokeA, ids.alpha], [revokeB, ids.alpha], [revokeC, ids.beta]] as const) {
      assert.equal(row!.severity, 'high');
      assert.equal(row!.actor_user, user);
    }
    const grantsOf = new Map([revokeA, revokeB, revokeC].map((r) => [r!.details.event_id, r!.details.grants]));
    assert.deepEqual(Object.fromEntries(grantsOf), { [ids.first]: 2, [ids.second]: 1, [ids.third]: 1 });
    assert.deepEqual([disabled!.severity, disabled!.actor_user], ['warning', ids.beta]);
    assert.deepEqual([enabled!.severity, enabled!.actor_user], ['info', ids.beta]);
    // The grants themselves are recorded as revoked like any other grant revocation.
    const grantRevoked = await db.query<{ details: Record<string, unknown> }>("SELECT details FROM audit_events WHERE type = 'grant.revoked'");
    assert.deepEqual(grantRevoked.rows.map((r) => r.details.grant_id).sort(), ['grant-a1', 'grant-a2', 'grant-b1']);

    // Neither the justification nor a review note is in any audit record, in any column.
    const text = (await db.query<{ row: string }>('SELECT a::text AS row FROM audit_events a')).rows.map((r) => r.row).join('\n');
    assert.ok(text.includes('Privacy Office (J. Doe)') && text.includes(ids.first), 'the search sees the rows\' text');
    for (const secret of [JUSTIFICATION, 'zq7w', NOTE, 'xk9v', BAD_NOTE, 'mm3p']) {
      assert.ok(!text.includes(secret), `audit records do not contain ${secret}`);
    }
  });
});
