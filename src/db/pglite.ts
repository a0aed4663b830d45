// Embedded PGlite back-end: the zero-install default for development and tests.
import fs from 'node:fs/promises';
import path from 'node:path';

import { PGlite, type PGliteOptions } from '@electric-sql/pglite';

import {
  assertStorableParams, DatabaseUnavailableError, translateError, translateScriptError, type Db, type Queryable, type QueryResult, type Row,
} from './db.ts';

export class DatabaseInUseError extends Error {
  override name = 'DatabaseInUseError';
}

const LOCK_FILE = '.clinical-authz.lock';

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * PGlite is single-process: a second process opening the same directory would see stale data and
 * could corrupt it. A pid lock file makes the second opener fail with a clear message instead.
 */
async function lockDataDir(dataDir: string): Promise<() => Promise<void>> {
  const file = path.join(dataDir, LOCK_FILE);
  for (let attempt = 0; attempt < 2; attempt += 1) {
    try {
      await fs.writeFile(file, String(process.pid), { flag: 'wx', mode: 0o600 });
      return () => fs.rm(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const holder = Number((await fs.readFile(file, 'utf8').catch(() => '')).trim());
      if (Number.isInteger(holder) && holder > 0 && processAlive(holder)) {
        throw new DatabaseInUseError(`embedded database ${dataDir} is in use by process ${holder}: stop it first, or use DATABASE_URL`);
      }
      await fs.rm(file, { force: true }); // stale lock of a process that is gone
    }
  }
  throw new DatabaseInUseError(`embedded database ${dataDir} is locked`);
}

// Compiled once per process and shared by every PGlite instance: tests open many, and compiling (then
// garbage-collecting) a fresh copy of PostgreSQL's WebAssembly each time is slow and has crashed V8.
type WasmModule = NonNullable<PGliteOptions['pgliteWasmModule']>;
// The DOM lib (WebAssembly's types) is not in this project's tsconfig; the runtime has it.
const wasm = (globalThis as unknown as { WebAssembly: { compile(bytes: Uint8Array): Promise<WasmModule> } }).WebAssembly;
let compiledModules: Promise<{ pgliteWasmModule: WasmModule; initdbWasmModule: WasmModule }> | undefined;
function pgliteModules() {
  compiledModules ??= (async () => {
    const dist = new URL('.', import.meta.resolve('@electric-sql/pglite'));
    const [pglite, initdb] = await Promise.all([
      fs.readFile(new URL('pglite.wasm', dist)), fs.readFile(new URL('initdb.wasm', dist)),
    ]);
    return { pgliteWasmModule: await wasm.compile(pglite), initdbWasmModule: await wasm.compile(initdb) };
  })();
  return compiledModules;
}

/** dataDir undefined keeps the database in memory (tests). */
export async function createPgliteDb(dataDir: string | undefined): Promise<Db> {
  let unlock = async () => {};
  if (dataDir) {
    await fs.mkdir(dataDir, { recursive: true, mode: 0o700 });
    unlock = await lockDataDir(dataDir);
  }
  const pglite = new PGlite({ ...(dataDir ? { dataDir } : {}), ...await pgliteModules() });
  try {
    await pglite.waitReady;
  } catch (err) {
    await unlock();
    throw err;
  }

  const wrap = (target: Pick<PGlite, 'query' | 'exec'>): Queryable => ({
    async exec(sql: string) {
      try {
        await target.exec(sql);
      } catch (err) {
        throw translateScriptError(err);
      }
    },
    async query<R extends Row>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
      assertStorableParams(params);
      try {
        const result = await target.query<R>(sql, params as unknown[] | undefined);
        return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
      } catch (err) {
        throw translateError(err);
      }
    },
  });
  const root = wrap(pglite);

  return {
    kind: 'pglite',
    query: root.query,
    exec: root.exec,
    // PGlite serialises queries: inside fn use only tx, never the outer Db (it would wait forever).
    transaction: (fn) => pglite.transaction((tx) => fn(wrap(tx))),
    async ping() {
      if (pglite.closed) throw new DatabaseUnavailableError(new Error('embedded database closed'));
      await root.query('SELECT 1');
    },
    async close() {
      await pglite.close();
      await unlock();
    },
  };
}
