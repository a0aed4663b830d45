// The SMART data commands as operators run them (`patient add`, `care-team add|end|list`, `launch create`,
// `role set`, and `seed` with patients, careTeam and roles): a real CLI process on its own database (a
// fresh PostgreSQL database when DATABASE_URL is set, else PGlite under DATA_DIR). Every change is
// audited, and no audit record carries a raw patient id, a patient name or a launch value.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';

import { deriveAuditKeys, pseudonymise, type AuditKeys } from '../src/audit/keys.ts';
import type { StoredAuditRow } from '../src/audit/log.ts';
import type { Db } from '../src/db/index.ts';
import { loadOrCreateSecrets } from '../src/keystore/secrets.ts';
import { launchDigest, resolveLaunch } from '../src/smart/launch-contexts.ts';
import { cliDatabase, cliEnv, failure, result, runCli, tempDir, type Run } from './support/cli.ts';

// Distinctive, so that finding them in an audit record cannot be a coincidence.
const PATIENT = 'pt-7f3a9c';
const OTHER_PATIENT = 'pt-b81d44';
const PATIENT_NAME = 'Alice Quixotic-Example';

interface Workspace {
  dir: string;
  keys: AuditKeys;
  run(args: string[]): Promise<Run>;
  /** The workspace's database; PGlite is opened for fn only (never while a CLI process runs). */
  withDb<T>(fn: (db: Db) => Promise<T>): Promise<T>;
  auditRows(): Promise<StoredAuditRow[]>;
}

async function workspace(t: TestContext, options: { database?: boolean } = {}): Promise<Workspace> {
  const dir = await tempDir(t, 'cli-smart-test-');
  const secrets = await loadOrCreateSecrets(dir, { allowGenerate: true });
  let url: string | undefined;
  let withDb: Workspace['withDb'];
  if (options.database === false) {
    withDb = () => Promise.reject(new Error('this workspace has no database'));
  } else {
    ({ url, withDb } = await cliDatabase(t, dir));
  }
  const env = cliEnv(dir, url);
  return {
    dir,
    keys: deriveAuditKeys(secrets.auditKey),
    run: (args) => runCli(env, args),
    withDb,
    auditRows: () => withDb(async (db) => (await db.query<StoredAuditRow>('SELECT * FROM audit_events ORDER BY seq')).rows),
  };
}

/** A user row without argon2 (never signs in here). */
const addUser = (ws: Workspace, username: string) => ws.withDb(async (db) => {
  const id = randomUUID();
  await db.query('INSERT INTO users (id, username, password_hash, roles) VALUES ($1, $2, $3, $4)', [id, username, 'x', ['clinician']]);
  return id;
});

/** Runs the commands at most three at a time (each is a Node process; many at once slow every one down). */
async function runAll(ws: Workspace, commands: string[][]): Promise<Run[]> {
  const runs: Run[] = new Array(commands.length);
  let next = 0;
  const worker = async () => {
    while (next < commands.length) {
      const i = next++;
      runs[i] = await ws.run(commands[i]!);
    }
  };
  await Promise.all([worker(), worker(), worker()]);
  return runs;
}

/** No audit record (any column) carries these strings. */
function assertNotInAudit(rows: readonly StoredAuditRow[], secrets: readonly string[]): void {
  const text = JSON.stringify(rows);
  for (const secret of secrets) assert.ok(!text.includes(secret), `audit records do not contain ${secret.slice(0, 12)}...`);
}

describe('SMART data CLI', () => {
  test('help lists the commands; usage errors exit 2 and bad values exit 1 before the database is opened', async (t) => {
    const ws = await workspace(t, { database: false });
    const runs = await runAll(ws, [
      ['--help'],
      ['care-team', 'add', '--help'],
      ['care-team'],
      ['patient', 'add', '--id', PATIENT],
      ['patient', 'add', '--name', 'X'],
      ['care-team', 'add', '--patient', PATIENT],
      ['care-team', 'end', '--user', 'dr.x'],
      ['care-team', 'list'],
      ['care-team', 'add', '--user', 'dr.x', '--patient', PATIENT, '--from', 'yesterday'],
      ['launch', 'create'],
      ['launch', 'create', '--patient', PATIENT, '--ttl', '5m'],
      ['role', 'set', '--name', 'nurse'],
      ['role', 'set', '--scope', 'patient/Patient.rs'],
      ['patient', 'add', '--id', PATIENT, '--name', 'X', '--bogus'],
      ['care-team', 'list', '--user', 'dr.x', 'extra'],
    ]);
    const [help, commandHelp, noSub, noName, noId, noUser, endNoPatient, listNoUser, badFrom, noPatient, badTtl, noScope, noRole, unknown,
      extra] = runs;
    assert.equal(help!.code, 0);
    for (const usage of ['patient add --id ID --name NAME', 'care-team add --user USERNAME --patient ID [--from ISO8601] [--to ISO8601]',
      'care-team end --user USERNAME --patient ID', 'care-team list --user USERNAME',
      'launch create --patient ID [--encounter ID] [--client CLIENT_ID] [--user USERNAME] [--ttl SECONDS]', 'role set --name ROLE --scope "SCOPES"']) {
      assert.ok(help!.stdout.includes(usage), `usage mentions ${usage}`);
    }
    assert.equal(commandHelp!.code, 0);
    assert.match(commandHelp!.stdout, /care-team add --user USERNAME/);
    assert.doesNotMatch(commandHelp!.stdout, /launch create/);
    failure(noSub!, 2, /care-team: missing subcommand \(add, end, list\)/);
    failure(noName!, 2, /patient add: --name is required/);
    failure(noId!, 2, /patient add: --id is required/);
    failure(noUser!, 2, /care-team add: --user is required/);
    failure(endNoPatient!, 2, /care-team end: --patient is required/);
    failure(listNoUser!, 2, /care-team list: --user is required/);
    failure(badFrom!, 2, /care-team add: --from 'yesterday' is not an ISO 8601 date/);
    failure(noPatient!, 2, /launch create: --patient is required/);
    failure(badTtl!, 2, /launch create: --ttl '5m' is not a whole number of seconds/);
    failure(noScope!, 2, /role set: --scope is required/);
    failure(noRole!, 2, /role set: --name is required/);
    failure(unknown!, 2, /patient add: unknown option --bogus/);
    failure(extra!, 2, /care-team list: unexpected argument 'extra'/);

    const [badId, badName, badPatient, badEncounter, ttlRange, badScope, namedScope, badRole, badWindow, badUser] = await runAll(ws, [
      ['patient', 'add', '--id', 'a b', '--name', 'X'],
      ['patient', 'add', '--id', PATIENT, '--name', ''],
      ['care-team', 'add', '--user', 'dr.x', '--patient', 'Observation/1'],
      ['launch', 'create', '--patient', PATIENT, '--encounter', 'x y'],
      ['launch', 'create', '--patient', PATIENT, '--ttl', '3601'],
      ['role', 'set', '--name', 'nurse', '--scope', 'patient/Observation.rs patient/Nonsense.rs'],
      ['role', 'set', '--name', 'nurse', '--scope', 'openid'],
      ['role', 'set', '--name', 'Head Nurse', '--scope', 'patient/Patient.rs'],
      ['care-team', 'add', '--user', 'dr.x', '--patient', PATIENT, '--from', '2025-02-01', '--to', '2025-01-01'],
      ['care-team', 'list', '--user', 'X Y'],
    ]);
    failure(badId!, 1, /invalid --id: expected a FHIR id/);
    failure(badName!, 1, /invalid patient display name/);
    failure(badPatient!, 1, /invalid --patient: expected a FHIR id/);
    failure(badEncounter!, 1, /invalid encounter id/);
    failure(ttlRange!, 1, /invalid --ttl: from 1 to 3600 seconds/);
    failure(badScope!, 1, /invalid SMART scope: unknown FHIR R4 resource type: 'patient\/Nonsense\.rs'/);
    failure(namedScope!, 1, /not a SMART resource scope \(patient\/, user\/ or system\/\): 'openid'/);
    failure(badRole!, 1, /invalid role name/);
    failure(badWindow!, 1, /--to must be after --from/);
    failure(badUser!, 1, /invalid --user/);
  });

  test('patients, care team, launch values and role ceilings end to end, audited without raw patient ids', async (t) => {
    const ws = await workspace(t);
    const userId = await addUser(ws, 'dr.ct');
    await ws.withDb((db) => db.query(`INSERT INTO clients (client_id, metadata) VALUES ('ehr-app', '{}')`));

    // patient add: created, then renamed.
    assert.deepEqual(result(await ws.run(['patient', 'add', '--id', `Patient/${PATIENT}`, '--name', 'Alice Example'])), { id: PATIENT, created: true });
    assert.deepEqual(result(await ws.run(['patient', 'add', '--id', PATIENT, '--name', PATIENT_NAME])), { id: PATIENT, created: false });
    result(await ws.run(['patient', 'add', '--id', OTHER_PATIENT, '--name', 'Bob Later']));

    // care-team add: now, open-ended; again changes nothing; a future window for another patient.
    const added = result(await ws.run(['care-team', 'add', '--user', 'DR.CT', '--patient', PATIENT]));
    assert.equal(added.userId, userId);
    assert.equal(added.patientId, PATIENT);
    assert.equal(added.added, true);
    const memberships = added.memberships as Array<{ validFrom: string; validTo: string | null }>;
    assert.equal(memberships.length, 1);
    assert.ok(Math.abs(Date.parse(memberships[0]!.validFrom) - Date.now()) < 60_000);
    assert.equal(memberships[0]!.validTo, null);
    const again = result(await ws.run(['care-team', 'add', '--user', 'dr.ct', '--patient', `Patient/${PATIENT}`]));
    assert.equal(again.added, false);
    assert.deepEqual(again.memberships, memberships);
    const future = result(await ws.run(['care-team', 'add', '--user', 'dr.ct', '--patient', OTHER_PATIENT,
      '--from', '2099-01-01', '--to', '2099-02-01T00:00:00+01:00']));
    assert.deepEqual(future.memberships, [{ validFrom: '2099-01-01T00:00:00.000Z', validTo: '2099-01-31T23:00:00.000Z' }]);

    failure(await ws.run(['care-team', 'add', '--user', 'dr.ct', '--patient', 'pt-unknown']), 1, /unknown patient \(add it first\)/);
    failure(await ws.run(['care-team', 'add', '--user', 'dr.nobody', '--patient', PATIENT]), 1, /unknown user dr\.nobody/);
    failure(await ws.run(['care-team', 'add', '--user', 'dr.ct', '--patient', PATIENT, '--to', '2001-01-01']), 1, /validTo must be after/);

    // care-team list: current memberships only, by name.
    assert.deepEqual(result(await ws.run(['care-team', 'list', '--user', 'dr.ct'])), {
      userId, username: 'dr.ct', patients: [{ patientId: PATIENT, displayName: PATIENT_NAME }],
    });
    failure(await ws.run(['care-team', 'list', '--user', 'dr.nobody']), 1, /unknown user dr\.nobody/);

    // launch create: bound to a client and a user; only the digest is stored.
    const created = result(await ws.run(['launch', 'create', '--patient', PATIENT, '--encounter', 'Encounter/enc-1', '--client', 'ehr-app',
      '--user', 'dr.ct', '--ttl', '120']));
    assert.deepEqual(Object.keys(created).sort(), ['expiresAt', 'launch']);
    const launch = created.launch as string;
    assert.match(launch, /^[A-Za-z0-9_-]{43}$/);
    assert.ok(Math.abs(Date.parse(created.expiresAt as string) - (Date.now() + 120_000)) < 60_000);
    const defaultTtl = result(await ws.run(['launch', 'create', '--patient', PATIENT]));
    assert.ok(Math.abs(Date.parse(defaultTtl.expiresAt as string) - (Date.now() + 300_000)) < 60_000, 'default ttl 300 s');
    failure(await ws.run(['launch', 'create', '--patient', PATIENT, '--client', 'no-such-app']), 1, /^clinical-authz: unknown client\n$/);
    failure(await ws.run(['launch', 'create', '--patient', 'pt-unknown']), 1, /unknown patient/);
    failure(await ws.run(['launch', 'create', '--patient', PATIENT, '--user', 'dr.nobody']), 1, /unknown user dr\.nobody/);
    await ws.withDb(async (db) => {
      const { rows } = await db.query<Record<string, unknown>>('SELECT * FROM launch_contexts ORDER BY created_at');
      assert.equal(rows.length, 2);
      assert.ok(!JSON.stringify(rows).includes(launch), 'the launch value is not stored');
      assert.ok(rows.some((r) => r.launch_digest === launchDigest(launch)));
      assert.deepEqual(await resolveLaunch(db, launch), {
        patientId: PATIENT, encounterId: 'enc-1', clientId: 'ehr-app', userId, expiresAt: new Date(created.expiresAt as string),
      });
    });

    // role set: v1 stored as v2, replaced on the second call.
    assert.deepEqual(result(await ws.run(['role', 'set', '--name', 'clinician', '--scope', 'patient/Observation.read  patient/Patient.rs'])),
      { role: 'clinician', scope: 'patient/Observation.rs patient/Patient.rs' });
    assert.deepEqual(result(await ws.run(['role', 'set', '--name', 'clinician', '--scope', 'patient/Observation.rs?category=laboratory'])),
      { role: 'clinician', scope: 'patient/Observation.rs?category=laboratory' });

    // care-team end: once; then the user is no longer on it.
    assert.deepEqual(result(await ws.run(['care-team', 'end', '--user', 'dr.ct', '--patient', PATIENT])), { userId, patientId: PATIENT, ended: 1 });
    failure(await ws.run(['care-team', 'end', '--user', 'dr.ct', '--patient', PATIENT]), 1, /user dr\.ct is not on that patient's care team/);
    assert.deepEqual(result(await ws.run(['care-team', 'list', '--user', 'dr.ct'])).patients, []);

    // Audit: one event per change, in order; patients only as pseudonyms; no names, no launch value.
    const rows = await ws.auditRows();
    assert.deepEqual(rows.map((r) => r.type), [
      'patient.added', 'patient.added', 'patient.added', 'care_team.added', 'care_team.added', 'launch.created', 'launch.created',
      'role.scopes_set', 'role.scopes_set', 'care_team.ended',
    ]);
    for (const row of rows) assert.equal(row.rule, 'admin.cli');
    const patientPseudonym = pseudonymise(ws.keys, 'patient', PATIENT);
    const byType = (type: string) => rows.filter((r) => r.type === type);
    assert.deepEqual(byType('patient.added').map((r) => [r.patient_pseudonym, r.details.created]), [
      [patientPseudonym, true], [patientPseudonym, false], [pseudonymise(ws.keys, 'patient', OTHER_PATIENT), true],
    ]);
    const [addedEvent, futureEvent] = byType('care_team.added');
    assert.equal(addedEvent!.patient_pseudonym, patientPseudonym);
    assert.equal(addedEvent!.details.user_id, userId);
    assert.equal(addedEvent!.details.valid_to, null);
    assert.equal(futureEvent!.details.valid_from, '2099-01-01T00:00:00.000Z');
    const [launchEvent] = byType('launch.created');
    assert.equal(launchEvent!.patient_pseudonym, patientPseudonym);
    assert.equal(launchEvent!.target_client, 'ehr-app');
    assert.equal(launchEvent!.details.user_id, userId);
    assert.equal(launchEvent!.details.ttl_seconds, 120);
    assert.equal(launchEvent!.details.encounter, true);
    assert.deepEqual(byType('role.scopes_set')[0]!.details.scopes, ['patient/Observation.rs', 'patient/Patient.rs']);
    assert.equal(byType('role.scopes_set')[0]!.details.role, 'clinician');
    const ended = byType('care_team.ended')[0]!;
    assert.equal(ended.patient_pseudonym, patientPseudonym);
    assert.equal(ended.details.ended, 1);
    assertNotInAudit(rows, [PATIENT, OTHER_PATIENT, PATIENT_NAME, 'Alice Example', 'Bob Later', 'enc-1', launch, launchDigest(launch),
      defaultTtl.launch as string]);

    // The chain the CLI wrote verifies.
    assert.equal(result(await ws.run(['audit', 'verify'])).ok, true);
  });

  test('seed: patients, careTeam and roles are applied once, in one transaction, and re-applying adds nothing', async (t) => {
    const ws = await workspace(t);
    const file = path.join(ws.dir, 'seed.json');
    const seed = {
      users: [{ username: 'dr.seed', password: 'seed-password-123', roles: ['clinician'] }],
      patients: [{ id: `Patient/${PATIENT}`, name: PATIENT_NAME }, { id: OTHER_PATIENT, name: 'Bob Later' }],
      careTeam: [
        { username: 'dr.seed', patient: PATIENT },
        { username: 'dr.seed', patient: `Patient/${OTHER_PATIENT}`, validFrom: '2020-01-01T00:00:00Z', validTo: '2099-01-01T00:00:00Z' },
      ],
      roles: [{ name: 'clinician', scope: 'patient/Observation.read patient/Patient.rs' }],
    };
    await writeFile(file, JSON.stringify(seed));
    assert.deepEqual(result(await ws.run(['seed', file])), {
      users: ['dr.seed'], patients: [PATIENT, OTHER_PATIENT], careTeam: 2, roles: ['clinician'], resourceServers: [], clients: [],
    });
    assert.deepEqual(result(await ws.run(['seed', file])), {
      users: [], patients: [PATIENT, OTHER_PATIENT], careTeam: 0, roles: ['clinician'], resourceServers: [], clients: [],
    });
    const listed = result(await ws.run(['care-team', 'list', '--user', 'dr.seed']));
    assert.deepEqual(listed.patients, [{ patientId: PATIENT, displayName: PATIENT_NAME }, { patientId: OTHER_PATIENT, displayName: 'Bob Later' }]);

    // A bad entry names its field and changes nothing.
    const bad = path.join(ws.dir, 'bad.json');
    await writeFile(bad, JSON.stringify({ patients: [{ id: 'pt-new', name: 'New' }], careTeam: [{ username: 'dr.nobody', patient: 'pt-new' }] }));
    failure(await ws.run(['seed', bad]), 1, /careTeam\.0: unknown user dr\.nobody/);
    await writeFile(bad, JSON.stringify({ careTeam: [{ username: 'dr.seed', patient: 'pt-missing' }] }));
    failure(await ws.run(['seed', bad]), 1, /careTeam\.0: unknown patient/);
    await writeFile(bad, JSON.stringify({ roles: [{ name: 'clinician', scope: 'openid' }], patients: [{ id: 'a b', name: 'X' }] }));
    failure(await ws.run(['seed', bad]), 1, /patients\.0\.id: must be a FHIR Patient id.*roles\.0\.scope: invalid SMART scope/);

    await ws.withDb(async (db) => {
      const patients = await db.query<{ id: string }>('SELECT id FROM patients ORDER BY id');
      assert.deepEqual(patients.rows.map((r) => r.id), [PATIENT, OTHER_PATIENT].sort(), 'the refused seeds added nothing');
      const careTeam = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM care_team');
      assert.equal(Number(careTeam.rows[0]!.n), 2);
      const roles = await db.query<{ scope: string }>("SELECT scope FROM role_scopes WHERE role = 'clinician'");
      assert.equal(roles.rows[0]!.scope, 'patient/Observation.rs patient/Patient.rs');
    });
    const rows = await ws.auditRows();
    const seeded = rows.filter((r) => r.type === 'admin.seed_applied');
    assert.equal(seeded.length, 2);
    assert.deepEqual([seeded[0]!.details.patients, seeded[0]!.details.care_team_added, seeded[0]!.details.roles], [2, 2, ['clinician']]);
    assertNotInAudit(rows, [PATIENT, OTHER_PATIENT, PATIENT_NAME]);
  });
});
