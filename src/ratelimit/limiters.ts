// Rate-limit counters shared by every process of the server, through rate-limiter-flexible:
//   - Redis when REDIS_URL is set (RateLimiterRedis on an ioredis client, one atomic Lua call per request);
//   - otherwise PostgreSQL (RateLimiterPostgres on the server's pg.Pool, one atomic upsert per request,
//     in the `rate_limits` table of migrations/003_rate_limits.sql);
//   - otherwise (embedded PGlite) memory. PGlite is single-process — pglite.ts refuses a second process
//     on the same data directory — so one process's memory *is* "shared by all processes" there. The
//     memory counters are kept per Db object, so several servers in one process on one PGlite database
//     (the tests' "second instance") share them as they share that database.
//
// Fail closed: when the counter store cannot answer, the request is refused with 503
// temporarily_unavailable instead of being let through unlimited. With PostgreSQL the store is the
// database every request needs anyway, so nothing is lost. With Redis it trades availability for
// protection on purpose: the limits guard password guessing and client-secret guessing, and an
// attacker who could get them switched off by overloading Redis must not get unlimited attempts.
// (rate-limiter-flexible's insuranceLimiter would instead fall back to per-process memory counters,
// i.e. N processes allow N times the limit; swap it in here if availability must win.)
import { createHash } from 'node:crypto';

import { Redis } from 'ioredis';
import {
  RateLimiterMemory,
  RateLimiterPostgres,
  RateLimiterRedis,
  RateLimiterRes,
  type RateLimiterAbstract,
} from 'rate-limiter-flexible';

import type { Config, RateLimitRule } from '../config.ts';
import { DatabaseUnavailableError, type Db } from '../db/db.ts';
import type { Logger } from '../log.ts';
import { PointLeases } from './leases.ts';

export type RateLimiterName = 'client' | 'loginIp' | 'loginUser';
export type RateLimitBackend = 'redis' | 'postgres' | 'memory';

export interface RateLimiters {
  /** Per claimed client id (else source address) at the token, introspection, revocation and registration endpoints. */
  client: RateLimiterAbstract;
  /** Login attempts per source address. */
  loginIp: RateLimiterAbstract;
  /** Login attempts per (keyed-hashed, normalised) username. */
  loginUser: RateLimiterAbstract;
  backend: RateLimitBackend;
  /** RATE_LIMIT_ENABLED: when false, clientRateLimit and checkLoginRateLimit let everything through. */
  enabled: boolean;
  /** The configured points and windows, by limiter. */
  rules: Record<RateLimiterName, RateLimitRule>;
  /** Told about counter-store failures (the request itself is refused with 503). */
  logger: Logger | undefined;
  close(): Promise<void>;
}

export interface RateLimiterOptions {
  /** Prefix of every counter key (default `authz:rl`); tests use a unique one per run. */
  keyPrefix?: string;
  logger?: Logger;
  /** How long startup waits for Redis before giving up (default 5 s). */
  redisConnectTimeoutMs?: number;
}

/** The counter store could not answer: the request is refused (fail closed) with 503 temporarily_unavailable. */
export class RateLimitUnavailableError extends DatabaseUnavailableError {
  override name = 'RateLimitUnavailableError';
}

export const RATE_LIMIT_TABLE = 'rate_limits';
const DEFAULT_KEY_PREFIX = 'authz:rl';
// A Redis command that hangs must not hang the request behind it.
const REDIS_COMMAND_TIMEOUT_MS = 2_000;
// Counter keys are at most 255 characters in PostgreSQL (the library's schema); ours stay far below.
const MAX_RAW_KEY = 128;

// PGlite: counters per database object, so every server on that database sees the same ones.
const memoryStores = new WeakMap<Db, Map<string, RateLimiterMemory>>();

function sharedMemoryLimiter(db: Db, keyPrefix: string, rule: RateLimitRule): RateLimiterMemory {
  let stores = memoryStores.get(db);
  if (!stores) {
    stores = new Map();
    memoryStores.set(db, stores);
  }
  const id = `${keyPrefix}|${rule.points}|${rule.windowSeconds}`;
  let limiter = stores.get(id);
  if (!limiter) {
    limiter = new RateLimiterMemory({ keyPrefix, points: rule.points, duration: rule.windowSeconds });
    stores.set(id, limiter);
  }
  return limiter;
}

async function connectRedis(url: string, timeoutMs: number, logger: Logger | undefined): Promise<Redis> {
  const redis = new Redis(url, {
    lazyConnect: true,
    // No queue: while Redis is unreachable a command fails at once (503) instead of piling up.
    enableOfflineQueue: false,
    commandTimeout: REDIS_COMMAND_TIMEOUT_MS,
    connectTimeout: timeoutMs,
    maxRetriesPerRequest: 0,
  });
  let lastError: string | undefined;
  redis.on('error', (err: Error) => {
    // Reconnection is automatic; requests in between get 503. Report each distinct failure once.
    if (err.message !== lastError) logger?.warn({ err: err.message }, 'rate-limit store (Redis) error');
    lastError = err.message;
  });
  redis.on('ready', () => { lastError = undefined; });
  try {
    await redis.connect();
  } catch (err) {
    redis.disconnect();
    throw new Error(`rate-limit store unreachable (REDIS_URL): ${(err as Error).message}`, { cause: err });
  }
  return redis;
}

export async function createRateLimiters(config: Config, db: Db, options: RateLimiterOptions = {}): Promise<RateLimiters> {
  const prefix = options.keyPrefix ?? DEFAULT_KEY_PREFIX;
  const rules = config.rateLimit;
  const names: RateLimiterName[] = ['client', 'loginIp', 'loginUser'];
  const base = (name: RateLimiterName) => ({
    keyPrefix: `${prefix}:${name}`,
    points: rules[name].points,
    duration: rules[name].windowSeconds,
  });
  // Once a key is over its limit, this process refuses it from memory until its window ends: a flood
  // of refused requests costs neither the database nor Redis a single query. Other processes learn
  // of the exhausted counter at their next request for that key.
  const store = (name: RateLimiterName) => ({ ...base(name), inMemoryBlockOnConsumed: rules[name].points + 1 });
  const common = {
    enabled: rules.enabled,
    rules: { client: rules.client, loginIp: rules.loginIp, loginUser: rules.loginUser },
    logger: options.logger,
  };

  if (rules.enabled && config.redisUrl) {
    const redis = await connectRedis(config.redisUrl, options.redisConnectTimeoutMs ?? 5_000, options.logger);
    const make = (name: RateLimiterName) => new RateLimiterRedis({ ...store(name), storeClient: redis, rejectIfRedisNotReady: true });
    const [client, loginIp, loginUser] = names.map(make) as [RateLimiterRedis, RateLimiterRedis, RateLimiterRedis];
    return {
      ...common,
      client,
      loginIp,
      loginUser,
      backend: 'redis',
      async close() {
        await redis.quit().catch(() => redis.disconnect());
      },
    };
  }

  if (rules.enabled && db.kind === 'postgres') {
    if (!db.pgPool) throw new Error('a PostgreSQL database without its pg.Pool cannot hold rate-limit counters');
    const make = (name: RateLimiterName) => new RateLimiterPostgres({
      ...store(name),
      storeClient: db.pgPool,
      storeType: 'pool',
      tableName: RATE_LIMIT_TABLE,
      // migrations/003_rate_limits.sql creates it: the application never needs DDL rights.
      tableCreated: true,
      // The sweep deletes every expired row of the table, so one limiter running it is enough.
      clearExpiredByTimeout: name === 'client',
    });
    const [client, loginIp, loginUser] = names.map(make) as [RateLimiterPostgres, RateLimiterPostgres, RateLimiterPostgres];
    return {
      ...common,
      client,
      loginIp,
      loginUser,
      backend: 'postgres',
      async close() {
        // The library's five-minute sweep timer (unref'd, but it would query a closed pool).
        for (const limiter of [client, loginIp, loginUser]) {
          clearTimeout((limiter as unknown as { _clearExpiredTimeoutId?: NodeJS.Timeout })._clearExpiredTimeoutId);
        }
      },
    };
  }

  const [client, loginIp, loginUser] = names.map((name) => sharedMemoryLimiter(db, base(name).keyPrefix, rules[name])) as
    [RateLimiterMemory, RateLimiterMemory, RateLimiterMemory];
  return { ...common, client, loginIp, loginUser, backend: 'memory', async close() {} };
}

/** A counter key for an identifier that arrived in a request: printable ASCII as is, anything else hashed. */
export function counterKey(kind: string, value: string): string {
  return value.length <= MAX_RAW_KEY && /^[\x21-\x7e]+$/.test(value)
    ? `${kind}:${value}`
    : `${kind}#:${createHash('sha256').update(value).digest('base64url')}`;
}

export type ConsumeOutcome =
  | { allowed: true }
  | {
    allowed: false;
    /** Whole seconds until the key's window ends (at least 1): the Retry-After value. */
    retryAfterSeconds: number;
    /** True for exactly one refusal per key and window, in whichever process: the one to audit. */
    firstRefusal: boolean;
  };

const clientLeases = new WeakMap<RateLimiterAbstract, PointLeases>();
/** Counter stores that failed and have not answered since: reported once, not once per request. */
const failing = new WeakSet<RateLimiters>();

function storeAnswered(limiters: RateLimiters): void {
  if (!failing.delete(limiters)) return;
  limiters.logger?.info({ backend: limiters.backend }, 'rate-limit store answering again');
}

/**
 * Takes one point for `key`. Throws RateLimitUnavailableError when the counter store cannot answer.
 * The per-client limiter takes its points from the shared counter a lease at a time (leases.ts).
 */
export async function consumePoint(limiters: RateLimiters, name: RateLimiterName, key: string): Promise<ConsumeOutcome> {
  const limiter = limiters[name];
  const refused = (rejection: RateLimiterRes, firstRefusal: boolean): ConsumeOutcome => ({
    allowed: false,
    retryAfterSeconds: Math.max(1, Math.ceil(rejection.msBeforeNext / 1000)),
    firstRefusal,
  });
  try {
    if (name === 'client') {
      let leases = clientLeases.get(limiter);
      if (!leases) clientLeases.set(limiter, (leases = new PointLeases(limiter, limiters.rules.client.points)));
      const outcome = await leases.consume(key);
      storeAnswered(limiters);
      return outcome.allowed ? outcome : refused(outcome.rejection, outcome.crossedLimit);
    }
    await limiter.consume(key, 1);
    storeAnswered(limiters);
    return { allowed: true };
  } catch (rejection) {
    if (rejection instanceof RateLimiterRes) {
      storeAnswered(limiters);
      // The counter is atomic in every store, so only one request anywhere sees points + 1. Requests
      // refused from the in-memory block report 0 consumed points and are never "first".
      return refused(rejection, rejection.consumedPoints === limiters.rules[name].points + 1);
    }
    if (!failing.has(limiters)) {
      failing.add(limiters);
      limiters.logger?.warn({ limiter: name, backend: limiters.backend, err: (rejection as Error)?.message }, 'rate-limit store failed; requests refused until it answers');
    }
    throw new RateLimitUnavailableError(rejection);
  }
}
