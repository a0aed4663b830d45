// Numbered SQL migrations from migrations/: each applied once, in its own transaction, and recorded
// with a SHA-256 of its file so that a migration edited after it was applied stops the start.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import type { Db, Queryable } from './db.ts';

export const MIGRATIONS_DIR = fileURLToPath(new URL('../../migrations/', import.meta.url));

// Serialises migration runs of several processes starting at once against one PostgreSQL.
const MIGRATION_LOCK_KEY = 7_362_001;

export interface Migration {
  version: number;
  name: string;
  /** The file name, for messages. */
  file: string;
  sql: string;
  /** SHA-256 of the file's bytes, hex. */
  checksum: string;
}

/** The migrations on disk do not match the database: refuse to start rather than guess. */
export class MigrationError extends Error {
  override name = 'MigrationError';
}

export async function readMigrations(dir = MIGRATIONS_DIR): Promise<Migration[]> {
  const files = (await fs.readdir(dir)).filter((f) => f.endsWith('.sql'));
  const migrations: Migration[] = [];
  for (const file of files) {
    const match = /^(\d{3,})_([a-z0-9_]+)\.sql$/.exec(file);
    if (!match) throw new MigrationError(`migration file name must look like 001_name.sql: ${file}`);
    const bytes = await fs.readFile(path.join(dir, file));
    migrations.push({
      version: Number(match[1]),
      name: match[2]!,
      file,
      sql: bytes.toString('utf8'),
      checksum: createHash('sha256').update(bytes).digest('hex'),
    });
  }
  // By number: 1000_x comes after 999_y (a text sort would put it first).
  migrations.sort((a, b) => a.version - b.version);
  for (let i = 1; i < migrations.length; i += 1) {
    if (migrations[i]!.version === migrations[i - 1]!.version) {
      throw new MigrationError(`two migrations share version ${migrations[i]!.version}: ${migrations[i - 1]!.file} and ${migrations[i]!.file}`);
    }
  }
  return migrations;
}

function changedError(migration: Migration, recorded: string): MigrationError {
  return new MigrationError(
    `migration ${migration.file} was changed after it was applied (recorded sha256 ${recorded}, file has ${migration.checksum}): `
    + 'restore the applied text and put the change in a new migration',
  );
}

/**
 * Inside a migration transaction: waits for other processes' runs (the advisory lock) and lifts the
 * pool's statement_timeout, which is for requests, not for schema changes on large tables.
 */
async function lockForMigration(tx: Queryable): Promise<void> {
  await tx.exec(`SET LOCAL statement_timeout = 0; SELECT pg_advisory_xact_lock(${MIGRATION_LOCK_KEY})`);
}

/**
 * Checks every applied migration against its file: records the checksum of rows applied before
 * checksums existed (trusting the file as it is now), throws MigrationError for a changed one.
 */
async function verifyApplied(tx: Queryable, migrations: readonly Migration[]): Promise<void> {
  const byVersion = new Map(migrations.map((m) => [m.version, m]));
  const { rows } = await tx.query<{ version: number; checksum: string | null }>(
    'SELECT version, checksum FROM schema_migrations ORDER BY version',
  );
  for (const row of rows) {
    const migration = byVersion.get(Number(row.version));
    if (!migration) continue; // applied by a newer release; nothing on disk to compare
    if (row.checksum === null) {
      await tx.query('UPDATE schema_migrations SET checksum = $1 WHERE version = $2 AND checksum IS NULL', [migration.checksum, migration.version]);
    } else if (row.checksum !== migration.checksum) {
      throw changedError(migration, row.checksum);
    }
  }
}

/**
 * Applies pending migrations; returns the versions applied by this call (empty when up to date).
 * Throws MigrationError, before applying anything, when an applied migration's file has changed.
 */
export async function migrate(db: Db, dir = MIGRATIONS_DIR): Promise<number[]> {
  const migrations = await readMigrations(dir);
  await db.transaction(async (tx) => {
    await lockForMigration(tx);
    await tx.exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now(),
      checksum text
    );
    ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text`);
    await verifyApplied(tx, migrations);
  });
  const applied: number[] = [];
  for (const migration of migrations) {
    const done = await db.transaction(async (tx) => {
      await lockForMigration(tx);
      const existing = await tx.query<{ checksum: string | null }>(
        'SELECT checksum FROM schema_migrations WHERE version = $1', [migration.version],
      );
      if (existing.rows.length > 0) {
        const recorded = existing.rows[0]!.checksum;
        if (recorded !== null && recorded !== migration.checksum) throw changedError(migration, recorded);
        return false;
      }
      await tx.exec(migration.sql);
      await tx.query(
        'INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)',
        [migration.version, migration.name, migration.checksum],
      );
      return true;
    });
    if (done) applied.push(migration.version);
  }
  return applied;
}
