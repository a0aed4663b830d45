// Embedded PGlite back-end: the zero-install default for development and tests.
import fs from 'node:fs/promises';

import { PGlite } from '@electric-sql/pglite';

import { DatabaseUnavailableError, type Db, type Queryable, type QueryResult, type Row } from './db.ts';

/** dataDir undefined keeps the database in memory (tests). */
export async function createPgliteDb(dataDir: string | undefined): Promise<Db> {
  if (dataDir) await fs.mkdir(dataDir, { recursive: true });
  const pglite = dataDir ? new PGlite(dataDir) : new PGlite();
  await pglite.waitReady;

  const wrap = (target: Pick<PGlite, 'query' | 'exec'>): Queryable => ({
    async exec(sql: string) {
      await target.exec(sql);
    },
    async query<R extends Row>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>> {
      const result = await target.query<R>(sql, params as unknown[] | undefined);
      return { rows: result.rows, rowCount: result.affectedRows ?? result.rows.length };
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
    close: () => pglite.close(),
  };
}
