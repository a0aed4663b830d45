// The break-glass event store against the real database: the per-user daily limit holds under
// concurrent attempts (two connection pools on PostgreSQL), live/ended lookups, review closing, and
// ending a user's live emergency accesses.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { createUser } from '../src/accounts/users.ts';
import {
  activeBreakGlassForGrant, BreakGlassDisabledError, BreakGlassLimitError, setBreakGlassDisabled, closeBreakGlassReview, endUserBreakGlass, isBreakGlassGrant,
  openBreakGlassEvent, ReviewError, type NewBreakGlassEvent,
} from '../src/break-glass/events.ts';
import { migrate } from '../src/db/migrate.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

let testDb: TestDb;
let userId: string;

const event = (grantId: string, extra: Partial<NewBreakGlassEvent> = {}): NewBreakGlassEvent => ({
  userId, clientId: 'app', patientPseudonym: 'pseudo', reasonCode: 'ETREAT', justification: 'needed in resus now',
  launchKind: 'standalone', grantId, scope: 'patient/Observation.rs', credentialId: 'cred', lifetimeSeconds: 60, dailyLimit: 3, ...extra,
});

before(async () => {
  testDb = await createTestDb();
  await migrate(testDb.db);
  userId = (await createUser(testDb.db, { username: 'dr.limit', password: 'limit-password-1234' })).id;
});
after(async () => testDb?.drop());

test('the daily limit holds when attempts race (row lock on the user)', async () => {
  const other = testDb.openAnother() ?? testDb.db;
  const attempts = Array.from({ length: 6 }, (_, i) => (i % 2 ? other : testDb.db).transaction((tx) => openBreakGlassEvent(tx, event(`race-${i}`))));
  const results = await Promise.allSettled(attempts);
  const opened = results.filter((r) => r.status === 'fulfilled');
  const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  assert.equal(opened.length, 3, 'exactly the limit');
  assert.equal(refused.length, 3);
  assert.ok(refused.every((r) => r.reason instanceof BreakGlassLimitError));
});

test('live, ended and unknown grants; reviews close once with a note; ending a user\'s accesses', async () => {
  const { rows } = await testDb.db.query<{ grant_id: string }>('SELECT grant_id FROM break_glass_events ORDER BY grant_id LIMIT 1');
  const grantId = rows[0]!.grant_id;
  assert.ok(await activeBreakGlassForGrant(testDb.db, grantId));
  assert.equal(await isBreakGlassGrant(testDb.db, 'not-an-emergency-grant'), false);

  const { rows: [first] } = await testDb.db.query<{ id: string }>('SELECT id FROM break_glass_events WHERE grant_id = $1', [grantId]);
  await assert.rejects(closeBreakGlassReview(testDb.db, { id: first!.id, outcome: 'appropriate', note: '  ', reviewer: 'po' }), ReviewError);
  await assert.rejects(closeBreakGlassReview(testDb.db, { id: first!.id, outcome: 'fine' as never, note: 'x', reviewer: 'po' }), ReviewError);
  const closed = await closeBreakGlassReview(testDb.db, { id: first!.id, outcome: 'inappropriate', note: 'patient was not in ED', reviewer: 'po' });
  assert.equal(closed.review.outcome, 'inappropriate');
  await assert.rejects(closeBreakGlassReview(testDb.db, { id: first!.id, outcome: 'appropriate', note: 'rewrite', reviewer: 'po' }), /already closed/);
  await assert.rejects(closeBreakGlassReview(testDb.db, { id: 'bg_nope', outcome: 'appropriate', note: 'x', reviewer: 'po' }), /no such/);

  const ended = await endUserBreakGlass(testDb.db, userId);
  assert.equal(ended.length, 3);
  assert.equal(await activeBreakGlassForGrant(testDb.db, grantId), undefined, 'revoked: no longer live');
  assert.equal(await isBreakGlassGrant(testDb.db, grantId), true, 'still known as an emergency grant');
  assert.deepEqual(await endUserBreakGlass(testDb.db, userId), [], 'nothing live is left');
});

test('the administrator\'s switch is checked again under the row lock', async () => {
  const other = (await createUser(testDb.db, { username: 'dr.switched', password: 'switched-password-1234' })).id;
  await setBreakGlassDisabled(testDb.db, other, true);
  await assert.rejects(testDb.db.transaction((tx) => openBreakGlassEvent(tx, { ...event('switched-1'), userId: other })), BreakGlassDisabledError);
  await setBreakGlassDisabled(testDb.db, other, false);
  await testDb.db.transaction((tx) => openBreakGlassEvent(tx, { ...event('switched-2'), userId: other }));
});
