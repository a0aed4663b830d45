// Chooses the back-end: PostgreSQL when DATABASE_URL is set, embedded PGlite under DATA_DIR otherwise.
import path from 'node:path';

import type { Config } from '../config.ts';
import type { Db } from './db.ts';
import { createPgliteDb } from './pglite.ts';
import { createPostgresDb } from './postgres.ts';

export async function openDb(config: Pick<Config, 'databaseUrl' | 'databasePoolSize' | 'dataDir'>): Promise<Db> {
  if (config.databaseUrl) return createPostgresDb(config.databaseUrl, config.databasePoolSize);
  return createPgliteDb(path.join(config.dataDir, 'pglite'));
}

export type { Db, Queryable } from './db.ts';
