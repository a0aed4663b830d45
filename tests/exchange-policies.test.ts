// RFC 8693 exchange policies on a real database: validation, upsert (replaces whole), list, delete,
// reference checks, actorMayActFor, deny by default, and the seed's `exchangePolicies` key.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import type Provider from 'oidc-provider';

import { migrate } from '../src/db/migrate.ts';
import {
  actorMayActFor, deleteExchangePolicy, ExchangePolicyError, ExchangePolicySchema, findExchangePolicy, listExchangePolicies,
  upsertExchangePolicy, validateExchangePolicy, type ExchangePolicy, type ExchangePolicyInput,
} from '../src/exchange/policies.ts';
import { applySeed, SeedError, SeedSchema } from '../src/seed/seed.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

let testDb: TestDb;
const db = () => testDb.db;

const FHIR = 'https://fhir.example.test/r4';
const TOOLS = 'https://tools.example.test/api';

before(async () => {
  testDb = await createTestDb();
  await migrate(testDb.db);
  for (const id of ['orchestrator', 'clinician-app', 'other-app', 'summariser']) {
    await db().query('INSERT INTO clients (client_id, metadata) VALUES ($1, $2::jsonb)', [id, '{}']);
  }
  for (const identifier of [FHIR, TOOLS]) {
    await db().query('INSERT INTO resource_servers (identifier, name, scope) VALUES ($1, $2, $3)', [identifier, 'RS', 'patient/*.rs']);
  }
});
after(() => testDb.drop());

const base: ExchangePolicyInput = {
  actorClientId: 'orchestrator', audience: FHIR, subjectClientIds: ['clinician-app'], scope: 'patient/Observation.rs',
};

const policyError = (message: RegExp) => (err: unknown) => {
  assert.ok(err instanceof ExchangePolicyError, `ExchangePolicyError expected, got ${String(err)}`);
  assert.match(err.message, message);
  return true;
};

describe('validation', () => {
  test('defaults, normalised scope and de-duplicated lists', () => {
    assert.deepEqual(validateExchangePolicy({
      ...base, subjectClientIds: ['clinician-app', 'clinician-app'], subjectRoles: ['clinician', 'nurse', 'clinician'],
      scope: '  patient/Observation.read\tpatient/Observation.rs?category=laboratory ',
    }), {
      actorClientId: 'orchestrator', audience: FHIR, subjectClientIds: ['clinician-app'], subjectRoles: ['clinician', 'nurse'],
      scope: 'patient/Observation.rs patient/Observation.rs?category=laboratory', maxTtlSeconds: 300, maxDepth: 1, allowBreakGlass: false,
    });
  });

  test('each bad field is refused with a message naming it', async () => {
    const cases: Array<[Partial<ExchangePolicyInput> & Record<string, unknown>, RegExp]> = [
      [{ actorClientId: 'ab' }, /invalid actor client id: 3-128 characters/],
      [{ actorClientId: 'orchestrator x' }, /invalid actor client id/],
      [{ audience: '/relative/path' }, /invalid audience: an absolute URL without fragment/],
      [{ audience: `${FHIR}#frag` }, /invalid audience/],
      [{ audience: 'https://fhir.example.test/a b' }, /invalid audience/],
      [{ subjectClientIds: ['-bad'] }, /invalid subject client id/],
      [{ subjectRoles: ['Head Nurse'] }, /invalid subject role: 1-32 characters/],
      [{ scope: 'openid patient/Observation.rs' }, /not a SMART resource scope \(patient\/, user\/ or system\/\): 'openid'/],
      [{ scope: 'patient/Nonsense.rs' }, /invalid SMART scope: unknown FHIR R4 resource type/],
      [{ scope: '' }, /invalid scope: at least one SMART resource scope/],
      [{ maxTtlSeconds: 0 }, /invalid max TTL \(seconds\): a whole number from 1 to 3600/],
      [{ maxTtlSeconds: 3601 }, /invalid max TTL/],
      [{ maxTtlSeconds: 1.5 }, /invalid max TTL/],
      [{ maxDepth: 0 }, /invalid max depth: a whole number from 1 to 5/],
      [{ maxDepth: 6 }, /invalid max depth/],
      [{ subjectClientIds: [], subjectRoles: [] }, /name at least one subject client or subject role/],
    ];
    for (const [change, message] of cases) {
      assert.throws(() => validateExchangePolicy({ ...base, ...change } as ExchangePolicyInput), policyError(message), JSON.stringify(change));
      await assert.rejects(upsertExchangePolicy(db(), { ...base, ...change } as ExchangePolicyInput), policyError(message));
    }
    assert.deepEqual(await listExchangePolicies(db(), 'orchestrator'), [], 'nothing stored');
  });

  test('checkReferences: the actor, the subject clients and the audience must exist', async () => {
    await assert.rejects(upsertExchangePolicy(db(), { ...base, actorClientId: 'no-such-actor' }, { checkReferences: true }),
      policyError(/^unknown actor client no-such-actor$/));
    await assert.rejects(upsertExchangePolicy(db(), { ...base, subjectClientIds: ['clinician-app', 'ghost-app'] }, { checkReferences: true }),
      policyError(/^unknown subject client ghost-app$/));
    await assert.rejects(upsertExchangePolicy(db(), { ...base, audience: 'https://unknown.example.test/' }, { checkReferences: true }),
      policyError(/^unknown audience https:\/\/unknown\.example\.test\/ \(not a registered resource server\)$/));
    assert.equal(await findExchangePolicy(db(), 'no-such-actor', FHIR), undefined);
    // Without the check (the caller vouches for the references), the row is written.
    const unchecked = await upsertExchangePolicy(db(), { ...base, actorClientId: 'unregistered', audience: 'https://later.example.test/' });
    assert.equal(unchecked.actorClientId, 'unregistered');
    assert.equal(await deleteExchangePolicy(db(), 'unregistered', 'https://later.example.test/'), true);
  });
});

describe('storage', () => {
  test('upsert creates, then replaces the whole policy; find, list and delete', async () => {
    const created = await upsertExchangePolicy(db(), {
      ...base, subjectRoles: ['clinician'], scope: 'patient/Observation.read', maxTtlSeconds: 120, maxDepth: 2, allowBreakGlass: true,
    }, { checkReferences: true });
    const expected: ExchangePolicy = {
      actorClientId: 'orchestrator', audience: FHIR, subjectClientIds: ['clinician-app'], subjectRoles: ['clinician'],
      scope: 'patient/Observation.rs', maxTtlSeconds: 120, maxDepth: 2, allowBreakGlass: true,
    };
    assert.deepEqual(created, expected);
    assert.deepEqual(await findExchangePolicy(db(), 'orchestrator', FHIR), expected);

    // Replaced whole: omitted fields return to their defaults.
    const replaced = await upsertExchangePolicy(db(), { ...base, subjectClientIds: ['other-app'], scope: 'patient/Patient.r' });
    assert.deepEqual(replaced, {
      actorClientId: 'orchestrator', audience: FHIR, subjectClientIds: ['other-app'], subjectRoles: [], scope: 'patient/Patient.r',
      maxTtlSeconds: 300, maxDepth: 1, allowBreakGlass: false,
    });
    const { rows } = await db().query<{ n: number; later: boolean }>(
      `SELECT count(*)::int AS n, bool_and(updated_at >= created_at) AS later FROM exchange_policies
        WHERE actor_client_id = 'orchestrator' AND audience = $1`, [FHIR]);
    assert.equal(Number(rows[0]!.n), 1);
    assert.equal(rows[0]!.later, true);

    await upsertExchangePolicy(db(), { ...base, audience: TOOLS, subjectRoles: ['nurse'], subjectClientIds: [] });
    await upsertExchangePolicy(db(), { ...base, actorClientId: 'summariser' });
    assert.deepEqual((await listExchangePolicies(db())).map((p) => [p.actorClientId, p.audience]),
      [['orchestrator', FHIR], ['orchestrator', TOOLS], ['summariser', FHIR]]);
    assert.deepEqual((await listExchangePolicies(db(), 'orchestrator')).map((p) => p.audience), [FHIR, TOOLS]);
    assert.deepEqual(await listExchangePolicies(db(), 'nobody'), []);

    assert.equal(await deleteExchangePolicy(db(), 'orchestrator', TOOLS), true);
    assert.equal(await deleteExchangePolicy(db(), 'orchestrator', TOOLS), false);
    assert.equal(await findExchangePolicy(db(), 'orchestrator', TOOLS), undefined);
    assert.equal(await deleteExchangePolicy(db(), 'summariser', FHIR), true);
    assert.deepEqual((await listExchangePolicies(db())).map((p) => p.audience), [FHIR]);
  });

  test('deny by default: no row for that actor and audience, no policy (exact match, odd input answers undefined)', async () => {
    await upsertExchangePolicy(db(), base);
    assert.ok(await findExchangePolicy(db(), 'orchestrator', FHIR));
    assert.equal(await findExchangePolicy(db(), 'orchestrator', TOOLS), undefined, 'another audience');
    assert.equal(await findExchangePolicy(db(), 'clinician-app', FHIR), undefined, 'another actor');
    assert.equal(await findExchangePolicy(db(), 'orchestrator', `${FHIR}/`), undefined, 'audience compared exactly');
    assert.equal(await findExchangePolicy(db(), 'Orchestrator', FHIR), undefined, 'client id compared exactly');
    assert.equal(await findExchangePolicy(db(), 'orchestrator', `${FHIR}\0`), undefined);
    assert.equal(await findExchangePolicy(db(), 'orc\0hestrator', FHIR), undefined);
    assert.equal(await findExchangePolicy(db(), '', ''), undefined);
  });
});

describe('actorMayActFor', () => {
  const policy = (p: Partial<ExchangePolicy>): ExchangePolicy => ({
    actorClientId: 'orchestrator', audience: FHIR, subjectClientIds: [], subjectRoles: [], scope: 'patient/Observation.rs',
    maxTtlSeconds: 300, maxDepth: 1, allowBreakGlass: false, ...p,
  });

  test('by subject client', () => {
    const p = policy({ subjectClientIds: ['clinician-app'] });
    assert.equal(actorMayActFor(p, { clientId: 'clinician-app', roles: [] }), true);
    assert.equal(actorMayActFor(p, { clientId: 'other-app', roles: ['clinician'] }), false);
  });

  test('by role of the user', () => {
    const p = policy({ subjectRoles: ['clinician', 'nurse'] });
    assert.equal(actorMayActFor(p, { clientId: 'any-app', roles: ['admin', 'nurse'] }), true);
    assert.equal(actorMayActFor(p, { clientId: 'any-app', roles: ['admin'] }), false);
    assert.equal(actorMayActFor(p, { clientId: 'any-app', roles: [] }), false);
  });

  test('client or role; an empty policy permits no one', () => {
    const p = policy({ subjectClientIds: ['clinician-app'], subjectRoles: ['clinician'] });
    assert.equal(actorMayActFor(p, { clientId: 'clinician-app', roles: [] }), true);
    assert.equal(actorMayActFor(p, { clientId: 'other-app', roles: ['clinician'] }), true);
    assert.equal(actorMayActFor(p, { clientId: 'other-app', roles: ['Clinician'] }), false);
    assert.equal(actorMayActFor(policy({}), { clientId: 'clinician-app', roles: ['clinician'] }), false);
  });
});

describe('seed key exchangePolicies', () => {
  // No clients in these seeds, so the provider is never used.
  const noProvider = undefined as unknown as Provider;
  const apply = (seed: unknown) => applySeed(db(), noProvider, 'unused-client-secret-key', SeedSchema.parse(seed));
  const issues = (seed: unknown) => {
    const r = SeedSchema.safeParse(seed);
    assert.equal(r.success, false);
    return r.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n');
  };

  test('the schema maps the seed names to an ExchangePolicyInput', () => {
    assert.deepEqual(ExchangePolicySchema.parse({
      actor: 'orchestrator', audience: FHIR, subjectClients: ['clinician-app'], scope: 'patient/Observation.read', maxDepth: 2,
    }), {
      actorClientId: 'orchestrator', audience: FHIR, subjectClientIds: ['clinician-app'], subjectRoles: [], scope: 'patient/Observation.read',
      maxTtlSeconds: undefined, maxDepth: 2, allowBreakGlass: undefined,
    });
  });

  test('invalid entries name the field', () => {
    const entry = { actor: 'orchestrator', audience: FHIR, subjectClients: ['clinician-app'], scope: 'patient/Observation.rs' };
    assert.match(issues({ exchangePolicies: [{ ...entry, actor: 'x' }] }), /^exchangePolicies\.0\.actor: client id: 3-128 characters/);
    assert.match(issues({ exchangePolicies: [entry, { ...entry, audience: 'fhir' }] }), /^exchangePolicies\.1\.audience: invalid audience/);
    assert.match(issues({ exchangePolicies: [{ ...entry, scope: 'launch/patient' }] }), /^exchangePolicies\.0\.scope: .*not a SMART resource scope/);
    assert.match(issues({ exchangePolicies: [{ ...entry, subjectRoles: ['BAD ROLE'] }] }), /^exchangePolicies\.0\.subjectRoles\.0: role: /);
    assert.match(issues({ exchangePolicies: [{ ...entry, maxTtlSeconds: 7200 }] }), /^exchangePolicies\.0\.maxTtlSeconds: /);
    assert.match(issues({ exchangePolicies: [{ ...entry, maxDepth: 0 }] }), /^exchangePolicies\.0\.maxDepth: /);
    assert.match(issues({ exchangePolicies: [{ ...entry, allowBreakGlass: 'yes' }] }), /^exchangePolicies\.0\.allowBreakGlass: /);
    assert.match(issues({ exchangePolicies: [{ ...entry, subjectClients: [] }] }),
      /^exchangePolicies\.0\.subjectClients: name at least one subject client or subject role/);
    assert.match(issues({ exchangePolicies: [{ ...entry, audiences: [FHIR] }] }), /^exchangePolicies\.0: Unrecognized key/);
  });

  test('applied after clients and resource servers in the same transaction; an unknown actor refuses the whole seed', async () => {
    const result = await apply({
      resourceServers: [{ identifier: 'https://seeded.example.test/fhir', name: 'Seeded FHIR', scope: 'patient/*.rs' }],
      exchangePolicies: [
        { actor: 'orchestrator', audience: 'https://seeded.example.test/fhir', subjectClients: ['clinician-app'],
          subjectRoles: ['clinician'], scope: 'patient/Observation.rs', maxTtlSeconds: 60, allowBreakGlass: true },
        { actor: 'summariser', audience: 'https://seeded.example.test/fhir', subjectRoles: ['clinician'], scope: 'patient/Patient.r' },
      ],
    });
    assert.equal(result.exchangePolicies, 2);
    assert.deepEqual(result.resourceServers, ['https://seeded.example.test/fhir']);
    assert.deepEqual(await findExchangePolicy(db(), 'orchestrator', 'https://seeded.example.test/fhir'), {
      actorClientId: 'orchestrator', audience: 'https://seeded.example.test/fhir', subjectClientIds: ['clinician-app'],
      subjectRoles: ['clinician'], scope: 'patient/Observation.rs', maxTtlSeconds: 60, maxDepth: 1, allowBreakGlass: true,
    });
    assert.equal((await apply({})).exchangePolicies, undefined, 'absent when the seed has none');

    await assert.rejects(apply({
      resourceServers: [{ identifier: 'https://refused.example.test/fhir', name: 'Refused', scope: 'patient/*.rs' }],
      exchangePolicies: [
        { actor: 'orchestrator', audience: 'https://refused.example.test/fhir', subjectClients: ['clinician-app'], scope: 'patient/Patient.r' },
        { actor: 'ghost-orchestrator', audience: FHIR, subjectClients: ['clinician-app'], scope: 'patient/Patient.r' },
      ],
    }), (err: Error) => err instanceof SeedError && err.message === 'exchangePolicies.1: unknown actor client ghost-orchestrator');
    await assert.rejects(apply({
      exchangePolicies: [
        { actor: 'orchestrator', audience: 'https://nowhere.example.test/', subjectClients: ['clinician-app'], scope: 'patient/Patient.r' },
      ],
    }), /exchangePolicies\.0: unknown audience https:\/\/nowhere\.example\.test\//);
    const { rows } = await db().query("SELECT 1 FROM resource_servers WHERE identifier = 'https://refused.example.test/fhir'");
    assert.equal(rows.length, 0, 'the refused seed left nothing behind');
    assert.equal(await findExchangePolicy(db(), 'orchestrator', 'https://refused.example.test/fhir'), undefined);
  });
});
