// Read-through cache for the few statements that read rarely-changing configuration on every request
// (a client's metadata, a resource server, an exchange policy, the step-up rules, a user). Every
// PostgreSQL round trip costs a request real time and CPU on both sides, and these rows change a few
// times a day.
//
// Correctness rests on two things:
// - only statements declared with cacheableQuery() are cached, and only for tables whose changes are
//   announced (NOTIFYING_TABLES, migration 015): a change committed by anyone drops that table's
//   entries when its notification arrives (src/db/change-feed.ts), and a change made through this
//   process's own Db drops them as soon as it is done, before its caller goes on;
// - while the change feed is not live (connection lost, PGlite), nothing is served from the cache.
// A load that overlaps a change of its table is not kept (per-table generations), and an entry lives
// at most MAX_AGE_MS whatever happens. Transactions always read the database.
import type { ChangeFeed, ChangeSubscriber } from './change-feed.ts';
import type { Db, Queryable, QueryResult, Row } from './db.ts';

/** Tables whose changes are announced by trigger (migration 015_change_notifications.sql). */
export const NOTIFYING_TABLES = ['clients', 'resource_servers', 'exchange_policies', 'step_up_rules', 'users'] as const;
type NotifyingTable = (typeof NOTIFYING_TABLES)[number];

const MAX_AGE_MS = 60_000;
const MAX_ENTRIES = 10_000;

const declared = new Map<string, readonly NotifyingTable[]>();

/**
 * Declares `sql` cacheable: its result depends only on its parameters and on the rows of `tables`
 * (no now(), no random(), no sequence). Returns `sql`, to be used as the statement's text.
 */
export function cacheableQuery(sql: string, tables: readonly NotifyingTable[]): string {
  if (/\bnow\(\)|current_timestamp|random\(|nextval\(/i.test(sql)) throw new Error(`not cacheable (time or state dependent): ${sql}`);
  declared.set(sql, tables);
  return sql;
}

// Any statement that is not a plain read and names a cached table may change it.
const READ_ONLY = /^\s*(SELECT|VALUES|SHOW)\b/i;
const TABLE_NAMES = new RegExp(`\\b(${NOTIFYING_TABLES.join('|')})\\b`, 'gi');
function tablesWritten(sql: string): NotifyingTable[] {
  if (READ_ONLY.test(sql) && !/\bFOR\s+UPDATE\b|;/i.test(sql)) return [];
  return [...new Set([...sql.matchAll(TABLE_NAMES)].map((m) => m[1]!.toLowerCase() as NotifyingTable))];
}

interface Entry {
  result: QueryResult;
  tables: readonly NotifyingTable[];
  expires: number;
}

export class ReadCache implements ChangeSubscriber {
  private readonly entries = new Map<string, Entry>();
  private readonly generations = new Map<string, number>(NOTIFYING_TABLES.map((t) => [t, 0]));
  hits = 0;
  misses = 0;

  constructor(private readonly feed: ChangeFeed) {
    feed.subscribe(this);
  }

  changed(table: string): void {
    if (!this.generations.has(table)) return;
    this.generations.set(table, this.generations.get(table)! + 1);
    for (const [key, entry] of this.entries) if (entry.tables.includes(table as NotifyingTable)) this.entries.delete(key);
  }

  reset(): void {
    for (const table of NOTIFYING_TABLES) this.generations.set(table, this.generations.get(table)! + 1);
    this.entries.clear();
  }

  get size(): number {
    return this.entries.size;
  }

  async read<R extends Row>(sql: string, params: readonly unknown[] | undefined, load: () => Promise<QueryResult<R>>): Promise<QueryResult<R>> {
    const tables = declared.get(sql);
    if (!tables || !this.feed.live) return load();
    const key = `${sql}\u0000${JSON.stringify(params ?? [])}`;
    const now = Date.now();
    const entry = this.entries.get(key);
    if (entry && entry.expires > now) {
      this.hits += 1;
      return structuredClone(entry.result) as QueryResult<R>; // callers may modify what they get
    }
    this.misses += 1;
    const before = tables.map((t) => this.generations.get(t));
    const result = await load();
    const unchanged = tables.every((t, i) => this.generations.get(t) === before[i]);
    if (unchanged && this.feed.live) {
      if (this.entries.size >= MAX_ENTRIES) this.entries.delete(this.entries.keys().next().value!);
      this.entries.set(key, { result: structuredClone(result), tables, expires: now + MAX_AGE_MS });
    }
    return result;
  }
}

/** `db` with cacheable reads served by `cache`, and its own writes to cached tables dropping their entries. */
export function withReadCache(db: Db, cache: ReadCache): Db {
  const written = async <T>(sql: string, run: () => Promise<T>): Promise<T> => {
    const tables = tablesWritten(sql);
    try {
      return await run();
    } finally {
      for (const t of tables) cache.changed(t);
    }
  };
  return {
    ...db,
    kind: db.kind,
    ...(db.pgPool ? { pgPool: db.pgPool } : {}),
    query: <R extends Row>(sql: string, params?: readonly unknown[]) =>
      declared.has(sql) ? cache.read<R>(sql, params, () => db.query<R>(sql, params)) : written(sql, () => db.query<R>(sql, params)),
    exec: (sql) => written(sql, () => db.exec(sql)).finally(() => cache.reset()),
    async transaction(fn) {
      const touched = new Set<NotifyingTable>();
      try {
        return await db.transaction((tx) => {
          const tracked: Queryable = {
            query: (sql, params) => {
              for (const t of tablesWritten(sql)) touched.add(t);
              return tx.query(sql, params);
            },
            exec: (sql) => {
              cache.reset();
              return tx.exec(sql);
            },
          };
          return fn(tracked);
        });
      } finally {
        for (const t of touched) cache.changed(t);
      }
    },
    ping: () => db.ping(),
    close: () => db.close(),
  };
}
