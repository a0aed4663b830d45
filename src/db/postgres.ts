// PostgreSQL back-end through pg.Pool.
import pg from 'pg';

import {
  assertStorableParams, DatabaseUnavailableError, translateError, translateScriptError, type Db, type Queryable, type QueryResult, type Row,
} from './db.ts';

// int8 (count(*), bigserial) as a JS number, as PGlite returns it; our values stay far below 2^53.
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === 20 ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

/** A request's statement never runs longer than this, on the server (statement_timeout) or as seen by us. */
export const STATEMENT_TIMEOUT_MS = 10_000;
/** A transaction left open without a statement is ended by the server after this. */
export const IDLE_IN_TRANSACTION_TIMEOUT_MS = 15_000;
// Scripts (migrations) may legitimately run long: no client-side read timeout for them (the largest
// value setTimeout accepts; the migration runner lifts statement_timeout for its own transactions).
const SCRIPT_TIMEOUT_MS = 2 ** 31 - 1;

export interface PostgresDbOptions {
  /** How long to wait for a free pooled connection (or a new one) before answering 503. */
  connectionTimeoutMillis?: number;
}

export function createPostgresDb(connectionString: string, poolSize: number, options: PostgresDbOptions = {}): Db {
  const pool = new pg.Pool({
    connectionString,
    max: poolSize,
    connectionTimeoutMillis: options.connectionTimeoutMillis ?? 5_000,
    idleTimeoutMillis: 30_000,
    // A database that stops answering (no RST: a black-holed host) must become a 503, not a hung request.
    query_timeout: STATEMENT_TIMEOUT_MS,
    keepAlive: true,
    // Sent as startup parameters, equivalent to options '-c statement_timeout=... -c ...'; named ones
    // so that an `options` in DATABASE_URL neither replaces nor is replaced by them (a DATABASE_URL
    // `?statement_timeout=` still overrides, deliberately).
    statement_timeout: STATEMENT_TIMEOUT_MS,
    idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_TIMEOUT_MS,
    types,
  });
  // An idle client losing its connection must not crash the process; the next query reports it.
  pool.on('error', () => {});

  const run = async <R extends Row>(client: pg.Pool | pg.PoolClient, sql: string, params?: readonly unknown[]) => {
    assertStorableParams(params);
    try {
      const result = await client.query(sql, params as unknown[] | undefined);
      return { rows: result.rows as R[], rowCount: result.rowCount ?? 0 } satisfies QueryResult<R>;
    } catch (err) {
      throw translateError(err);
    }
  };
  const script = async (client: pg.Pool | pg.PoolClient, sql: string) => {
    try {
      await client.query({ text: sql, query_timeout: SCRIPT_TIMEOUT_MS } as pg.QueryConfig);
    } catch (err) {
      throw translateScriptError(err);
    }
  };

  return {
    kind: 'postgres',
    pgPool: pool,
    query: (sql, params) => run(pool, sql, params),
    exec: (sql) => script(pool, sql),
    async transaction(fn) {
      let client: pg.PoolClient;
      try {
        client = await pool.connect();
      } catch (err) {
        throw translateError(err);
      }
      // pg-pool takes its own 'error' listener off a client while it is checked out, and pg emits
      // 'error' on the client when its connection drops (a PostgreSQL restart, a reset), even with a
      // query running: with no listener, that is an uncaught exception and the process dies. The
      // running query fails on its own (and becomes a 503); here the connection is only marked lost,
      // so the client is destroyed on release instead of going back to the pool.
      let lost: Error | undefined;
      const onError = (err: Error) => { lost = err; };
      client.on('error', onError);
      const tx: Queryable = {
        query: (sql, params) => run(client, sql, params),
        exec: (sql) => script(client, sql),
      };
      let broken: unknown;
      try {
        await tx.query('BEGIN');
        const result = await fn(tx);
        await tx.query('COMMIT');
        return result;
      } catch (err) {
        if (err instanceof DatabaseUnavailableError) {
          // The connection is lost, stalled (a timed-out query may still be running on it) or on a
          // standby: a ROLLBACK would queue behind it. Closing it ends the transaction on the server.
          broken = err;
        } else {
          await client.query('ROLLBACK').catch((rollbackErr: unknown) => { broken = rollbackErr; });
        }
        throw err;
      } finally {
        // A client whose rollback failed is in an unknown state: destroy it rather than reuse it. From
        // release on, the pool's own listener takes its errors again.
        client.removeListener('error', onError);
        client.release(broken instanceof Error ? broken : lost);
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
