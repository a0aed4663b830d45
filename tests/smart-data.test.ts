// SMART launch data on a real database: patients, care-team windows, EHR launch values, per-grant
// launch context, the sweep, and role scope ceilings; bad input fails with SmartDataError.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { migrate } from '../src/db/migrate.ts';
import {
  addCareTeamMember, currentCareTeamPatients, endCareTeamMembership, isOnCareTeam,
} from '../src/smart/care-team.ts';
import {
  createLaunch, deleteGrantLaunchContext, findGrantLaunchContext, launchDigest, resolveLaunch, saveGrantLaunchContext,
  sweepExpiredLaunchData, type GrantLaunchContext,
} from '../src/smart/launch-contexts.ts';
import { normalisePatientId, SmartDataError, upsertPatient } from '../src/smart/patients.ts';
import { roleScopeCeiling, setRoleScopes } from '../src/smart/roles.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

let testDb: TestDb;
const db = () => testDb.db;

before(async () => {
  testDb = await createTestDb();
  await migrate(testDb.db);
});
after(() => testDb.drop());

const HOUR = 3_600_000;
const hoursFromNow = (h: number) => new Date(Date.now() + h * HOUR);

/** A user row without going through argon2 (the hash is never checked here). */
async function user(username: string): Promise<string> {
  const id = randomUUID();
  await db().query('INSERT INTO users (id, username, password_hash) VALUES ($1, $2, $3)', [id, username, 'x']);
  return id;
}

const smartError = (message: RegExp) => (err: unknown) => {
  assert.ok(err instanceof SmartDataError, `SmartDataError expected, got ${String(err)}`);
  assert.match(err.message, message);
  return true;
};

describe('patients', () => {
  test('normalisePatientId accepts a bare id or Patient/id and refuses everything else', () => {
    assert.equal(normalisePatientId('123'), '123');
    assert.equal(normalisePatientId('Patient/123'), '123');
    assert.equal(normalisePatientId(' Patient/a-B.9 '), 'a-B.9');
    assert.equal(normalisePatientId('x'.repeat(64)), 'x'.repeat(64));
    for (const bad of ['', 'x'.repeat(65), 'Patient/', 'Observation/1', 'https://fhir.example/Patient/1', 'a b', 'a_b', 'Patient/1/_history/2',
      'patient/1', '1\0', 'é']) {
      assert.equal(normalisePatientId(bad), undefined, JSON.stringify(bad));
    }
  });

  test('upsert stores the bare id and replaces the display name; bad input is a SmartDataError', async () => {
    await upsertPatient(db(), { id: 'Patient/p-upsert', displayName: 'First Name' });
    await upsertPatient(db(), { id: 'p-upsert', displayName: '  Second Name ' });
    const { rows } = await db().query<{ id: string; display_name: string }>("SELECT id, display_name FROM patients WHERE id LIKE 'p-upsert%'");
    assert.deepEqual(rows, [{ id: 'p-upsert', display_name: 'Second Name' }]);
    await assert.rejects(upsertPatient(db(), { id: 'bad id', displayName: 'X' }), smartError(/invalid patient id/));
    await assert.rejects(upsertPatient(db(), { id: 'p-x', displayName: '' }), smartError(/invalid patient display name/));
    await assert.rejects(upsertPatient(db(), { id: 'p-x', displayName: 'a\nb' }), smartError(/invalid patient display name/));
    await assert.rejects(upsertPatient(db(), { id: 'p-x', displayName: 'n'.repeat(201) }), smartError(/invalid patient display name/));
  });
});

describe('care team', () => {
  let clinician: string;
  before(async () => {
    clinician = await user('dr.window');
    for (const [id, name] of [['ct-open', 'Zed Open'], ['ct-future', 'Amy Future'], ['ct-past', 'Bob Past'], ['ct-ended', 'Cat Ended'],
      ['ct-bounded', 'Dan Bounded']] as const) {
      await upsertPatient(db(), { id, displayName: name });
    }
  });

  test('windows: open-ended, future, past, bounded, and ended memberships', async () => {
    assert.equal(await addCareTeamMember(db(), { userId: clinician, patientId: 'Patient/ct-open' }), true);
    await addCareTeamMember(db(), { userId: clinician, patientId: 'ct-future', validFrom: hoursFromNow(24) });
    await addCareTeamMember(db(), { userId: clinician, patientId: 'ct-past', validFrom: hoursFromNow(-48), validTo: hoursFromNow(-24) });
    await addCareTeamMember(db(), { userId: clinician, patientId: 'ct-bounded', validFrom: hoursFromNow(-1), validTo: hoursFromNow(1) });
    await addCareTeamMember(db(), { userId: clinician, patientId: 'ct-ended', validFrom: hoursFromNow(-2) });

    const ids = async (at?: Date) => (await currentCareTeamPatients(db(), clinician, at)).map((p) => p.patientId);
    // Ordered by display name.
    assert.deepEqual(await currentCareTeamPatients(db(), clinician), [
      { patientId: 'ct-ended', displayName: 'Cat Ended' },
      { patientId: 'ct-bounded', displayName: 'Dan Bounded' },
      { patientId: 'ct-open', displayName: 'Zed Open' },
    ]);
    assert.deepEqual(await ids(hoursFromNow(25)), ['ct-future', 'ct-ended', 'ct-open']);
    assert.deepEqual(await ids(hoursFromNow(-36)), ['ct-past']);

    assert.equal(await isOnCareTeam(db(), clinician, 'ct-open'), true);
    assert.equal(await isOnCareTeam(db(), clinician, 'Patient/ct-open'), true);
    assert.equal(await isOnCareTeam(db(), clinician, 'ct-future'), false);
    assert.equal(await isOnCareTeam(db(), clinician, 'ct-future', hoursFromNow(24)), true, 'valid_from is inclusive');
    assert.equal(await isOnCareTeam(db(), clinician, 'ct-past'), false);
    assert.equal(await isOnCareTeam(db(), clinician, 'ct-bounded', hoursFromNow(1)), false, 'valid_to is exclusive');
    assert.equal(await isOnCareTeam(db(), clinician, 'no-such-patient'), false);
    assert.equal(await isOnCareTeam(db(), clinician, 'not a valid id'), false);
    assert.equal(await isOnCareTeam(db(), randomUUID(), 'ct-open'), false);

    // Ending: only current rows, at the given instant; history stays.
    const endAt = new Date();
    assert.equal(await endCareTeamMembership(db(), clinician, 'Patient/ct-ended', endAt), 1);
    assert.equal(await isOnCareTeam(db(), clinician, 'ct-ended'), false);
    assert.equal(await isOnCareTeam(db(), clinician, 'ct-ended', new Date(endAt.getTime() - 60_000)), true, 'the past window remains');
    assert.equal(await endCareTeamMembership(db(), clinician, 'ct-ended'), 0, 'nothing current to end');
    assert.equal(await endCareTeamMembership(db(), clinician, 'ct-future'), 0, 'a future membership is not current');
    assert.equal(await isOnCareTeam(db(), clinician, 'ct-future', hoursFromNow(30)), true);
    assert.equal(await endCareTeamMembership(db(), clinician, 'ct-past'), 0);
  });

  test('adding is idempotent: identical current membership or same start is not duplicated', async () => {
    const id = await user('dr.idem');
    await upsertPatient(db(), { id: 'ct-idem', displayName: 'Idem' });
    assert.equal(await addCareTeamMember(db(), { userId: id, patientId: 'ct-idem' }), true);
    assert.equal(await addCareTeamMember(db(), { userId: id, patientId: 'ct-idem' }), false);
    const from = hoursFromNow(-5);
    const to = hoursFromNow(5);
    assert.equal(await addCareTeamMember(db(), { userId: id, patientId: 'ct-idem', validFrom: from, validTo: to }), true);
    const later = new Date(to.getTime() + HOUR);
    assert.equal(await addCareTeamMember(db(), { userId: id, patientId: 'ct-idem', validFrom: from, validTo: later }), true,
      'same start, another end: the end is updated');
    assert.equal(await addCareTeamMember(db(), { userId: id, patientId: 'ct-idem', validFrom: from, validTo: later }), false);
    const { rows } = await db().query<{ n: number }>("SELECT count(*)::int AS n FROM care_team WHERE user_id = $1", [id]);
    assert.equal(Number(rows[0]!.n), 2);
    // Ending ends every current row.
    assert.equal(await endCareTeamMembership(db(), id, 'ct-idem'), 2);
    assert.deepEqual(await currentCareTeamPatients(db(), id), []);
  });

  test('ending in the same transaction as adding removes the empty window', async () => {
    const id = await user('dr.sametx');
    await upsertPatient(db(), { id: 'ct-sametx', displayName: 'Same' });
    const ended = await db().transaction(async (tx) => {
      await addCareTeamMember(tx, { userId: id, patientId: 'ct-sametx' });
      return endCareTeamMembership(tx, id, 'ct-sametx');
    });
    assert.equal(ended, 1);
    assert.equal(await isOnCareTeam(db(), id, 'ct-sametx'), false);
  });

  test('bad input: unknown user or patient, invalid id, window end before start', async () => {
    const id = await user('dr.bad');
    await upsertPatient(db(), { id: 'ct-bad', displayName: 'Bad' });
    await assert.rejects(addCareTeamMember(db(), { userId: randomUUID(), patientId: 'ct-bad' }), smartError(/^unknown user$/));
    await assert.rejects(addCareTeamMember(db(), { userId: id, patientId: 'ct-missing' }), smartError(/unknown patient/));
    await assert.rejects(addCareTeamMember(db(), { userId: id, patientId: 'Observation/1' }), smartError(/invalid patient id/));
    await assert.rejects(addCareTeamMember(db(), { userId: id, patientId: 'ct-bad', validFrom: hoursFromNow(1), validTo: hoursFromNow(1) }),
      smartError(/validTo must be after validFrom/));
    await assert.rejects(addCareTeamMember(db(), { userId: id, patientId: 'ct-bad', validTo: hoursFromNow(-1) }),
      smartError(/validTo must be after/));
    await assert.rejects(addCareTeamMember(db(), { userId: id, patientId: 'ct-bad', validFrom: new Date(Number.NaN) }), smartError(/invalid validFrom/));
    await assert.rejects(endCareTeamMembership(db(), id, 'a b'), smartError(/invalid patient id/));
    // Messages never carry the patient id (they may reach logs).
    await assert.rejects(addCareTeamMember(db(), { userId: id, patientId: 'ct-missing' }), (e: Error) => !e.message.includes('ct-missing'));
  });
});

describe('EHR launch values', () => {
  let clinician: string;
  before(async () => {
    clinician = await user('dr.launch');
    await upsertPatient(db(), { id: 'launch-p', displayName: 'Launch Patient' });
    await db().query(`INSERT INTO clients (client_id, metadata) VALUES ('launch-app', '{}')`);
  });

  test('create returns a 256-bit value, stores only its digest, and resolves to the context', async () => {
    const before = Date.now();
    const { launch, expiresAt } = await createLaunch(db(), {
      patientId: 'Patient/launch-p', encounterId: 'Encounter/enc-1', clientId: 'launch-app', userId: clinician, ttlSeconds: 120,
    });
    assert.match(launch, /^[A-Za-z0-9_-]{43}$/);
    assert.equal(Buffer.from(launch, 'base64url').length, 32);
    assert.ok(Math.abs(expiresAt.getTime() - (before + 120_000)) < 10_000, 'expires after the ttl');

    const { rows } = await db().query<Record<string, unknown>>('SELECT * FROM launch_contexts WHERE patient_id = $1', ['launch-p']);
    assert.equal(rows.length, 1);
    assert.equal(rows[0]!.launch_digest, launchDigest(launch));
    assert.ok(!JSON.stringify(rows).includes(launch), 'the launch value itself is not stored');

    assert.deepEqual(await resolveLaunch(db(), launch), {
      patientId: 'launch-p', encounterId: 'enc-1', clientId: 'launch-app', userId: clinician, expiresAt,
    });
    const minimal = await createLaunch(db(), { patientId: 'launch-p', ttlSeconds: 1 });
    assert.deepEqual(await resolveLaunch(db(), minimal.launch), { patientId: 'launch-p', expiresAt: minimal.expiresAt });
    assert.notEqual(minimal.launch, launch);
  });

  test('expired, unknown and malformed launch values resolve to undefined', async () => {
    const { launch, expiresAt } = await createLaunch(db(), { patientId: 'launch-p', ttlSeconds: 60 });
    assert.ok(await resolveLaunch(db(), launch, new Date(expiresAt.getTime() - 1)));
    assert.equal(await resolveLaunch(db(), launch, expiresAt), undefined, 'expires_at is exclusive');
    assert.equal(await resolveLaunch(db(), launch, new Date(expiresAt.getTime() + 1000)), undefined);
    const unknown = Buffer.alloc(32, 7).toString('base64url');
    assert.equal(await resolveLaunch(db(), unknown), undefined);
    for (const bad of ['', 'short', `${launch}x`, launch.slice(1), `${launch.slice(0, 42)}=`, `${launch.slice(0, 42)}\0`, 'x'.repeat(10_000),
      launchDigest(launch).replace(/./, '+')]) {
      assert.equal(await resolveLaunch(db(), bad), undefined);
    }
    // The digest is not a launch value.
    assert.equal(await resolveLaunch(db(), launchDigest(launch)), undefined);
  });

  test('bad input: unknown patient, client or user, invalid ids, ttl out of range', async () => {
    const ok = { patientId: 'launch-p', ttlSeconds: 60 };
    await assert.rejects(createLaunch(db(), { ...ok, patientId: 'nobody' }), smartError(/unknown patient/));
    await assert.rejects(createLaunch(db(), { ...ok, patientId: 'Practitioner/1' }), smartError(/invalid patient id/));
    await assert.rejects(createLaunch(db(), { ...ok, clientId: 'no-such-client' }), smartError(/^unknown client$/));
    await assert.rejects(createLaunch(db(), { ...ok, userId: randomUUID() }), smartError(/^unknown user$/));
    await assert.rejects(createLaunch(db(), { ...ok, encounterId: 'Patient/1' }), smartError(/invalid encounter id/));
    for (const ttlSeconds of [0, -1, 3601, 1.5, Number.NaN]) {
      await assert.rejects(createLaunch(db(), { ...ok, ttlSeconds }), smartError(/invalid launch lifetime/));
    }
    await createLaunch(db(), { ...ok, ttlSeconds: 3600 });
  });
});

describe('grant launch context', () => {
  const context = (over: Partial<GrantLaunchContext> = {}): GrantLaunchContext => ({
    grantId: `grant-${randomUUID()}`, patientId: 'gp-1', needPatientBanner: true, source: 'standalone', expiresAt: hoursFromNow(1), ...over,
  });

  test('save, find, replace and delete', async () => {
    const saved = context({ patientId: 'Patient/gp-1', encounterId: 'Encounter/e-9', source: 'ehr', needPatientBanner: false });
    await saveGrantLaunchContext(db(), saved);
    assert.deepEqual(await findGrantLaunchContext(db(), saved.grantId), { ...saved, patientId: 'gp-1', encounterId: 'e-9' });

    const replaced = { ...saved, patientId: 'gp-2', encounterId: undefined, source: 'standalone' as const, needPatientBanner: true };
    await saveGrantLaunchContext(db(), replaced);
    assert.deepEqual(await findGrantLaunchContext(db(), saved.grantId), {
      grantId: saved.grantId, patientId: 'gp-2', needPatientBanner: true, source: 'standalone', expiresAt: saved.expiresAt,
    });
    assert.equal(await findGrantLaunchContext(db(), 'no-such-grant'), undefined);
    assert.equal(await findGrantLaunchContext(db(), ''), undefined);
    await deleteGrantLaunchContext(db(), saved.grantId);
    assert.equal(await findGrantLaunchContext(db(), saved.grantId), undefined);
    await deleteGrantLaunchContext(db(), saved.grantId); // deleting twice is fine
  });

  test('an expired context is not found', async () => {
    const saved = context({ expiresAt: hoursFromNow(-1) });
    await saveGrantLaunchContext(db(), saved);
    assert.equal(await findGrantLaunchContext(db(), saved.grantId), undefined);
    const live = context();
    await saveGrantLaunchContext(db(), live);
    assert.ok(await findGrantLaunchContext(db(), live.grantId));
    assert.equal(await findGrantLaunchContext(db(), live.grantId, live.expiresAt), undefined);
  });

  test('bad input is refused', async () => {
    await assert.rejects(saveGrantLaunchContext(db(), context({ patientId: 'x y' })), smartError(/invalid patient id/));
    await assert.rejects(saveGrantLaunchContext(db(), context({ grantId: '' })), smartError(/invalid grant id/));
    await assert.rejects(saveGrantLaunchContext(db(), context({ source: 'magic' as never })), smartError(/invalid launch source/));
    await assert.rejects(saveGrantLaunchContext(db(), context({ expiresAt: new Date(Number.NaN) })), smartError(/invalid expiresAt/));
    await assert.rejects(saveGrantLaunchContext(db(), context({ encounterId: 'a b' })), smartError(/invalid encounter id/));
  });
});

describe('sweep', () => {
  test('deletes expired launch values and grant contexts, keeps live ones', async () => {
    await upsertPatient(db(), { id: 'sweep-p', displayName: 'Sweep' });
    // Start from a clean slate for counting.
    await sweepExpiredLaunchData(db(), hoursFromNow(10));
    const live = await createLaunch(db(), { patientId: 'sweep-p', ttlSeconds: 3600 });
    const short = await createLaunch(db(), { patientId: 'sweep-p', ttlSeconds: 1 });
    await saveGrantLaunchContext(db(), { grantId: 'sweep-old', patientId: 'sweep-p', needPatientBanner: true, source: 'standalone', expiresAt: hoursFromNow(-1) });
    await saveGrantLaunchContext(db(), { grantId: 'sweep-live', patientId: 'sweep-p', needPatientBanner: true, source: 'ehr', expiresAt: hoursFromNow(2) });

    const at = new Date(short.expiresAt.getTime() + 1);
    assert.equal(await sweepExpiredLaunchData(db(), at), 2);
    assert.equal(await resolveLaunch(db(), short.launch, new Date(short.expiresAt.getTime() - 1)), undefined, 'the expired row is gone');
    assert.ok(await resolveLaunch(db(), live.launch));
    assert.ok(await findGrantLaunchContext(db(), 'sweep-live'));
    assert.equal(await sweepExpiredLaunchData(db(), at), 0);
    assert.equal(await sweepExpiredLaunchData(db(), hoursFromNow(3)), 2, 'later, the live ones expire too');
  });
});

describe('role scope ceilings', () => {
  test('set validates and normalises; the ceiling is the union, deduplicated', async () => {
    await setRoleScopes(db(), 'nurse', 'patient/Observation.rs  patient/Patient.read\tpatient/Observation.rs');
    await setRoleScopes(db(), 'physician', 'patient/Observation.rs patient/MedicationRequest.cruds user/Practitioner.r');
    const { rows } = await db().query<{ scope: string }>("SELECT scope FROM role_scopes WHERE role = 'nurse'");
    assert.equal(rows[0]!.scope, 'patient/Observation.rs patient/Patient.rs', 'v1 stored as v2, duplicates and extra spaces gone');

    assert.deepEqual(await roleScopeCeiling(db(), ['nurse']), ['patient/Observation.rs', 'patient/Patient.rs']);
    assert.deepEqual(await roleScopeCeiling(db(), ['nurse', 'physician', 'nurse']), [
      'patient/Observation.rs', 'patient/Patient.rs', 'patient/MedicationRequest.cruds', 'user/Practitioner.r',
    ]);
    assert.deepEqual(await roleScopeCeiling(db(), ['physician', 'unknown-role']), [
      'patient/Observation.rs', 'patient/MedicationRequest.cruds', 'user/Practitioner.r',
    ]);

    await setRoleScopes(db(), 'nurse', 'patient/Observation.rs?category=laboratory');
    assert.deepEqual(await roleScopeCeiling(db(), ['nurse']), ['patient/Observation.rs?category=laboratory'], 'replaced');
    await setRoleScopes(db(), 'nurse', '');
    assert.deepEqual(await roleScopeCeiling(db(), ['nurse']), [], 'an empty ceiling permits nothing');
  });

  test('deny by default: no roles, unknown roles, malformed role names', async () => {
    assert.deepEqual(await roleScopeCeiling(db(), []), []);
    assert.deepEqual(await roleScopeCeiling(db(), ['nobody-has-this']), []);
    assert.deepEqual(await roleScopeCeiling(db(), ['Bad Role', '']), []);
  });

  test('invalid scopes and role names are refused with the token named', async () => {
    await assert.rejects(setRoleScopes(db(), 'nurse', 'patient/Observation.rs patient/Nonsense.rs'),
      smartError(/^invalid SMART scope: unknown FHIR R4 resource type: 'patient\/Nonsense\.rs'$/));
    await assert.rejects(setRoleScopes(db(), 'nurse', 'openid'), smartError(/not a SMART resource scope \(patient\/, user\/ or system\/\): 'openid'/));
    await assert.rejects(setRoleScopes(db(), 'nurse', 'tools/run'), smartError(/not a SMART scope: 'tools\/run'/));
    await assert.rejects(setRoleScopes(db(), 'nurse', 'a/1 b/2 c/3 d/4 e/5'), smartError(/'c\/3'; and 2 more$/));
    await assert.rejects(setRoleScopes(db(), 'Bad Role', 'patient/Observation.rs'), smartError(/invalid role name/));
    await assert.rejects(setRoleScopes(db(), 'nurse', 'patient/Observation.rs '.repeat(400)), smartError(/at most 4096 characters/));
    const { rows } = await db().query<{ scope: string }>("SELECT scope FROM role_scopes WHERE role = 'nurse'");
    assert.equal(rows[0]?.scope, '', 'a refused update changes nothing');
  });
});
