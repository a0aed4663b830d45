// The storage boundary: how driver failures are classified (503 vs 400), NUL characters refused before
// they reach the database, pool exhaustion, and the migration runner (order, checksums, re-runs).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';

import {
  assertStorableParams, DatabaseUnavailableError, InvalidInputError, translateError, type Db,
} from '../src/db/db.ts';
import { migrate, MigrationError, MIGRATIONS_DIR, readMigrations } from '../src/db/migrate.ts';
import { createPostgresDb } from '../src/db/postgres.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

const POSTGRES = process.env.DATABASE_URL ? false : 'needs PostgreSQL (DATABASE_URL)';

function withCode(message: string, code: string): Error {
  return Object.assign(new Error(message), { code });
}

function assertInvalidInput(err: unknown): true {
  assert.ok(err instanceof InvalidInputError, `InvalidInputError expected, got ${(err as Error)?.name}: ${(err as Error)?.message}`);
  assert.equal(err.status, 400);
  assert.equal(err.statusCode, 400);
  assert.equal(err.expose, true);
  // oidc-provider renders `message` as the error code.
  assert.equal(err.message, 'invalid_request');
  assert.equal(err.error, 'invalid_request');
  assert.equal(err.error_description, 'request contains a character that is not allowed');
  return true;
}

async function tempDir(t: TestContext, files: Record<string, string>): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'authz-migrations-'));
  t.after(() => fs.rm(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) await fs.writeFile(path.join(dir, name), text);
  return dir;
}

async function freshDb(t: TestContext): Promise<Db> {
  const testDb = await createTestDb();
  t.after(() => testDb.drop());
  return testDb.db;
}

describe('error classification (unit)', () => {
  test('pool exhaustion is DatabaseUnavailableError (503)', () => {
    const err = translateError(new Error('timeout exceeded when trying to connect'));
    assert.ok(err instanceof DatabaseUnavailableError);
    assert.equal(err.status, 503);
    assert.equal(err.message, 'temporarily_unavailable');
  });

  test('stalled, overloaded or read-only databases are DatabaseUnavailableError', () => {
    for (const err of [
      new Error('Query read timeout'), // pg query_timeout
      withCode('sorry, too many clients already', '53300'),
      withCode('out of memory', '53200'),
      withCode('could not extend file: No space left on device', '53100'),
      withCode('cannot execute INSERT in a read-only transaction', '25006'),
      withCode('canceling statement due to statement timeout', '57014'),
      withCode('terminating connection due to idle-in-transaction timeout', '25P03'),
      withCode('terminating connection due to administrator command', '57P01'),
      withCode('connect ECONNREFUSED 127.0.0.1:1', 'ECONNREFUSED'),
      new Error('Connection terminated unexpectedly'),
    ]) {
      assert.ok(translateError(err) instanceof DatabaseUnavailableError, `${err.message} is unavailable`);
    }
  });

  test('text the database cannot hold is InvalidInputError (400 invalid_request)', () => {
    for (const code of ['22021', '22P05', '22P02']) {
      const cause = withCode('invalid byte sequence for encoding "UTF8": 0x00', code);
      const err = translateError(cause);
      assertInvalidInput(err);
      assert.equal((err as Error).cause, cause);
    }
  });

  test('other errors pass through unchanged; translated ones are not wrapped twice', () => {
    for (const err of [withCode('duplicate key value', '23505'), withCode('syntax error', '42601'), new Error('something else')]) {
      assert.equal(translateError(err), err);
    }
    assert.equal(translateError('not an error'), 'not an error');
    const unavailable = new DatabaseUnavailableError(new Error('x'));
    assert.equal(translateError(unavailable), unavailable);
    const invalid = new InvalidInputError();
    assert.equal(translateError(invalid), invalid);
  });

  test('assertStorableParams: NUL in any string parameter, also inside arrays', () => {
    assert.throws(() => assertStorableParams(['a\0b']), assertInvalidInput);
    assert.throws(() => assertStorableParams([1, 'ok', ['x', '\0']]), assertInvalidInput);
    assert.throws(() => assertStorableParams([[['deep\0']]]), assertInvalidInput);
    assertStorableParams(undefined);
    assertStorableParams([]);
    assertStorableParams(['a', 1, null, undefined, true, ['b', 'c'], Buffer.from([0, 1, 2]), { nested: 'not checked here' }]);
  });
});

describe('the Db boundary', () => {
  let testDb: TestDb;
  before(async () => {
    testDb = await createTestDb();
  });
  after(async () => {
    await testDb?.drop();
  });

  test('a NUL in a parameter is refused with InvalidInputError, before it reaches the database', async () => {
    const { db } = testDb;
    await assert.rejects(db.query('SELECT $1::text AS v', ['a\0b']), assertInvalidInput);
    await assert.rejects(db.query('SELECT $1::text[] AS v', [['ok', 'a\0b']]), assertInvalidInput);
    // The same connection (PGlite has only one) still works.
    assert.deepEqual((await db.query('SELECT $1::text AS v', ['a b'])).rows, [{ v: 'a b' }]);
  });

  test('in a transaction: tx.query refuses a NUL too, and the transaction rolls back', async () => {
    const { db } = testDb;
    await db.exec('CREATE TABLE IF NOT EXISTS db_test_rows (v text)');
    await assert.rejects(db.transaction(async (tx) => {
      await tx.query('INSERT INTO db_test_rows (v) VALUES ($1)', ['kept?']);
      await tx.query('SELECT * FROM db_test_rows WHERE v = $1', ['a\0b']);
    }), assertInvalidInput);
    assert.deepEqual((await db.query('SELECT v FROM db_test_rows')).rows, []);
    // A caller that handles the refusal inside the transaction can go on: nothing was sent.
    const n = await db.transaction(async (tx) => {
      await tx.query('SELECT 1 WHERE $1::text IS NULL', ['x\0']).catch((err: unknown) => { assertInvalidInput(err); });
      await tx.query('INSERT INTO db_test_rows (v) VALUES ($1)', ['after']);
      return (await tx.query<{ n: number }>('SELECT count(*)::int AS n FROM db_test_rows')).rows[0]!.n;
    });
    assert.equal(n, 1);
  });

  test('the driver\'s invalid-input errors (22021, 22P02) become InvalidInputError', async () => {
    const { db } = testDb;
    // 22021 raised by the server itself: a NUL byte decoded as UTF-8.
    await assert.rejects(db.query(String.raw`SELECT convert_from('\x00'::bytea, 'UTF8') AS v`), assertInvalidInput);
    // 22P02: text where a number is expected.
    await assert.rejects(db.query('SELECT $1::int AS v', ['abc']), assertInvalidInput);
    await assert.rejects(db.transaction((tx) => tx.query('SELECT $1::uuid AS v', ['not-a-uuid'])), assertInvalidInput);
    // Other errors are not mistaken for bad input.
    await assert.rejects(db.query('SELECT * FROM no_such_table'), (err: Error) => !(err instanceof InvalidInputError) && /no_such_table/.test(err.message));
  });
});

describe('PostgreSQL pool', { skip: POSTGRES }, () => {
  let testDb: TestDb;
  before(async () => {
    testDb = await createTestDb();
  });
  after(async () => {
    await testDb?.drop();
  });

  test('pool exhausted (its only connection held by an open transaction): DatabaseUnavailableError within connectionTimeoutMillis', async () => {
    const connectionTimeoutMillis = 500;
    const db = createPostgresDb(testDb.url!, 1, { connectionTimeoutMillis });
    try {
      let release!: () => void;
      const held = new Promise<void>((resolve) => { release = resolve; });
      let started!: () => void;
      const inside = new Promise<void>((resolve) => { started = resolve; });
      const holder = db.transaction(async (tx) => {
        await tx.query('SELECT 1');
        started();
        await held;
        return 'done';
      });
      await inside;

      for (const attempt of [() => db.query('SELECT 1'), () => db.transaction((tx) => tx.query('SELECT 1'))]) {
        const t0 = performance.now();
        await assert.rejects(attempt(), (err: unknown) => {
          assert.ok(err instanceof DatabaseUnavailableError, `DatabaseUnavailableError expected, got ${(err as Error)?.name}: ${(err as Error)?.message}`);
          assert.match(((err as Error).cause as Error).message, /timeout exceeded when trying to connect/);
          return true;
        });
        const waited = performance.now() - t0;
        assert.ok(waited >= connectionTimeoutMillis * 0.8 && waited < connectionTimeoutMillis + 1_500, `refused after ${Math.round(waited)} ms`);
      }

      release();
      assert.equal(await holder, 'done');
      assert.deepEqual((await db.query('SELECT 1 AS ok')).rows, [{ ok: 1 }], 'served again once the connection is free');
    } finally {
      await db.close();
    }
  });

  test('sessions carry statement and idle-in-transaction timeouts', async () => {
    const { rows } = await testDb.db.query<{ statement: string; idle: string }>(
      "SELECT current_setting('statement_timeout') AS statement, current_setting('idle_in_transaction_session_timeout') AS idle",
    );
    assert.deepEqual(rows, [{ statement: '10s', idle: '15s' }]);
  });
});

describe('migrations', () => {
  test('readMigrations orders by number: 999_a before 1000_b', async (t) => {
    const dir = await tempDir(t, {
      '1000_b.sql': 'CREATE TABLE mig_b (id int);',
      '999_a.sql': 'CREATE TABLE mig_a (id int);',
      '0998_z.sql': 'SELECT 1;',
      'README.txt': 'not a migration',
    });
    const migrations = await readMigrations(dir);
    assert.deepEqual(migrations.map((m) => [m.version, m.name, m.file]), [[998, 'z', '0998_z.sql'], [999, 'a', '999_a.sql'], [1000, 'b', '1000_b.sql']]);
    assert.equal(migrations[1]!.checksum, createHash('sha256').update('CREATE TABLE mig_a (id int);').digest('hex'));
  });

  test('readMigrations refuses two files with one version and a badly named file', async (t) => {
    await assert.rejects(readMigrations(await tempDir(t, { '001_a.sql': '', '0001_b.sql': '' })), (e: Error) => e instanceof MigrationError && /001_a\.sql/.test(e.message) && /0001_b\.sql/.test(e.message));
    await assert.rejects(readMigrations(await tempDir(t, { '01_short.sql': '' })), (e: Error) => e instanceof MigrationError && /01_short\.sql/.test(e.message));
  });

  test('the real migrations apply in order; applying them again is a no-op', async (t) => {
    const db = await freshDb(t);
    const all = (await readMigrations(MIGRATIONS_DIR)).map((m) => m.version);
    assert.deepEqual(await migrate(db), all);
    assert.deepEqual(await migrate(db), []);
    const { rows } = await db.query<{ version: number; checksum: string }>('SELECT version, checksum FROM schema_migrations ORDER BY version');
    assert.deepEqual(rows.map((r) => r.version), all);
    for (const row of rows) assert.match(row.checksum, /^[0-9a-f]{64}$/);
  });

  test('numeric order is the order of application; checksums are recorded', async (t) => {
    const db = await freshDb(t);
    const dir = await tempDir(t, {
      // 1000_b depends on 999_a: a text sort would run it first and fail.
      '999_a.sql': 'CREATE TABLE mig_a (id int PRIMARY KEY);',
      '1000_b.sql': 'CREATE TABLE mig_b (a_id int REFERENCES mig_a (id));',
    });
    assert.deepEqual(await migrate(db, dir), [999, 1000]);
    assert.deepEqual(await migrate(db, dir), [], 'applying twice is a no-op');
    const { rows } = await db.query<{ version: number; name: string; checksum: string }>('SELECT version, name, checksum FROM schema_migrations ORDER BY version');
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    assert.deepEqual(rows, [
      { version: 999, name: 'a', checksum: sha('CREATE TABLE mig_a (id int PRIMARY KEY);') },
      { version: 1000, name: 'b', checksum: sha('CREATE TABLE mig_b (a_id int REFERENCES mig_a (id));') },
    ]);
  });

  test('an applied migration edited afterwards: migrate() throws naming the file, and applies nothing', async (t) => {
    const db = await freshDb(t);
    const dir = await tempDir(t, { '001_a.sql': 'CREATE TABLE mig_a (id int);' });
    assert.deepEqual(await migrate(db, dir), [1]);

    await fs.writeFile(path.join(dir, '001_a.sql'), 'CREATE TABLE mig_a (id int, extra text);');
    await fs.writeFile(path.join(dir, '002_b.sql'), 'CREATE TABLE mig_b (id int);');
    await assert.rejects(migrate(db, dir), (e: Error) => e instanceof MigrationError && /001_a\.sql/.test(e.message) && /changed/.test(e.message));
    const { rows } = await db.query("SELECT to_regclass('mig_b') IS NULL AS absent");
    assert.deepEqual(rows, [{ absent: true }], 'the pending migration was not applied');

    // Even a whitespace change counts; restoring the text lets it start again.
    await fs.writeFile(path.join(dir, '001_a.sql'), 'CREATE TABLE mig_a (id int); ');
    await assert.rejects(migrate(db, dir), MigrationError);
    await fs.writeFile(path.join(dir, '001_a.sql'), 'CREATE TABLE mig_a (id int);');
    assert.deepEqual(await migrate(db, dir), [2]);
  });

  test('a database migrated before checksums existed: the column is added and filled, then checked', async (t) => {
    const db = await freshDb(t);
    // schema_migrations as the previous runner created it, with 001 applied.
    await db.exec(`CREATE TABLE schema_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE mig_a (id int);
    INSERT INTO schema_migrations (version, name) VALUES (1, 'a');`);
    const dir = await tempDir(t, { '001_a.sql': 'CREATE TABLE mig_a (id int);', '002_b.sql': 'CREATE TABLE mig_b (id int);' });

    assert.deepEqual(await migrate(db, dir), [2], 'only the pending one runs');
    const { rows } = await db.query<{ version: number; checksum: string | null }>('SELECT version, checksum FROM schema_migrations ORDER BY version');
    assert.deepEqual(rows.map((r) => r.version), [1, 2]);
    assert.equal(rows[0]!.checksum, createHash('sha256').update('CREATE TABLE mig_a (id int);').digest('hex'), 'filled for the row applied before');
    assert.deepEqual(await migrate(db, dir), []);

    await fs.writeFile(path.join(dir, '001_a.sql'), '-- edited\nCREATE TABLE mig_a (id int);');
    await assert.rejects(migrate(db, dir), (e: Error) => e instanceof MigrationError && /001_a\.sql/.test(e.message));
  });

  test('migrations run without the request statement_timeout', async (t) => {
    const db = await freshDb(t);
    const dir = await tempDir(t, {
      '001_check.sql': `DO $$ BEGIN
        IF current_setting('statement_timeout') <> '0' THEN
          RAISE EXCEPTION 'statement_timeout is % in a migration', current_setting('statement_timeout');
        END IF;
      END $$;`,
    });
    assert.deepEqual(await migrate(db, dir), [1]);
  });

  test('concurrent runs (two pools on one PostgreSQL) apply each migration once', { skip: POSTGRES }, async (t) => {
    const testDb = await createTestDb();
    t.after(() => testDb.drop());
    const other = testDb.openAnother()!;
    const dir = await tempDir(t, { '001_a.sql': 'CREATE TABLE mig_a (id int);', '002_b.sql': 'CREATE TABLE mig_b (id int);' });
    const [first, second] = await Promise.all([migrate(testDb.db, dir), migrate(other, dir)]);
    assert.deepEqual([...first, ...second].sort(), [1, 2]);
  });
});
