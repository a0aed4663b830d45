// The webhook outbox against a real database and a real HTTP receiver: signed Standard Webhooks
// requests that verify (and fail to when tampered with), delivered once, retried with the same id,
// given up with a high-severity audit event, bounded by a timeout, kicked without blocking, and
// claimed exactly once by concurrent dispatchers.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { Webhook, WebhookVerificationError } from 'standardwebhooks';

import { deriveAuditKeys } from '../src/audit/keys.ts';
import { AuditLog, type StoredAuditRow } from '../src/audit/log.ts';
import type { Db } from '../src/db/index.ts';
import { migrate } from '../src/db/migrate.ts';
import { createLogger } from '../src/log.ts';
import {
  defaultBackoff, enqueueWebhook, WebhookDispatcher, webhookDeliveries, type WebhookDispatcherOptions,
} from '../src/notifications/webhook.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

const TOPIC = 'break_glass.opened';
const newSecret = () => `whsec_${randomBytes(32).toString('base64')}`;

interface Received {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** What the receiver answers the n-th request (0-based): a status, or 'hang' (never answers). */
type Answer = (n: number, request: Received) => number | 'hang' | Promise<number | 'hang'>;

interface Receiver {
  url: string;
  requests: Received[];
  /** Resolves when the receiver holds `count` requests. */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

async function startReceiver(answer: Answer): Promise<Receiver> {
  const requests: Received[] = [];
  const waiters: Array<() => void> = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const received: Received = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      const n = requests.push(received) - 1;
      for (const wake of waiters.splice(0)) wake();
      void Promise.resolve(answer(n, received)).then((status) => {
        if (status === 'hang') return;
        // A body the dispatcher must never read or log.
        res.writeHead(status, { 'content-type': 'text/plain' }).end(`receiver-body-${status}`);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/privacy-office/hook`,
    requests,
    async waitFor(count, timeoutMs = 5_000) {
      const deadline = Date.now() + timeoutMs;
      while (requests.length < count) {
        if (Date.now() > deadline) throw new Error(`receiver got ${requests.length} of ${count} requests`);
        await Promise.race([new Promise<void>((resolve) => waiters.push(resolve)), sleep(50)]);
      }
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A fresh migrated database for one test, dropped afterwards. */
async function withDb(fn: (testDb: TestDb) => Promise<void>): Promise<void> {
  const testDb = await createTestDb();
  try {
    await migrate(testDb.db);
    await fn(testDb);
  } finally {
    await testDb.drop();
  }
}

function captureLogger() {
  const lines: string[] = [];
  return { lines, logger: createLogger('debug', { write: (line: string) => { lines.push(line); } }) };
}

function dispatcher(db: Db, secret: string, options: Partial<WebhookDispatcherOptions> = {}): WebhookDispatcher {
  return new WebhookDispatcher({ db, secret, logger: createLogger('silent'), ...options });
}

function enqueue(db: Db, url: string, payload: Record<string, unknown> = { event: 'bge_1', reason_code: 'ETREAT' }): Promise<string> {
  return db.transaction((tx) => enqueueWebhook(tx, { topic: TOPIC, url, payload }));
}

/** The three Standard Webhooks headers of a received request, as verify() takes them. */
function webhookHeaders(request: Received): Record<string, string> {
  const pick = (name: string) => {
    const value = request.headers[name];
    assert.equal(typeof value, 'string', `${name} header present once`);
    return value as string;
  };
  return { 'webhook-id': pick('webhook-id'), 'webhook-timestamp': pick('webhook-timestamp'), 'webhook-signature': pick('webhook-signature') };
}

/** Asserts a received request is exactly the signed delivery of `id`, and returns its verified payload. */
function assertSignedDelivery(request: Received, secret: string, id: string, body: string): unknown {
  assert.equal(request.method, 'POST');
  assert.equal(request.path, '/privacy-office/hook');
  assert.equal(request.headers['content-type'], 'application/json');
  assert.equal(request.body, body, 'the stored body, byte for byte');
  const headers = webhookHeaders(request);
  assert.equal(headers['webhook-id'], id);
  assert.match(headers['webhook-timestamp']!, /^\d{10}$/, 'seconds since the epoch');
  assert.ok(Math.abs(Number(headers['webhook-timestamp']) - Date.now() / 1000) < 10, 'timestamp of this attempt');
  assert.match(headers['webhook-signature']!, /^v1,[A-Za-z0-9+/]{43}=$/);
  const timestamp = new Date(Number(headers['webhook-timestamp']) * 1000);
  assert.equal(headers['webhook-signature'], new Webhook(secret).sign(id, timestamp, body));
  return new Webhook(secret).verify(request.body, headers);
}

async function onlyDelivery(db: Db) {
  const rows = await webhookDeliveries(db, TOPIC);
  assert.equal(rows.length, 1);
  return rows[0]!;
}

describe('webhook outbox', () => {
  test('a delivery arrives once, signed, with the exact stored body and Standard Webhooks headers', () => withDb(async ({ db }) => {
    const secret = newSecret();
    const receiver = await startReceiver(() => 204);
    try {
      const id = await enqueue(db, receiver.url, { event: 'bge_1', reason_code: 'ETREAT', patient_ref: 'pseudonym-abc' });
      assert.match(id, /^msg_[A-Za-z0-9_-]{20,}$/);
      const stored = await onlyDelivery(db);
      assert.deepEqual({ ...stored, body: undefined }, {
        id, topic: TOPIC, url: receiver.url, body: undefined, attempts: 0, deliveredAt: null, failedAt: null, lastError: null,
      });

      const started = Date.now();
      assert.deepEqual(await dispatcher(db, secret).deliverDue(), { delivered: 1, failed: 0, retried: 0 });
      assert.equal(receiver.requests.length, 1);
      const payload = assertSignedDelivery(receiver.requests[0]!, secret, id, stored.body) as { type: string; timestamp: string; data: unknown };
      assert.deepEqual(Object.keys(payload), ['type', 'timestamp', 'data']);
      assert.equal(payload.type, TOPIC);
      assert.ok(Math.abs(Date.parse(payload.timestamp) - started) < 10_000);
      assert.equal(new Date(payload.timestamp).toISOString(), payload.timestamp, 'ISO 8601 timestamp');
      assert.deepEqual(payload.data, { event: 'bge_1', reason_code: 'ETREAT', patient_ref: 'pseudonym-abc' });

      const delivered = await onlyDelivery(db);
      assert.equal(delivered.attempts, 1);
      assert.ok(delivered.deliveredAt instanceof Date);
      assert.equal(delivered.failedAt, null);
      assert.equal(delivered.lastError, null);

      // Delivered rows are never sent again.
      assert.deepEqual(await dispatcher(db, secret).deliverDue(), { delivered: 0, failed: 0, retried: 0 });
      assert.equal(receiver.requests.length, 1);
    } finally {
      await receiver.close();
    }
  }));

  test('a tampered body, id or timestamp, or the wrong secret, fails verification', () => withDb(async ({ db }) => {
    const secret = newSecret();
    const receiver = await startReceiver(() => 200);
    try {
      await enqueue(db, receiver.url);
      await dispatcher(db, secret).deliverDue();
      const request = receiver.requests[0]!;
      const headers = webhookHeaders(request);
      assert.ok(new Webhook(secret).verify(request.body, headers), 'the untouched request verifies');

      const tamperedBody = request.body.replace('ETREAT', 'TREAT');
      assert.notEqual(tamperedBody, request.body);
      assert.throws(() => new Webhook(secret).verify(tamperedBody, headers), WebhookVerificationError);
      assert.throws(() => new Webhook(secret).verify(`${request.body} `, headers), WebhookVerificationError);
      assert.throws(() => new Webhook(newSecret()).verify(request.body, headers), WebhookVerificationError);
      assert.throws(() => new Webhook(secret).verify(request.body, { ...headers, 'webhook-id': 'msg_other' }), WebhookVerificationError);
      const shifted = String(Number(headers['webhook-timestamp']) - 1);
      assert.throws(() => new Webhook(secret).verify(request.body, { ...headers, 'webhook-timestamp': shifted }), WebhookVerificationError);
    } finally {
      await receiver.close();
    }
  }));

  test('503 twice then 200: delivered on the third attempt, same webhook-id, fresh valid signatures', () => withDb(async ({ db }) => {
    const secret = newSecret();
    const receiver = await startReceiver((n) => (n < 2 ? 503 : 200));
    const backoffCalls: number[] = [];
    const d = dispatcher(db, secret, { backoff: (attempt) => { backoffCalls.push(attempt); return 0; } });
    try {
      const id = await enqueue(db, receiver.url);
      const { body } = await onlyDelivery(db);

      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 1 }, 'a row is attempted once per pass');
      let row = await onlyDelivery(db);
      assert.deepEqual([row.attempts, row.lastError, row.deliveredAt, row.failedAt], [1, '503', null, null]);

      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 1 });
      assert.deepEqual(await d.deliverDue(), { delivered: 1, failed: 0, retried: 0 });
      row = await onlyDelivery(db);
      assert.equal(row.attempts, 3);
      assert.ok(row.deliveredAt instanceof Date);
      assert.equal(row.failedAt, null);
      assert.deepEqual(backoffCalls, [1, 2], 'backoff asked after each failed attempt');

      assert.equal(receiver.requests.length, 3);
      for (const request of receiver.requests) assertSignedDelivery(request, secret, id, body);
      assert.equal(new Set(receiver.requests.map((r) => r.headers['webhook-id'])).size, 1, 'one webhook-id across retries');
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 0 });
    } finally {
      await receiver.close();
    }
  }));

  test('default backoff: 10 s doubling, capped at an hour; a failed row waits for it', () => withDb(async ({ db }) => {
    assert.deepEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 50].map(defaultBackoff), [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]);
    const receiver = await startReceiver(() => 502);
    try {
      await enqueue(db, receiver.url);
      const d = dispatcher(db, newSecret());
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 1 });
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 0 }, 'not due again yet');
      const { rows } = await db.query<{ wait: number }>(
        'SELECT extract(epoch FROM next_attempt_at - now())::float8 AS wait FROM webhook_deliveries');
      assert.ok(rows[0]!.wait > 8 && rows[0]!.wait <= 10, `next attempt in about 10 s, not ${rows[0]!.wait}`);
      assert.equal(receiver.requests.length, 1);
    } finally {
      await receiver.close();
    }
  }));

  test('always 500 with maxAttempts 3: failed_at, last_error, a high-severity audit event; the URL query and secret never logged', () => withDb(async ({ db }) => {
    const secret = newSecret();
    const receiver = await startReceiver(() => 500);
    const { lines, logger } = captureLogger();
    const audit = new AuditLog(db, deriveAuditKeys(randomBytes(32).toString('base64url')), undefined);
    const d = new WebhookDispatcher({ db, secret, logger, audit, maxAttempts: 3, backoff: () => 0 });
    try {
      const url = `${receiver.url}?api_key=query-credential-123`;
      const id = await enqueue(db, url);
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 1 });
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 1 });
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 1, retried: 0 });
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 0 }, 'a failed row is not attempted again');
      assert.equal(receiver.requests.length, 3);
      assert.equal(receiver.requests[0]!.path, '/privacy-office/hook?api_key=query-credential-123', 'the URL is used as given');

      const row = await onlyDelivery(db);
      assert.equal(row.attempts, 3);
      assert.ok(row.failedAt instanceof Date);
      assert.equal(row.deliveredAt, null);
      assert.equal(row.lastError, '500');

      const { rows: events } = await db.query<StoredAuditRow>("SELECT * FROM audit_events WHERE type = 'notification.failed'");
      assert.equal(events.length, 1);
      const event = events[0]!;
      assert.deepEqual([event.outcome, event.severity, event.rule], ['failure', 'high', 'webhook_retries_exhausted']);
      assert.deepEqual(event.details, { delivery: id, topic: TOPIC, attempts: 3 });

      const logText = lines.join('\n');
      assert.ok(lines.length > 0);
      assert.match(logText, /webhook delivery gave up/);
      assert.ok(logText.includes(`"url":"${receiver.url}"`), 'origin and path are logged');
      for (const leaked of ['query-credential-123', secret, secret.slice('whsec_'.length), 'receiver-body-500']) {
        assert.ok(!logText.includes(leaked), `logs do not contain ${leaked.slice(0, 12)}...`);
      }
    } finally {
      await receiver.close();
    }
  }));

  test('a receiver that never answers: the attempt times out after timeoutMs and is retried later', () => withDb(async ({ db }) => {
    const receiver = await startReceiver(() => 'hang');
    try {
      await enqueue(db, receiver.url);
      const d = dispatcher(db, newSecret(), { timeoutMs: 200 });
      const started = performance.now();
      assert.deepEqual(await d.deliverDue(), { delivered: 0, failed: 0, retried: 1 });
      const elapsed = performance.now() - started;
      assert.ok(elapsed >= 150 && elapsed < 2_000, `returned after ${Math.round(elapsed)} ms`);
      assert.equal(receiver.requests.length, 1, 'the request was sent');
      const row = await onlyDelivery(db);
      assert.deepEqual([row.attempts, row.lastError, row.deliveredAt, row.failedAt], [1, 'timeout', null, null]);
    } finally {
      await receiver.close();
    }
  }));

  test('a refused connection is a failed attempt named by its error code', () => withDb(async ({ db }) => {
    const receiver = await startReceiver(() => 200);
    const url = receiver.url;
    await receiver.close(); // nothing listens on the port any more
    await enqueue(db, url);
    assert.deepEqual(await dispatcher(db, newSecret()).deliverDue(), { delivered: 0, failed: 0, retried: 1 });
    assert.equal((await onlyDelivery(db)).lastError, 'ECONNREFUSED');
  }));

  test('kick() returns at once and delivers shortly after; kicks during a pass are coalesced into one more pass', () => withDb(async ({ db }) => {
    const secret = newSecret();
    let release!: () => void;
    const released = new Promise<void>((resolve) => { release = resolve; });
    // The first request is held until released, so that the next kicks land during a pass.
    const receiver = await startReceiver(async (n) => { if (n === 0) await released; return 200; });
    const d = dispatcher(db, secret);
    const passes: Promise<unknown>[] = [];
    const deliverDue = d.deliverDue.bind(d);
    d.deliverDue = () => { const pass = deliverDue(); passes.push(pass); return pass; };
    try {
      const first = await enqueue(db, receiver.url, { event: 'bge_1' });
      const started = performance.now();
      assert.equal(d.kick(), undefined);
      assert.ok(performance.now() - started < 50, 'kick does not wait for the delivery');
      assert.equal(receiver.requests.length, 0, 'nothing sent synchronously');
      await receiver.waitFor(1);
      assert.equal(passes.length, 1);

      const second = await enqueue(db, receiver.url, { event: 'bge_2' });
      d.kick();
      d.kick();
      d.kick();
      assert.equal(passes.length, 1, 'no second pass while one runs');
      release();
      await receiver.waitFor(2);
      await Promise.all(passes);
      await sleep(100);
      assert.equal(passes.length, 2, 'three kicks during a pass make exactly one more pass');
      assert.deepEqual(receiver.requests.map((r) => r.headers['webhook-id']), [first, second]);
      const rows = await webhookDeliveries(db, TOPIC);
      assert.ok(rows.every((r) => r.deliveredAt instanceof Date && r.attempts === 1));
    } finally {
      release();
      await d.stop();
      await receiver.close();
    }
  }));

  test('a failing background pass is logged, never thrown; start() polls and stop() waits for the pass', () => withDb(async ({ db }) => {
    const { lines, logger } = captureLogger();
    const broken: Db = { ...db, query: async () => { throw Object.assign(new Error('boom'), { name: 'DatabaseUnavailableError' }); } };
    const failing = new WebhookDispatcher({ db: broken, secret: newSecret(), logger });
    failing.kick();
    await failing.stop();
    assert.ok(lines.some((l) => l.includes('webhook delivery pass failed') && l.includes('"level":40')), 'warned');

    const receiver = await startReceiver(() => 200);
    const d = dispatcher(db, newSecret());
    try {
      d.start(50);
      await enqueue(db, receiver.url); // no kick: the timer finds it
      await receiver.waitFor(1);
      await d.stop();
      const row = await onlyDelivery(db);
      assert.ok(row.deliveredAt instanceof Date, 'stop() waited for the pass to record the delivery');
      d.kick(); // after stop: a no-op
      await sleep(50);
      assert.equal(receiver.requests.length, 1);
    } finally {
      await d.stop();
      await receiver.close();
    }
  }));

  test('two dispatchers on one database, passes running concurrently: every delivery sent exactly once', () => withDb(async (testDb) => {
    const secret = newSecret();
    // Slow answers keep claims of both dispatchers overlapping.
    const receiver = await startReceiver(async () => { await sleep(20); return 200; });
    const { db } = testDb;
    const otherDb = testDb.openAnother() ?? db; // PostgreSQL: a second pool; PGlite: the single connection
    const a = dispatcher(db, secret);
    const b = dispatcher(otherDb, secret);
    try {
      const ids = new Set<string>();
      for (let i = 0; i < 40; i += 1) ids.add(await enqueue(db, receiver.url, { event: `bge_${i}` }));
      const results = await Promise.all([a.deliverDue(), b.deliverDue(), a.deliverDue(), b.deliverDue()]);
      assert.equal(results.reduce((sum, r) => sum + r.delivered, 0), 40);
      assert.ok(results.every((r) => r.failed === 0 && r.retried === 0));

      const seen = receiver.requests.map((r) => String(r.headers['webhook-id']));
      assert.equal(seen.length, 40, 'one request per delivery');
      assert.deepEqual(new Set(seen), ids, 'each delivery exactly once');
      const rows = await webhookDeliveries(db, TOPIC);
      assert.ok(rows.every((r) => r.attempts === 1 && r.deliveredAt instanceof Date));
      assert.deepEqual(await Promise.all([a.deliverDue(), b.deliverDue()]), [{ delivered: 0, failed: 0, retried: 0 }, { delivered: 0, failed: 0, retried: 0 }]);
    } finally {
      await receiver.close();
    }
  }));

  test('the outbox row commits with the caller’s transaction, or not at all', () => withDb(async ({ db }) => {
    await assert.rejects(db.transaction(async (tx) => {
      await enqueueWebhook(tx, { topic: TOPIC, url: 'https://privacy.example/hook', payload: {} });
      throw new Error('the grant failed');
    }), /the grant failed/);
    assert.deepEqual(await webhookDeliveries(db), []);
    await assert.rejects(enqueue(db, 'ftp://privacy.example/hook'), TypeError);
    await assert.rejects(enqueue(db, 'not a url'), TypeError);
  }));

  test('secrets must be whsec_ with at least 24 bytes of base64', () => withDb(async ({ db }) => {
    assert.throws(() => dispatcher(db, randomBytes(32).toString('base64')), /whsec_/);
    assert.throws(() => dispatcher(db, `whsec_${randomBytes(16).toString('base64')}`), /24 bytes/);
    assert.throws(() => dispatcher(db, 'whsec_'));
    assert.ok(dispatcher(db, newSecret()));
  }));
});
