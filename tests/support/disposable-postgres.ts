// A throwaway PostgreSQL cluster the test owns: initdb in a temporary directory, trust authentication,
// 127.0.0.1 only, a free port, and pg_ctl to stop it (fast or immediate), start it again and remove it.
// A test may take it down while a server uses it, which no shared DATABASE_URL server allows.
//
// initdb and the server refuse to run as root: as root, every command runs as the `postgres` OS user
// (runuser) in a directory chowned to it; as anyone else, directly.
import { execFile, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** Where the PostgreSQL binaries are looked for, first match wins (PG_BINDIR overrides). */
const BIN_DIRS = [
  process.env.PG_BINDIR,
  '/usr/local/bin',
  ...['17', '16', '15', '14', '13'].map((v) => `/usr/lib/postgresql/${v}/bin`),
  '/usr/bin',
].filter((d): d is string => Boolean(d));

export interface PostgresBinaries {
  initdb: string;
  pgCtl: string;
}

const executable = (file: string) => {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
};

/** initdb and pg_ctl from one directory, or undefined when this machine has none. */
export function findPostgresBinaries(): PostgresBinaries | undefined {
  for (const dir of BIN_DIRS) {
    const initdb = path.join(dir, 'initdb');
    const pgCtl = path.join(dir, 'pg_ctl');
    if (executable(initdb) && executable(pgCtl)) return { initdb, pgCtl };
  }
  return undefined;
}

/** Why a disposable cluster cannot be made here (for a test's `skip`), or undefined when it can. */
export function disposablePostgresUnavailable(): string | undefined {
  if (!findPostgresBinaries()) return `initdb/pg_ctl not found (looked in ${BIN_DIRS.join(', ')}; set PG_BINDIR)`;
  if (process.getuid?.() === 0 && !postgresUser()) return 'running as root and there is no `postgres` OS user to run initdb as';
  return undefined;
}

function postgresUser(): { uid: number; gid: number } | undefined {
  try {
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    return Number.isInteger(uid) && Number.isInteger(gid) ? { uid, gid } : undefined;
  } catch {
    return undefined;
  }
}

/** A port nobody listens on right now (the kernel's pick; another process could take it before us). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export type StopMode = 'smart' | 'fast' | 'immediate';

export interface DisposablePostgres {
  /** postgres://postgres@127.0.0.1:PORT/postgres */
  url: string;
  port: number;
  dir: string;
  running: boolean;
  /** pg_ctl stop -m MODE, waiting until the server is gone. */
  stop(mode?: StopMode): Promise<void>;
  /** pg_ctl start, waiting until it accepts connections (after crash recovery, for an immediate stop). */
  start(): Promise<void>;
  restart(mode?: StopMode): Promise<void>;
  /** The server's own log (startup, shutdown, crash recovery). */
  log(): string;
  /** Stops it (immediate) and removes its directory; safe to call twice. */
  destroy(): Promise<void>;
}

export interface DisposablePostgresOptions {
  /** Extra `postgresql.conf` lines. */
  settings?: Record<string, string | number>;
}

/**
 * Creates and starts a cluster. Durability settings: fsync=off (the data dies with the test, and a
 * stopped or crashed PostgreSQL still finds its WAL in the OS page cache), but synchronous_commit stays
 * ON: with it off, an immediate stop could lose transactions the server had reported committed, and a
 * test of "what was answered was recorded" would see losses that are the test's own doing.
 */
export async function createDisposablePostgres(options: DisposablePostgresOptions = {}): Promise<DisposablePostgres> {
  const bins = findPostgresBinaries();
  if (!bins) throw new Error(disposablePostgresUnavailable());
  const owner = process.getuid?.() === 0 ? postgresUser() : undefined;
  if (process.getuid?.() === 0 && !owner) throw new Error(disposablePostgresUnavailable());

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'authz-pg-'));
  const dataDir = path.join(dir, 'data');
  const logFile = path.join(dir, 'postgres.log');
  // The temporary parent is 0700 and ours: the postgres user must be able to enter it.
  if (owner) fs.chownSync(dir, owner.uid, owner.gid);

  const as = (file: string, args: string[]) => (owner ? run('runuser', ['-u', 'postgres', '--', file, ...args]) : run(file, args));
  const asSync = (file: string, args: string[]) => (owner
    ? execFileSync('runuser', ['-u', 'postgres', '--', file, ...args], { stdio: 'ignore', timeout: 15_000 })
    : execFileSync(file, args, { stdio: 'ignore', timeout: 15_000 }));

  let running = false;
  let destroyed = false;
  // A test process that dies without its cleanup (an assertion thrown past it, a signal) must not
  // leave a server running in /tmp: stop and remove it synchronously on the way out.
  const onExit = () => {
    if (destroyed) return;
    try {
      if (running) asSync(bins.pgCtl, ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '10']);
    } catch { /* already gone */ }
    fs.rmSync(dir, { recursive: true, force: true });
  };
  process.once('exit', onExit);

  const fail = async (err: unknown): Promise<never> => {
    const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8').slice(-2_000) : '';
    await destroy();
    throw new Error(`disposable PostgreSQL: ${(err as Error).message}${log ? `\n--- postgres.log ---\n${log}` : ''}`, { cause: err });
  };

  const pgCtl = (args: string[]) => as(bins.pgCtl, ['-D', dataDir, ...args]);
  const start = async () => {
    await pgCtl(['start', '-w', '-t', '30', '-l', logFile]);
    running = true;
  };
  const stop = async (mode: StopMode = 'fast') => {
    await pgCtl(['stop', '-m', mode, '-w', '-t', '30']);
    running = false;
  };
  async function destroy() {
    if (destroyed) return;
    try {
      if (running || fs.existsSync(path.join(dataDir, 'postmaster.pid'))) await stop('immediate');
    } catch { /* not running */ }
    running = false;
    destroyed = true;
    process.off('exit', onExit);
    fs.rmSync(dir, { recursive: true, force: true });
  }

  let port = 0;
  try {
    await as(bins.initdb, ['-D', dataDir, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--no-locale', '--no-sync']);
    port = await freePort();
    const settings: Record<string, string | number> = {
      listen_addresses: "'127.0.0.1'",
      port,
      // Its own socket directory: the system one may be missing, shared or not writable.
      unix_socket_directories: `'${dir}'`,
      fsync: 'off',
      full_page_writes: 'off',
      synchronous_commit: 'on',
      max_connections: 100,
      shared_buffers: "'32MB'",
      ...options.settings,
    };
    fs.appendFileSync(path.join(dataDir, 'postgresql.conf'),
      `\n# disposable-postgres\n${Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`);
    await start();
  } catch (err) {
    return fail(err);
  }

  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    dir,
    get running() { return running; },
    stop,
    start,
    async restart(mode: StopMode = 'fast') {
      await stop(mode);
      await start();
    },
    log: () => (fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : ''),
    destroy,
  };
}
