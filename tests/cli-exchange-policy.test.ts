// `exchange-policy set|list|remove` and the seed's `exchangePolicies` as operators run them: a real CLI
// process on its own database (a fresh PostgreSQL database when DATABASE_URL is set, else PGlite under
// DATA_DIR). Every change is audited in the same transaction. Few invocations: each is a Node process.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';

import type { StoredAuditRow } from '../src/audit/log.ts';
import { cliDatabase, cliEnv, failure, result, runCli, tempDir } from './support/cli.ts';

const FHIR = 'https://fhir.example.test/r4';
const TOOLS = 'https://tools.example.test/api';

test('exchange-policy set, list and remove; seed exchangePolicies; usage and reference errors; audited', async (t) => {
  const dir = await tempDir(t, 'cli-exchange-policy-test-');
  const { url, withDb } = await cliDatabase(t, dir);
  const env = cliEnv(dir, url);
  const run = (args: string[]) => runCli(env, args);

  // The seed registers the clients and resource servers, then a policy naming them (same transaction).
  const seedFile = path.join(dir, 'seed.json');
  await writeFile(seedFile, JSON.stringify({
    resourceServers: [
      { identifier: FHIR, name: 'FHIR API', scope: 'patient/Observation.rs patient/Patient.rs' },
      { identifier: TOOLS, name: 'Tools', scope: 'patient/Observation.rs' },
    ],
    clients: [
      { client_id: 'clinician-app', client_secret: 'c'.repeat(40), redirect_uris: ['https://app.example.test/cb'] },
      { client_id: 'orchestrator', client_secret: 'o'.repeat(40), redirect_uris: [], response_types: [], grant_types: ['client_credentials'] },
    ],
    exchangePolicies: [{ actor: 'orchestrator', audience: FHIR, subjectClients: ['clinician-app'], scope: 'patient/Observation.read' }],
  }));
  // A usage error answers before any database is touched, so it may run alongside.
  const [seeded, usage] = await Promise.all([
    run(['seed', seedFile]),
    run(['exchange-policy', 'set', '--actor', 'orchestrator', '--audience', FHIR, '--max-ttl', '5m']),
  ]);
  assert.deepEqual(result(seeded), {
    users: [], resourceServers: [FHIR, TOOLS], clients: ['clinician-app', 'orchestrator'], exchangePolicies: 1,
  });
  failure(usage!, 2, /exchange-policy set: --scope is required/);

  const set = result(await run(['exchange-policy', 'set', '--actor', 'orchestrator', '--audience', TOOLS,
    '--scope', 'patient/Observation.rs?category=laboratory', '--subject-client', 'clinician-app', '--subject-role', 'clinician',
    '--subject-role', 'nurse', '--max-ttl', '120', '--max-depth', '2', '--allow-break-glass']));
  assert.deepEqual(set, {
    actorClientId: 'orchestrator', audience: TOOLS, subjectClientIds: ['clinician-app'], subjectRoles: ['clinician', 'nurse'],
    scope: 'patient/Observation.rs?category=laboratory', maxTtlSeconds: 120, maxDepth: 2, allowBreakGlass: true, created: true,
  });

  failure(await run(['exchange-policy', 'set', '--actor', 'ghost-client', '--audience', FHIR, '--scope', 'patient/Patient.r',
    '--subject-client', 'clinician-app']), 1, /^clinical-authz: unknown actor client ghost-client\n$/);

  const listed = result(await run(['exchange-policy', 'list', '--actor', 'orchestrator']));
  assert.deepEqual(listed, {
    policies: [
      { actorClientId: 'orchestrator', audience: FHIR, subjectClientIds: ['clinician-app'], subjectRoles: [], scope: 'patient/Observation.rs',
        maxTtlSeconds: 300, maxDepth: 1, allowBreakGlass: false },
      { ...set, created: undefined },
    ].map((p) => JSON.parse(JSON.stringify(p)) as unknown),
  });

  assert.deepEqual(result(await run(['exchange-policy', 'remove', '--actor', 'orchestrator', '--audience', TOOLS])),
    { actorClientId: 'orchestrator', audience: TOOLS, removed: true });

  await withDb(async (db) => {
    const { rows: policies } = await db.query<{ audience: string }>('SELECT audience FROM exchange_policies ORDER BY audience');
    assert.deepEqual(policies.map((r) => r.audience), [FHIR], 'the removed policy is gone, the refused one never came');
    const { rows } = await db.query<StoredAuditRow>(
      "SELECT * FROM audit_events WHERE type LIKE 'exchange_policy.%' OR type = 'admin.seed_applied' ORDER BY seq");
    assert.deepEqual(rows.map((r) => r.type), ['admin.seed_applied', 'exchange_policy.set', 'exchange_policy.removed']);
    const [seedEvent, setEvent, removedEvent] = rows;
    assert.equal(seedEvent!.details.exchange_policies, 1);
    assert.deepEqual(seedEvent!.details.exchange_policy_actors, ['orchestrator']);
    for (const row of [setEvent!, removedEvent!]) {
      assert.equal(row.rule, 'admin.cli');
      assert.equal(row.target_client, 'orchestrator');
      assert.equal(row.target_audience, TOOLS);
      assert.equal(row.details.via, 'cli');
      assert.deepEqual(row.details.scopes, ['patient/Observation.rs?category=laboratory']);
      assert.deepEqual(row.details.subject_roles, ['clinician', 'nurse']);
    }
    assert.equal(setEvent!.details.created, true);
    assert.equal(setEvent!.details.allow_break_glass, true);
    assert.equal(setEvent!.details.max_ttl_seconds, 120);
    assert.equal(setEvent!.details.max_depth, 2);
  });
});
