// The admin CLI as operators run it: a real child process with the server's environment variables,
// against its own database (a fresh PostgreSQL database when DATABASE_URL is set, else PGlite).
import assert from 'node:assert/strict';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test, type TestContext } from 'node:test';

import { verifyPassword } from '../src/accounts/passwords.ts';
import type { Db } from '../src/db/index.ts';
import { createPgliteDb } from '../src/db/pglite.ts';
import { loadOrCreateSecrets } from '../src/keystore/secrets.ts';
import { loadOrCreateSigningKeys, providerJwks, type SigningKeySet } from '../src/keystore/signing-keys.ts';
import { digestClientSecret } from '../src/oidc/client-secrets.ts';
import { cliEnv, failure, result, ROOT, runCli, tempDir, type Run } from './support/cli.ts';
import { createTestDb } from './support/test-db.ts';

const POSTGRES = Boolean(process.env.DATABASE_URL);
const PASSWORD = 'correct-horse-battery-staple';

interface Workspace {
  dir: string;
  run(args: string[], stdin?: string): Promise<Run>;
  /** Queries the workspace's database; call it only while no CLI process is running (PGlite). */
  query<R>(sql: string, params?: unknown[]): Promise<R[]>;
}

// PGlite: creating a database (initdb) is the slowest step, so it runs once, in the migrate test's
// directory, and the other tests start from a copy of that migrated database.
let template: Promise<{ dir: string; first: Run; second: Run }> | undefined;
function pgliteTemplate() {
  template ??= (async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'cli-test-template-'));
    const env = cliEnv(dir, undefined);
    const first = await runCli(env, ['migrate']);
    const second = await runCli(env, ['migrate']);
    return { dir, first, second };
  })();
  return template;
}

/**
 * Own KEYS_DIR/DATA_DIR and database: a fresh PostgreSQL database (every command migrates it first),
 * or PGlite under DATA_DIR, copied from the migrated template with 'migrated'. 'none': no database.
 */
async function workspace(t: TestContext, options: { database?: 'migrated' | 'none' } = {}): Promise<Workspace> {
  const dir = await tempDir(t);
  let url: string | undefined;
  let query: Workspace['query'];
  if (options.database === 'none') {
    query = () => Promise.reject(new Error('this workspace has no database'));
  } else if (POSTGRES) {
    const testDb = await createTestDb();
    t.after(() => testDb.drop());
    url = testDb.url;
    query = async (sql, params) => (await testDb.db.query(sql, params)).rows as never;
  } else {
    if (options.database === 'migrated') {
      const { dir: source } = await pgliteTemplate();
      await cp(path.join(source, 'pglite'), path.join(dir, 'pglite'), { recursive: true });
    }
    query = async (sql, params) => {
      const db: Db = await createPgliteDb(path.join(dir, 'pglite'));
      try {
        return (await db.query(sql, params)).rows as never;
      } finally {
        await db.close();
      }
    };
  }
  const env = cliEnv(dir, url);
  return { dir, run: (args, stdin) => runCli(env, args, stdin), query };
}

// The groups are independent (own directories and databases) and run side by side.
describe('admin CLI', { concurrency: true }, () => {
  after(async () => {
    if (template) await rm((await template).dir, { recursive: true, force: true });
  });

  test('migrate applies the migrations once, then nothing', async (t) => {
    let first: Run;
    let second: Run;
    if (POSTGRES) {
      const ws = await workspace(t);
      first = await ws.run(['migrate']);
      second = await ws.run(['migrate']);
    } else {
      ({ first, second } = await pgliteTemplate());
    }
    const applied = result(first).applied as number[];
    assert.ok(Array.isArray(applied) && applied.length > 0 && applied.includes(1), `applied: ${first.stdout}`);
    assert.deepEqual(result(second), { applied: [] });
  });

  test('help, unknown commands and options', async (t) => {
    const ws = await workspace(t, { database: 'none' });
    const [help, commandHelp, none, unknown, extra] = await Promise.all([
      ws.run(['--help']),
      ws.run(['user', 'add', '--help']),
      ws.run([]),
      ws.run(['frobnicate']),
      ws.run(['keys', 'rotate', 'now']),
    ]);
    assert.equal(help.code, 0);
    for (const usage of ['migrate', 'seed FILE', 'user add', '--username', '--password-stdin', '--fhir-user', '--role',
      '--display-name', 'client add FILE', 'keys rotate', 'help']) {
      assert.ok(help.stdout.includes(usage), `usage mentions ${usage}`);
    }
    assert.equal(commandHelp.code, 0);
    assert.match(commandHelp.stdout, /user add --username NAME --password-stdin/);
    assert.doesNotMatch(commandHelp.stdout, /keys rotate/);
    assert.equal(none.code, 2);
    assert.match(none.stderr, /Usage:/);
    assert.equal(none.stdout, '');
    failure(unknown, 2, /unknown command 'frobnicate'/);
    failure(extra, 2, /keys rotate: unexpected argument 'now'/);
  });

  test('user add: password from stdin only, argon2id, validation', async (t) => {
    const ws = await workspace(t, { database: 'migrated' });
    const added = await ws.run(
      ['user', 'add', '--username', 'Dr.House', '--password-stdin', '--fhir-user', 'Practitioner/42', '--role', 'clinician',
        '--role', 'admin', '--display-name', 'Gregory House'],
      `${PASSWORD}\n`,
    );
    const created = result(added);
    assert.deepEqual(Object.keys(created).sort(), ['id', 'username']);
    assert.equal(created.username, 'dr.house');

    const [short, duplicate, unknownOption, noStdinFlag, badRole] = await Promise.all([
      ws.run(['user', 'add', '--username', 'dr.short', '--password-stdin'], 'too-short\n'),
      ws.run(['user', 'add', '--username', 'DR.HOUSE', '--password-stdin'], `${PASSWORD}\n`),
      ws.run(['user', 'add', '--username', 'dr.x', '--password-stdin', '--password', PASSWORD], `${PASSWORD}\n`),
      ws.run(['user', 'add', '--username', 'dr.x'], `${PASSWORD}\n`),
      ws.run(['user', 'add', '--username', 'dr.role', '--password-stdin', '--role', 'Bad Role'], `${PASSWORD}\n`),
    ]);
    failure(short, 1, /password must have at least 12 characters/);
    failure(duplicate, 1, /user dr\.house already exists/);
    failure(unknownOption, 2, /user add: unknown option --password/);
    failure(noStdinFlag, 2, /--password-stdin is required/);
    failure(badRole, 1, /invalid --role/);
    for (const run of [added, short, duplicate, unknownOption, noStdinFlag, badRole]) {
      assert.ok(!run.stdout.includes(PASSWORD) && !run.stderr.includes(PASSWORD), 'the password is never printed');
    }

    const rows = await ws.query<{ id: string; password_hash: string; fhir_user: string; roles: string[]; display_name: string }>(
      'SELECT id, password_hash, fhir_user, roles, display_name FROM users',
    );
    assert.equal(rows.length, 1);
    const [user] = rows;
    assert.equal(user!.id, created.id);
    assert.match(user!.password_hash, /^\$argon2id\$/);
    assert.ok(await verifyPassword(user!.password_hash, PASSWORD), 'the trailing newline is not part of the password');
    assert.equal(user!.fhir_user, 'Practitioner/42');
    assert.deepEqual(user!.roles, ['clinician', 'admin']);
    assert.equal(user!.display_name, 'Gregory House');
    const events = await ws.query<{ type: string; details: Record<string, unknown>; rule: string }>(
      "SELECT type, details, rule FROM audit_events WHERE type = 'admin.user_created'",
    );
    assert.equal(events.length, 1, 'the admin change is audited');
    assert.equal(events[0]!.details.user_id, created.id);
    assert.equal(events[0]!.rule, 'admin.cli');
  });

  test('client add: secret shown once and stored as a keyed digest; invalid metadata refused', async (t) => {
    const ws = await workspace(t, { database: 'migrated' });
    const file = (name: string, metadata: unknown) => {
      const p = path.join(ws.dir, name);
      return writeFile(p, JSON.stringify(metadata)).then(() => p);
    };
    const confidential = await file('confidential.json', {
      client_name: 'Ward dashboard',
      redirect_uris: ['https://ward.example/callback'],
      grant_types: ['authorization_code', 'refresh_token'],
      scope: 'openid fhirUser offline_access',
      resource_scope: 'patient/Observation.rs',
    });
    const publicClient = await file('public.json', {
      client_id: 'bedside-app',
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      redirect_uris: ['https://bedside.example/callback'],
    });
    const fragment = await file('fragment.json', { redirect_uris: ['https://evil.example/cb#fragment'] });
    const badMethod = await file('bad-method.json', {
      redirect_uris: ['https://ok.example/cb'], token_endpoint_auth_method: 'magic_auth',
    });

    // One at a time: they share one database.
    const added = result(await ws.run(['client', 'add', confidential]));
    const addedPublic = result(await ws.run(['client', 'add', publicClient]));
    const fragmentRun = await ws.run(['client', 'add', fragment]);
    const badMethodRun = await ws.run(['client', 'add', badMethod]);

    assert.deepEqual(Object.keys(added).sort(), ['client_id', 'client_secret']);
    const secret = added.client_secret as string;
    assert.ok(secret.length >= 32);
    assert.deepEqual(addedPublic, { client_id: 'bedside-app' });
    failure(fragmentRun, 1, /redirect_uris must not contain fragments/);
    failure(badMethodRun, 1, /client refused: token_endpoint_auth_method must be one of/);
    const registered = await ws.query<{ target_client: string }>(
      "SELECT target_client FROM audit_events WHERE type = 'admin.client_registered' ORDER BY seq",
    );
    assert.deepEqual(registered.map((r) => r.target_client), [added.client_id, 'bedside-app'], 'registrations are audited, refusals are not registrations');
    const rows = await ws.query<{ client_id: string; metadata: Record<string, unknown> }>(
      'SELECT client_id, metadata FROM clients ORDER BY client_id',
    );
    assert.deepEqual(rows.map((r) => r.client_id).sort(), ['bedside-app', added.client_id].sort());
    const stored = rows.find((r) => r.client_id === added.client_id)!.metadata;
    assert.ok(!JSON.stringify(stored).includes(secret), 'the secret itself is not stored');
    assert.match(String(stored.client_secret), /^hmac-sha256:/);
    const { clientSecretKey } = await loadOrCreateSecrets(ws.dir, { allowGenerate: false });
    assert.equal(stored.client_secret, digestClientSecret(clientSecretKey, secret), 'keyed with the server secret in KEYS_DIR');
    assert.equal(stored.resource_scope, 'patient/Observation.rs');
    assert.equal(rows.find((r) => r.client_id === 'bedside-app')!.metadata.client_secret, undefined);
  });

  test('seed: an invalid file names the bad field and changes nothing; a valid one is applied', async (t) => {
    const ws = await workspace(t, { database: 'migrated' });
    const invalid = path.join(ws.dir, 'invalid-seed.json');
    await writeFile(invalid, JSON.stringify({
      users: [{ username: 'dr.ok', password: 'long-enough-password' }, { username: 'dr.bad', password: 'short' }],
    }));
    failure(await ws.run(['seed', invalid]), 1, /users\.1\.password: password must have at least 12 characters/);
    failure(await ws.run(['seed', path.join(ws.dir, 'missing.json')]), 1, /cannot read seed file/);

    const summary = result(await ws.run(['seed', path.join(ROOT, 'seeds/demo.json')]));
    assert.deepEqual(summary, {
      users: ['dr.demo'], patients: ['p1', 'p2', 'p3'], careTeam: 2, roles: ['clinician'],
      resourceServers: ['https://localhost:9443/r4'], clients: ['demo-app', 'demo-service', 'demo-orchestrator'],
      exchangePolicies: 1,
    });
    const users = await ws.query<{ username: string }>('SELECT username FROM users');
    assert.deepEqual(users.map((u) => u.username), ['dr.demo'], 'the invalid seed created nobody');
  });

  test('keys rotate: a new ES256 key is published at once and signs two reload intervals later; the old one stays published', async (t) => {
    const ws = await workspace(t, { database: 'none' });
    failure(await ws.run(['keys', 'rotate']), 1, /no signing keys to rotate/);

    const before = await loadOrCreateSigningKeys(ws.dir, { allowGenerate: true });
    const rotated = result(await ws.run(['keys', 'rotate']));
    const after = await loadOrCreateSigningKeys(ws.dir, { allowGenerate: false });

    const firstEs256 = (set: SigningKeySet, at?: Date) => providerJwks(set, at).keys.find((k) => k.alg === 'ES256')!.kid;
    const oldKid = firstEs256(before);
    // KEYS_RELOAD_INTERVAL 30 s: the new keys sign from 60 s on, so every server has them by then.
    const activeFrom = Date.parse(rotated.activeFrom as string);
    assert.ok(Math.abs(activeFrom - (Date.now() + 60_000)) < 30_000, 'activation two reload intervals ahead');
    assert.equal(firstEs256(after), oldKid, 'until then the old key signs');
    const newKid = firstEs256(after, new Date(activeFrom));
    assert.notEqual(newKid, oldKid);
    assert.ok((rotated.added as string[]).includes(newKid!));
    assert.ok(providerJwks(after).keys.some((k) => k.kid === newKid), 'the new key is published before it signs');
    assert.deepEqual([...(rotated.retired as string[])].sort(), before.keys.map((k) => k.kid).sort());
    assert.deepEqual(rotated.removed, []);
    const published = providerJwks(after, new Date(activeFrom)).keys.map((k) => k.kid);
    assert.ok(published.includes(oldKid), 'the retired key is still published');
    const retireAfter = Date.parse(after.keys.find((k) => k.kid === oldKid)!.retireAfter!);
    // From activation: the longest token a key may have signed (resource servers may allow up to 3600 s) + reload interval 30 s.
    assert.ok(Math.abs(retireAfter - (activeFrom + 3_630_000)) < 30_000, 'retired for the longest token lifetime plus the reload interval');
  });
});
