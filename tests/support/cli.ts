// Running the admin CLI as operators do: a real child process with the server's environment variables.
// (The same helpers as in tests/cli.test.ts, shared here for other CLI tests.)
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';

import type { Db } from '../../src/db/index.ts';
import { migrate } from '../../src/db/migrate.ts';
import { createPgliteDb } from '../../src/db/pglite.ts';
import { createTestDb } from './test-db.ts';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function runCli(env: NodeJS.ProcessEnv, args: string[], stdin?: string): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { cwd: ROOT, env });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => { stdout += d; });
    child.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.on('error', () => {}); // the CLI may exit before reading stdin
    child.stdin.end(stdin ?? '');
  });
}

/** The environment of a CLI run: KEYS_DIR and DATA_DIR in `dir`, PostgreSQL at databaseUrl or else PGlite. */
export function cliEnv(dir: string, databaseUrl: string | undefined): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, KEYS_DIR: dir, DATA_DIR: dir, NODE_ENV: 'test', DEMO_SEED: 'false' };
  delete env.NODE_TEST_CONTEXT;
  if (databaseUrl) env.DATABASE_URL = databaseUrl;
  else delete env.DATABASE_URL;
  return env;
}

/** The single JSON object a successful command prints (and nothing else on stdout). */
export function result(run: Run): Record<string, unknown> {
  assert.equal(run.code, 0, `exit code 0 expected; stderr: ${run.stderr}`);
  assert.match(run.stdout, /^\{.*\}\n$/, 'stdout holds exactly one JSON line');
  return JSON.parse(run.stdout) as Record<string, unknown>;
}

/** A failure: the expected exit code, nothing on stdout, one `clinical-authz: ...` line on stderr. */
export function failure(run: Run, code: number, message: RegExp): void {
  assert.equal(run.code, code, `exit code ${code} expected; stderr: ${run.stderr}`);
  assert.equal(run.stdout, '');
  assertOneErrorLine(run, message);
}

/** One `clinical-authz: ...` line on stderr, matching message, without a stack trace. */
export function assertOneErrorLine(run: Run, message: RegExp): void {
  assert.match(run.stderr, /^clinical-authz: [^\n]+\n$/, 'one line on stderr');
  assert.match(run.stderr, message);
  assert.doesNotMatch(run.stderr, /\n\s+at /, 'no stack trace');
}

/** A temporary directory removed after the test. */
export async function tempDir(t: TestContext, prefix = 'cli-test-'): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

export interface CliDatabase {
  /** DATABASE_URL for the CLI; undefined: the embedded database under the workspace's DATA_DIR. */
  url: string | undefined;
  /** Runs fn with the database. PGlite is opened only for fn: a CLI process needs the directory alone. */
  withDb<T>(fn: (db: Db) => Promise<T>): Promise<T>;
}

/** A migrated database for CLI tests: a fresh PostgreSQL database (DATABASE_URL set) or PGlite under `dir`. */
export async function cliDatabase(t: TestContext, dir: string): Promise<CliDatabase> {
  let database: CliDatabase;
  if (process.env.DATABASE_URL) {
    const testDb = await createTestDb();
    t.after(() => testDb.drop());
    database = { url: testDb.url, withDb: (fn) => fn(testDb.db) };
  } else {
    database = {
      url: undefined,
      async withDb(fn) {
        const db = await createPgliteDb(path.join(dir, 'pglite'));
        try {
          return await fn(db);
        } finally {
          await db.close();
        }
      },
    };
  }
  await database.withDb((db) => migrate(db));
  return database;
}
