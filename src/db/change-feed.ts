// Tells this process when another writer changed a table whose rows it caches (src/db/read-cache.ts).
// Triggers (migration 015) notify `authz_table_changed` with the table name when a change commits,
// whoever made it: this process, another replica, the CLI, psql. A dedicated connection LISTENs.
//
// Fail closed: the feed is `live` only while that connection is known to work (a heartbeat checks it);
// the moment it is lost, every subscriber is told to forget everything and caches stop serving until
// the connection is back, LISTENing again, and has told them to forget once more (changes made while
// nobody listened are unknown).
import pg from 'pg';

import type { Logger } from '../log.ts';
import type { Db } from './db.ts';

export const CHANGE_CHANNEL = 'authz_table_changed';
/** The listening connection's application_name (visible in pg_stat_activity). */
export const CHANGE_FEED_APPLICATION = 'clinical-authz change feed';

export interface ChangeSubscriber {
  /** `table` changed (committed). */
  changed(table: string): void;
  /** Anything may have changed: forget everything. */
  reset(): void;
}

export interface ChangeFeed {
  /** True while changes are being received: a cache may serve only then. */
  readonly live: boolean;
  subscribe(subscriber: ChangeSubscriber): void;
  close(): Promise<void>;
}

/** A feed that is never live (embedded PGlite, or caching switched off): caches always read through. */
export const NO_CHANGE_FEED: ChangeFeed = { live: false, subscribe() {}, close: () => Promise.resolve() };

const HEARTBEAT_MS = 2_000;
const HEARTBEAT_TIMEOUT_MS = 1_500;
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 2_000;

class PostgresChangeFeed implements ChangeFeed {
  private connected = false;
  private client: pg.Client | undefined;
  private readonly subscribers: ChangeSubscriber[] = [];
  private closed = false;
  private retryMs = RECONNECT_MIN_MS;
  private retryTimer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private reportedDown = false;

  constructor(private readonly options: pg.ClientConfig, private readonly logger: Logger | undefined) {}

  get live(): boolean {
    return this.connected;
  }

  subscribe(subscriber: ChangeSubscriber): void {
    this.subscribers.push(subscriber);
  }

  /** Resolves once the first LISTEN succeeded or failed (the feed keeps retrying after a failure). */
  async start(): Promise<void> {
    await this.connect();
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const client = new pg.Client(this.options);
    this.client = client;
    client.on('notification', (message) => {
      if (this.client !== client || message.channel !== CHANGE_CHANNEL || !message.payload) return;
      for (const s of this.subscribers) s.changed(message.payload);
    });
    client.on('error', () => this.lost(client));
    client.on('end', () => this.lost(client));
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANGE_CHANNEL}`);
    } catch {
      this.lost(client);
      return;
    }
    if (this.client !== client || this.closed) return;
    // Changes committed while nobody listened are unknown.
    this.resetAll();
    this.connected = true;
    this.retryMs = RECONNECT_MIN_MS;
    if (this.reportedDown) this.logger?.info('change feed: listening again, caches serve again');
    this.reportedDown = false;
    this.heartbeat = setInterval(() => {
      // A connection that silently stopped delivering (no RST) must not keep caches serving.
      const beat = client.query({ text: 'SELECT 1', query_timeout: HEARTBEAT_TIMEOUT_MS } as pg.QueryConfig);
      beat.catch(() => this.lost(client));
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  private lost(client: pg.Client): void {
    if (this.client !== client) return;
    this.client = undefined;
    this.connected = false;
    clearInterval(this.heartbeat);
    this.resetAll();
    client.removeAllListeners('notification');
    client.on('error', () => {}); // late errors of a connection we gave up on
    void client.end().catch(() => {});
    if (this.closed) return;
    if (!this.reportedDown) this.logger?.warn('change feed: connection lost, caches read through until it is back');
    this.reportedDown = true;
    this.retryTimer = setTimeout(() => void this.connect(), this.retryMs);
    this.retryTimer.unref();
    this.retryMs = Math.min(this.retryMs * 2, RECONNECT_MAX_MS);
  }

  private resetAll(): void {
    for (const s of this.subscribers) s.reset();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearInterval(this.heartbeat);
    const client = this.client;
    this.client = undefined;
    this.connected = false;
    this.resetAll();
    if (client) await client.end().catch(() => {});
  }
}

/** A change feed on the database's own server (PostgreSQL); never live on embedded PGlite. */
export async function openChangeFeed(db: Db, logger?: Logger): Promise<ChangeFeed> {
  if (!db.pgPool) return NO_CHANGE_FEED;
  const feed = new PostgresChangeFeed({ ...(db.pgPool.options as pg.ClientConfig), application_name: CHANGE_FEED_APPLICATION }, logger);
  await feed.start();
  return feed;
}
