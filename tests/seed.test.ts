// Seeds are validated with clear errors and applied all-or-nothing.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { countUsers } from '../src/accounts/users.ts';
import { applySeed, readSeedFile, SeedError, SeedSchema } from '../src/seed/seed.ts';
import { startTestServer, type TestServer } from './support/test-server.ts';

let ts: TestServer;
before(async () => { ts = await startTestServer({ seed: null }); });
after(() => ts.stop());

const apply = (seed: unknown) => applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse(seed));

test('a client refused part-way leaves nothing of the seed behind', async () => {
  await assert.rejects(apply({
    users: [{ username: 'dr.atomic', password: 'atomic-password-123' }],
    clients: [{ client_id: 'bad-client', client_secret: 'x'.repeat(32), redirect_uris: ['https://a.test/cb#fragment'] }],
  }), (e: Error) => e instanceof SeedError && /^clients\.0: /.test(e.message));
  assert.equal(await countUsers(ts.testDb.db), 0);
});

test('a secret-based seed client must state its secret (a generated one would be seen by nobody)', async () => {
  await assert.rejects(apply({ clients: [{ client_id: 'no-secret', redirect_uris: ['https://a.test/cb'] }] }),
    (e: Error) => e instanceof SeedError && /clients\.0: client_secret is required/.test(e.message));
});

test('seed file errors name the field, including unknown top-level keys', async () => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'authz-seed-'));
  const file = path.join(dir, 'seed.json');
  await fs.writeFile(file, JSON.stringify({ users: [{ username: 'ok.user', password: 'short' }], bogus: 1 }));
  await assert.rejects(readSeedFile(file), (e: Error) => /users\.0\.password: password must have at least 12/.test(e.message) && /\(root\): Unrecognized key/.test(e.message));
  await fs.writeFile(file, '{ not json');
  await assert.rejects(readSeedFile(file), /cannot read seed file/);
  await fs.rm(dir, { recursive: true, force: true });
});

test('patients, careTeam and roles: ids normalised, dates and scopes validated, unknown keys refused', () => {
  const parsed = SeedSchema.parse({
    patients: [{ id: 'Patient/p-1', name: ' Alice ' }],
    careTeam: [{ username: 'Dr.Seed', patient: 'Patient/p-1', validFrom: '2025-01-01T00:00:00Z', validTo: '2025-02-01T00:00:00+01:00' }],
    roles: [{ name: 'nurse', scope: 'patient/Observation.rs' }],
  });
  assert.deepEqual(parsed.patients, [{ id: 'p-1', name: 'Alice' }]);
  assert.deepEqual(parsed.careTeam, [{
    username: 'dr.seed', patient: 'p-1', validFrom: new Date('2025-01-01T00:00:00Z'), validTo: new Date('2025-01-31T23:00:00Z'),
  }]);
  const issues = (seed: unknown) => {
    const r = SeedSchema.safeParse(seed);
    assert.equal(r.success, false);
    return r.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n');
  };
  assert.match(issues({ patients: [{ id: 'Observation/1', name: 'X' }] }), /^patients\.0\.id: must be a FHIR Patient id/);
  assert.match(issues({ patients: [{ id: 'p', name: 'X', birthDate: '2000-01-01' }] }), /^patients\.0: Unrecognized key/);
  assert.match(issues({ careTeam: [{ username: 'dr.x', patient: 'p', validFrom: '2025-01-01' }] }), /^careTeam\.0\.validFrom: must be an ISO 8601 date-time/);
  assert.match(issues({ careTeam: [{ username: 'dr.x', patient: 'p', validFrom: '2025-01-02T00:00:00Z', validTo: '2025-01-01T00:00:00Z' }] }),
    /^careTeam\.0\.validTo: validTo must be after validFrom/);
  assert.match(issues({ roles: [{ name: 'nurse', scope: 'patient/Observation.rs launch/patient' }] }), /^roles\.0\.scope: invalid SMART scope: not a SMART resource scope/);
  assert.match(issues({ roles: [{ name: 'Nurse', scope: '' }] }), /^roles\.0\.name: role name/);
});
