// Shared plumbing for the admin CLI: errors with exit codes, argument parsing, and the same
// database, key material and oidc-provider the server builds from the same configuration.
import { readFile } from 'node:fs/promises';
import { parseArgs, type ParseArgsOptionsConfig } from 'node:util';

import type Provider from 'oidc-provider';

import type { Config } from '../config.ts';
import type { Db } from '../db/index.ts';
import type { ServerSecrets } from '../keystore/secrets.ts';
import type { SigningKeySet } from '../keystore/signing-keys.ts';

// The database drivers, key store and oidc-provider are imported when a command needs them, so
// that help and usage errors answer at once.

/** The command line itself is wrong (unknown command or option, missing argument): exit code 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** An expected failure with a message for the operator (invalid input, existing user, ...): exit code 1. */
export class CliError extends Error {
  override name = 'CliError';
}

export interface Command {
  /** Words that select the command, e.g. `user add`. */
  name: string;
  /** Arguments and options after the name, for the usage line. */
  synopsis: string;
  description: string[];
  options?: ReadonlyArray<readonly [flag: string, text: string]>;
  /** What a successful run prints on stdout. */
  output: string;
  /** Resolves to the JSON result printed on stdout. */
  run(args: string[]): Promise<unknown>;
}

/** node:util parseArgs, strict, with its errors turned into one-line usage errors naming the command. */
export function parseCommandArgs<T extends ParseArgsOptionsConfig>(command: string, args: string[], options: T) {
  try {
    return parseArgs({ args, options, strict: true, allowPositionals: true });
  } catch (err) {
    throw new UsageError(`${command}: ${describeParseError(err)}`);
  }
}

function describeParseError(err: unknown): string {
  const { code, message } = err as { code?: string; message: string };
  const quoted = /'([^']*)'/.exec(message)?.[1];
  switch (code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown option ${quoted ?? ''}`.trim();
    case 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL':
      return `unexpected argument '${quoted ?? ''}'`;
    default:
      // e.g. "Option '--username <value>' argument missing": keep the first sentence.
      return (message.split(/\.\s/)[0] ?? message).replace(/^./, (c) => c.toLowerCase());
  }
}

/** Exactly the named positional arguments, or a usage error. */
export function expectPositionals(command: string, positionals: string[], names: readonly string[]): string[] {
  if (positionals.length < names.length) throw new UsageError(`${command}: missing ${names.slice(positionals.length).join(' ')}`);
  if (positionals.length > names.length) throw new UsageError(`${command}: unexpected argument '${positionals[names.length]}'`);
  return positionals;
}

/** Parses a JSON input file, with an error naming the file. */
export async function readJsonFile(file: string, what: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new CliError(`cannot read ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new CliError(`${what} ${file} is not valid JSON: ${(err as Error).message}`);
  }
}

// ---- database ----

let openDatabase: Db | undefined;

/** Closes the database a command has open (signal handlers call it before exiting). */
export async function closeOpenDatabase(): Promise<void> {
  const db = openDatabase;
  openDatabase = undefined;
  if (db) await db.close();
}

/**
 * Runs fn with the server's database (DATABASE_URL, else the embedded one under DATA_DIR) and always
 * closes it. The database is opened on first use, checked, and migrated unless told not to: a
 * command that fails validation before touching it never opens it.
 */
export async function withDatabase<T>(
  config: Config,
  fn: (db: Db) => Promise<T>,
  options: { migrate?: boolean } = {},
): Promise<T> {
  let opening: Promise<Db> | undefined;
  const real = () => (opening ??= openChecked(config, options.migrate !== false));
  const db: Db = {
    kind: config.databaseUrl ? 'postgres' : 'pglite',
    query: async (sql, params) => (await real()).query(sql, params),
    exec: async (sql) => (await real()).exec(sql),
    transaction: async (run) => (await real()).transaction(run),
    ping: async () => (await real()).ping(),
    close: async () => {},
  };
  try {
    return await fn(db);
  } finally {
    if (opening) {
      await opening.catch(() => {}); // also when the check or a migration failed: it is open all the same
      await closeOpenDatabase();
    }
  }
}

async function openChecked(config: Config, runMigrations: boolean): Promise<Db> {
  const { openDb } = await import('../db/index.ts');
  const where = config.databaseUrl ? 'DATABASE_URL' : `embedded database under ${config.dataDir}`;
  let db: Db;
  try {
    db = await openDb(config);
  } catch (err) {
    throw new CliError(`cannot open the database (${where}): ${(err as Error).message}`);
  }
  openDatabase = db;
  try {
    await db.ping();
  } catch (err) {
    const cause = (err as Error).cause as Error | undefined;
    throw new CliError(`database unreachable (${where}): ${cause?.message ?? (err as Error).message}`);
  }
  if (runMigrations) {
    const { migrate } = await import('../db/migrate.ts');
    await migrate(db);
  }
  return db;
}

// ---- key material and oidc-provider ----

export interface KeyMaterial {
  secrets: ServerSecrets;
  signingKeys: SigningKeySet;
}

export interface ProviderContext {
  provider: Provider;
  clientSecretKey: string;
}

/**
 * The server secrets and signing keys, as the server loads them: generated on first use outside
 * production, required (and refused when marked development-only) in production.
 */
export async function loadKeyMaterial(config: Config): Promise<KeyMaterial> {
  const { assertNotDev, loadOrCreateSecrets } = await import('../keystore/secrets.ts');
  const { loadOrCreateSigningKeys } = await import('../keystore/signing-keys.ts');
  const production = config.env === 'production';
  const secrets = await loadOrCreateSecrets(config.keysDir, { allowGenerate: !production });
  const signingKeys = await loadOrCreateSigningKeys(config.keysDir, { allowGenerate: !production });
  if (production) {
    assertNotDev('secrets', secrets.dev);
    assertNotDev('signing keys', signingKeys.dev);
  }
  return { secrets, signingKeys };
}

/** The audit log, keyed like the server's: every admin change the CLI makes is recorded. */
export async function createAuditLog(db: Db, material: KeyMaterial): Promise<import('../audit/log.ts').AuditLog> {
  const [{ AuditLog }, { deriveAuditKeys }] = await Promise.all([import('../audit/log.ts'), import('../audit/keys.ts')]);
  return new AuditLog(db, deriveAuditKeys(material.secrets.auditKey), undefined);
}

/** Actor and rule of every event the CLI records (an operator at the console, not a client). */
export const CLI_AUDIT = { rule: 'admin.cli', details: { via: 'cli' } } as const;

/**
 * An oidc-provider configured exactly like the server's, for its client metadata validation.
 * No listener is started; its logs (there should be none) go to stderr.
 */
export async function createProviderContext(config: Config, db: Db, material: KeyMaterial): Promise<ProviderContext> {
  const [{ pino }, { createLogger }, { providerJwks }, { buildProvider }] = await Promise.all([
    import('pino'), import('../log.ts'), import('../keystore/signing-keys.ts'), import('../oidc/provider.ts'),
  ]);
  const logger = createLogger(config.logLevel, pino.destination({ dest: 2, sync: true }));
  const { provider } = buildProvider({
    config,
    db,
    logger,
    jwks: providerJwks(material.signingKeys),
    cookieKeys: material.secrets.cookieKeys,
    clientSecretKey: material.secrets.clientSecretKey,
  });
  return { provider, clientSecretKey: material.secrets.clientSecretKey };
}
