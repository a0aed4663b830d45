// The configuration cache (src/db/read-cache.ts + src/db/change-feed.ts) against real PostgreSQL:
// a change by any writer is seen, a lost change feed stops the cache at once, nothing is cached on PGlite.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { CHANGE_FEED_APPLICATION, openChangeFeed, type ChangeFeed } from '../src/db/change-feed.ts';
import type { Db } from '../src/db/index.ts';
import { migrate } from '../src/db/migrate.ts';
import { cacheableQuery, ReadCache, withReadCache } from '../src/db/read-cache.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

const PG_ONLY = { skip: !process.env.DATABASE_URL && 'needs PostgreSQL (the change feed is LISTEN/NOTIFY)' };
const FIND = cacheableQuery('SELECT metadata FROM clients WHERE client_id = $1 AND disabled_at IS NULL', ['clients']);
const NAME = cacheableQuery("SELECT metadata->>'client_name' AS name FROM clients WHERE client_id = $1", ['clients']);

async function eventually(check: () => Promise<boolean>, what: string, ms = 3_000): Promise<void> {
  const until = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > until) assert.fail(`not within ${ms} ms: ${what}`);
    await sleep(10);
  }
}

describe('read cache with change feed', () => {
  let testDb: TestDb;
  let feed: ChangeFeed;
  let cache: ReadCache;
  let db: Db;
  let other: Db; // another process's connections, as far as this cache knows

  const nameOf = async (id: string) => (await db.query<{ name: string | null }>(NAME, [id])).rows[0]?.name;

  before(async () => {
    testDb = await createTestDb();
    await migrate(testDb.db);
    feed = await openChangeFeed(testDb.db);
    cache = new ReadCache(feed);
    db = withReadCache(testDb.db, cache);
    other = testDb.openAnother() ?? testDb.db;
    await testDb.db.query(`INSERT INTO clients (client_id, metadata) VALUES ('c1', '{"client_name":"one"}'), ('c2', '{"client_name":"two"}')`);
  });
  after(async () => {
    await feed.close();
    await testDb.drop();
  });

  test('embedded PGlite: never live, every read goes to the database', { skip: !!process.env.DATABASE_URL && 'PGlite only' }, async () => {
    assert.equal(feed.live, false);
    assert.equal(await nameOf('c1'), 'one');
    assert.equal(await nameOf('c1'), 'one');
    assert.equal(cache.size, 0);
    assert.equal(cache.hits, 0);
  });

  test('hits are copies: a caller changing its rows does not change the cache', PG_ONLY, async () => {
    assert.equal(feed.live, true);
    // (The notification of the inserts in before() may still be on its way and empty the cache once.)
    await eventually(async () => {
      const first = await db.query<{ metadata: Record<string, unknown> }>(FIND, ['c1']);
      first.rows[0]!.metadata.client_name = 'mutated';
      const hitsBefore = cache.hits;
      const second = await db.query<{ metadata: Record<string, unknown> }>(FIND, ['c1']);
      assert.equal(second.rows[0]!.metadata.client_name, 'one');
      return cache.hits === hitsBefore + 1;
    }, 'a cache hit');
  });

  test('a change through this Db is seen by the very next read; one by another writer once its notification arrives', PG_ONLY, async () => {
    assert.equal(await nameOf('c1'), 'one');
    await db.query(`UPDATE clients SET metadata = '{"client_name":"one-b"}' WHERE client_id = 'c1'`);
    assert.equal(await nameOf('c1'), 'one-b'); // no waiting: dropped before the update returned
    await db.transaction(async (tx) => {
      await tx.query(`UPDATE clients SET metadata = '{"client_name":"one-c"}' WHERE client_id = 'c1'`);
    });
    assert.equal(await nameOf('c1'), 'one-c');

    assert.equal(await nameOf('c2'), 'two');
    await other.query(`UPDATE clients SET disabled_at = now(), metadata = '{"client_name":"two-b"}' WHERE client_id = 'c2'`);
    const started = Date.now();
    await eventually(async () => (await nameOf('c2')) === 'two-b', 'another writer\'s change');
    assert.equal((await db.query(FIND, ['c2'])).rows.length, 0, 'the disabled client is gone from the cached lookup too');
    console.log(`notification seen after ${Date.now() - started} ms`);
  });

  test('a load that overlaps a change of its table is not kept', PG_ONLY, async () => {
    await other.query(`UPDATE clients SET metadata = '{"client_name":"one-d"}' WHERE client_id = 'c1'`);
    await eventually(async () => (await nameOf('c1')) === 'one-d', 'settled');
    cache.reset();
    // The read starts, the table changes while it is in flight: its (possibly old) answer must not stay.
    const read = db.query(NAME, ['c1']);
    cache.changed('clients');
    await read;
    assert.equal(cache.size, 0);
  });

  test('the feed lost: nothing is served from the cache until it listens again', PG_ONLY, async () => {
    assert.equal(await nameOf('c1'), 'one-d');
    assert.ok(cache.size > 0);
    const { rows } = await other.query<{ n: number }>(
      'SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1',
      [CHANGE_FEED_APPLICATION],
    );
    assert.ok(rows[0]!.n >= 1, 'the listening connection was found and ended');
    await eventually(() => Promise.resolve(!feed.live), 'feed marked down');
    assert.equal(cache.size, 0);
    // While down, a change no notification will ever announce is read from the database.
    await other.query(`UPDATE clients SET metadata = '{"client_name":"one-e"}' WHERE client_id = 'c1'`);
    const hits = cache.hits;
    assert.equal(await nameOf('c1'), 'one-e');
    assert.equal(cache.hits, hits);
    assert.equal(cache.size, 0, 'nothing is kept while not live');
    await eventually(() => Promise.resolve(feed.live), 'feed back', 10_000);
    assert.equal(await nameOf('c1'), 'one-e');
    assert.equal(await nameOf('c1'), 'one-e');
    assert.ok(cache.hits > hits, 'serving again');
  });

  test('statements that depend on time or state cannot be declared cacheable', () => {
    assert.throws(() => cacheableQuery('SELECT 1 FROM care_team WHERE valid_from <= now()', ['users']), /not cacheable/);
  });
});
