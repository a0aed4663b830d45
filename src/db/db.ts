// The one storage interface every module uses; PostgreSQL (pg.Pool) and embedded PGlite implement it.
import { OAuthStyleError } from '../errors.ts';

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
export class DatabaseUnavailableError extends OAuthStyleError {
  override name = 'DatabaseUnavailableError';
  constructor(cause: unknown) {
    super(503, 'temporarily_unavailable', 'the service is temporarily unavailable, retry later', { cause });
  }
}

/**
 * The request carries a value the database cannot hold as text (a NUL character, an unencodable
 * character, text where a number or id is expected): the client's mistake, answered 400
 * `invalid_request` like DatabaseUnavailableError answers 503. oidc-provider renders `message` as the
 * error code, so the message is the code.
 */
export class InvalidInputError extends OAuthStyleError {
  override name = 'InvalidInputError';
  constructor(cause?: unknown) {
    super(400, 'invalid_request', 'request contains a character that is not allowed', cause === undefined ? undefined : { cause });
  }
}

function containsNul(value: unknown, depth = 0): boolean {
  if (typeof value === 'string') return value.includes('\0');
  if (Array.isArray(value) && depth < 8) return value.some((item) => containsNul(item, depth + 1));
  return false;
}

/**
 * PostgreSQL (and PGlite) refuse NUL in text (SQLSTATE 22021). Checked before the query is sent, so
 * a lookup key from a request fails as a 400 whichever path it took, and the connection (or the
 * surrounding transaction) is not put into an error state for it.
 */
export function assertStorableParams(params: readonly unknown[] | undefined): void {
  if (params && containsNul(params)) throw new InvalidInputError();
}

const CONNECTION_ERROR_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'EAI_AGAIN',
  '57P01', '57P02', '57P03', // admin_shutdown, crash_shutdown, cannot_connect_now
  '57014', // query_canceled: statement_timeout reached (a stalled database)
  '25P03', // idle_in_transaction_session_timeout ended the session
  '25006', // read_only_sql_transaction: connected to a standby, e.g. just after a failover
  '08000', '08003', '08006', '08001', '08004', // connection exceptions
]);

// character_not_in_repertoire, untranslatable_character, invalid_text_representation
const INVALID_INPUT_CODES = new Set(['22021', '22P05', '22P02']);

function sqlState(err: Error): string | undefined {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

export function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = sqlState(err);
  // Class 53, insufficient resources: too_many_connections, out_of_memory, disk_full, ...
  if (code !== undefined && (CONNECTION_ERROR_CODES.has(code) || /^53[0-9A-Z]{3}$/.test(code))) return true;
  // pg-pool: "timeout exceeded when trying to connect" (pool exhausted); pg: "Query read timeout" (query_timeout).
  return /Connection terminated|connection timeout|Client has encountered a connection error|Cannot use a pool after calling end|timeout exceeded when trying to connect|Query read timeout/i
    .test(err.message);
}

export function isInvalidInputError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = sqlState(err);
  return code !== undefined && INVALID_INPUT_CODES.has(code);
}

/**
 * Maps driver failures to errors the HTTP layer answers cleanly: lost, exhausted or stalled database
 * → DatabaseUnavailableError (503); text the database cannot hold → InvalidInputError (400). Other
 * errors pass through.
 */
export function translateError(err: unknown): unknown {
  if (err instanceof DatabaseUnavailableError || err instanceof InvalidInputError) return err;
  if (isConnectionError(err)) return new DatabaseUnavailableError(err);
  if (isInvalidInputError(err)) return new InvalidInputError(err);
  return err;
}

/** For scripts (exec: migrations), whose text is ours, not a request's: only an unavailable database is mapped. */
export function translateScriptError(err: unknown): unknown {
  if (err instanceof DatabaseUnavailableError) return err;
  return isConnectionError(err) ? new DatabaseUnavailableError(err) : err;
}
