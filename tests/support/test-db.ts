// A fresh database per test file: a randomly named PostgreSQL database on DATABASE_URL's server
// (dropped afterwards), or an in-memory PGlite when DATABASE_URL is not set.
import { randomBytes } from 'node:crypto';

import pg from 'pg';

import type { Db } from '../../src/db/index.ts';
import { createPgliteDb } from '../../src/db/pglite.ts';
import { createPostgresDb } from '../../src/db/postgres.ts';

export interface TestDb {
  db: Db;
  /** Connection string of the test database (PostgreSQL only): lets a second process share it. */
  url: string | undefined;
  /** Opens another independent connection pool on the same database (PostgreSQL only). */
  openAnother(): Db | undefined;
  drop(): Promise<void>;
}

export async function createTestDb(): Promise<TestDb> {
  const adminUrl = process.env.DATABASE_URL;
  if (!adminUrl) {
    const db = await createPgliteDb(undefined);
    return { db, url: undefined, openAnother: () => undefined, drop: () => db.close() };
  }
  const name = `authz_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(adminUrl);
  url.pathname = `/${name}`;
  const db = createPostgresDb(url.href, 5);
  const others: Db[] = [];
  return {
    db,
    url: url.href,
    openAnother() {
      const other = createPostgresDb(url.href, 5);
      others.push(other);
      return other;
    },
    async drop() {
      await Promise.all([db, ...others].map((d) => d.close().catch(() => {})));
      const cleanup = new pg.Client({ connectionString: adminUrl });
      await cleanup.connect();
      await cleanup.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await cleanup.end();
    },
  };
}
