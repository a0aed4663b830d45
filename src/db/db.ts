// The one storage interface every module uses; PostgreSQL (pg.Pool) and embedded PGlite implement it.

export type Row = Record<string, unknown>;

export interface QueryResult<R extends Row = Row> {
  rows: R[];
  rowCount: number;
}

export interface Queryable {
  query<R extends Row = Row>(sql: string, params?: readonly unknown[]): Promise<QueryResult<R>>;
  /** Runs a script of several statements without parameters (migrations). */
  exec(sql: string): Promise<void>;
}

export interface Db extends Queryable {
  readonly kind: 'postgres' | 'pglite';
  /** The underlying pg.Pool (PostgreSQL only), for libraries that take one (rate limiter). */
  readonly pgPool?: import('pg').Pool;
  /** Runs fn in one transaction; commits when it resolves, rolls back when it throws. */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Throws DatabaseUnavailableError when the database cannot answer. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

/**
 * The database cannot be reached. Carries an OAuth-style 503 so that oidc-provider's error handler
 * and ours answer `temporarily_unavailable` instead of a generic 500.
 */
export class DatabaseUnavailableError extends Error {
  override name = 'DatabaseUnavailableError';
  readonly status = 503;
  readonly statusCode = 503;
  readonly expose = true;
  readonly error = 'temporarily_unavailable';
  readonly error_description = 'the service is temporarily unavailable, retry later';
  constructor(cause: unknown) {
    super('temporarily_unavailable', { cause });
  }
}

const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN',
  '57P01', '57P02', '57P03', // admin_shutdown, crash_shutdown, cannot_connect_now
  '08000', '08003', '08006', '08001', '08004', // connection exceptions
]);

export function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && CONNECTION_ERROR_CODES.has(code)) return true;
  return /Connection terminated|connection timeout|Client has encountered a connection error|Cannot use a pool after calling end/i
    .test(err.message);
}

/** Maps driver connection failures to DatabaseUnavailableError; other errors pass through. */
export function translateError(err: unknown): unknown {
  if (err instanceof DatabaseUnavailableError) return err;
  return isConnectionError(err) ? new DatabaseUnavailableError(err) : err;
}
