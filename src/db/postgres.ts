// PostgreSQL back-end through pg.Pool.
import pg from 'pg';

import { DatabaseUnavailableError, translateError, type Db, type Queryable, type QueryResult, type Row } from './db.ts';

// int8 (count(*), bigserial) as a JS number, as PGlite returns it; our values stay far below 2^53.
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === 20 ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

export function createPostgresDb(connectionString: string, poolSize: number): Db {
  const pool = new pg.Pool({
    connectionString,
    max: poolSize,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    types,
  });
  // An idle client losing its connection must not crash the process; the next query reports it.
  pool.on('error', () => {});

  const run = async <R extends Row>(client: pg.Pool | pg.PoolClient, sql: string, params?: readonly unknown[]) => {
    try {
      const result = await client.query(sql, params as unknown[] | undefined);
      return { rows: result.rows as R[], rowCount: result.rowCount ?? 0 } satisfies QueryResult<R>;
    } catch (err) {
      throw translateError(err);
    }
  };

  return {
    kind: 'postgres',
    pgPool: pool,
    query: (sql, params) => run(pool, sql, params),
    exec: async (sql) => { await run(pool, sql); },
    async transaction(fn) {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (err) {
        throw translateError(err);
      }
      const tx: Queryable = {
        query: (sql, params) => run(client, sql, params),
        exec: async (sql) => { await run(client, sql); },
      };
      let broken: unknown;
      try {
        await tx.query('BEGIN');
        const result = await fn(tx);
        await tx.query('COMMIT');
        return result;
      } catch (err) {
        await client.query('ROLLBACK').catch((rollbackErr: unknown) => { broken = rollbackErr; });
        throw err;
      } finally {
        // A client whose rollback failed is in an unknown state: destroy it rather than reuse it.
        client.release(broken instanceof Error ? broken : undefined);
      }
    },
    async ping() {
      const result = await run(pool, 'SELECT 1 AS ok').catch((err: unknown) => {
        throw err instanceof DatabaseUnavailableError ? err : new DatabaseUnavailableError(err);
      });
      if (result.rows.length !== 1) throw new DatabaseUnavailableError(new Error('unexpected ping answer'));
    },
    close: () => pool.end(),
  };
}
