// A durable, signed, retried webhook outbox (Standard Webhooks): tells the privacy office about every
// break-glass event. The row is written in the caller's transaction, so a notification exists exactly
// when the action it announces committed; delivery happens afterwards, outside any request, by
// whichever server process claims the row first.
import { randomBytes } from 'node:crypto';

import { Webhook } from 'standardwebhooks';

import type { AuditLog } from '../audit/log.ts';
import type { Db, Queryable } from '../db/index.ts';
import type { Logger } from '../log.ts';

const DEFAULT_MAX_ATTEMPTS = 8;
const DEFAULT_TIMEOUT_MS = 5_000;
// A claimed row is invisible to other processes for this long beyond the request timeout; if the
// claiming process dies mid-attempt, another one retries once the lease runs out.
const LEASE_MARGIN_SECONDS = 30;
// Rows claimed per statement; the rows of one batch are sent concurrently.
const BATCH_SIZE = 16;
// Standard Webhooks recommends secrets of 24 to 64 bytes (config.ts enforces the same floor).
const MIN_SECRET_BYTES = 24;
const MAX_ERROR_LENGTH = 60;

/** 10 s, 20 s, 40 s, ... capped at one hour. `attempt` is the number of attempts made so far (1-based). */
export function defaultBackoff(attempt: number): number {
  return Math.min(10 * 2 ** Math.max(0, attempt - 1), 3_600);
}

/**
 * Queues one notification in the caller's transaction and returns its id (the `webhook-id` header,
 * stable across retries: receivers de-duplicate on it). Call `WebhookDispatcher.kick()` after the
 * transaction commits; before that, no other connection can see the row.
 */
export async function enqueueWebhook(
  tx: Queryable,
  input: { topic: string; url: string; payload: Record<string, unknown> },
): Promise<string> {
  // A bad URL is a configuration mistake: refuse it now rather than retry it for hours.
  const url = new URL(input.url);
  if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError(`webhook URL must be http(s): ${safeUrl(input.url)}`);
  const id = `msg_${randomBytes(18).toString('base64url')}`;
  // Standard Webhooks payload shape; stored as text so every attempt signs and sends the same bytes.
  const body = JSON.stringify({ type: input.topic, timestamp: new Date().toISOString(), data: input.payload });
  await tx.query('INSERT INTO webhook_deliveries (id, topic, url, body) VALUES ($1, $2, $3, $4)', [id, input.topic, input.url, body]);
  return id;
}

export interface WebhookDelivery {
  id: string;
  topic: string;
  url: string;
  body: string;
  attempts: number;
  deliveredAt: Date | null;
  failedAt: Date | null;
  lastError: string | null;
}

interface DeliveryRow extends Record<string, unknown> {
  id: string;
  topic: string;
  url: string;
  body: string;
  attempts: number;
  delivered_at: Date | string | null;
  failed_at: Date | string | null;
  last_error: string | null;
}

const toDate = (value: Date | string | null) => (value === null ? null : new Date(value));

/** Every delivery (of one topic), oldest first: for tests and the CLI. */
export async function webhookDeliveries(db: Queryable, topic?: string): Promise<WebhookDelivery[]> {
  const { rows } = await db.query<DeliveryRow>(
    `SELECT id, topic, url, body, attempts, delivered_at, failed_at, last_error FROM webhook_deliveries
      WHERE $1::text IS NULL OR topic = $1 ORDER BY created_at, id`,
    [topic ?? null],
  );
  return rows.map((r) => ({
    id: r.id,
    topic: r.topic,
    url: r.url,
    body: r.body,
    attempts: Number(r.attempts),
    deliveredAt: toDate(r.delivered_at),
    failedAt: toDate(r.failed_at),
    lastError: r.last_error,
  }));
}

/** Origin and path only: a query string (or user info) may carry a credential. */
function safeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.origin}${parsed.pathname}`;
  } catch {
    return '[invalid url]';
  }
}

/** A short, secret-free description of a failed attempt: never a response body or a header. */
function describeError(err: unknown): string {
  if (!(err instanceof Error)) return 'error';
  // AbortSignal.timeout rejects with a TimeoutError DOMException.
  if (err.name === 'TimeoutError' || err.name === 'AbortError') return 'timeout';
  // fetch wraps network failures as TypeError('fetch failed') with the system error as cause.
  const code = (err.cause as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && /^[A-Z0-9_]+$/.test(code)) return code.slice(0, MAX_ERROR_LENGTH);
  return err.name.slice(0, MAX_ERROR_LENGTH);
}

export interface WebhookDispatcherOptions {
  db: Db;
  /** `whsec_` followed by base64 of the signing key. */
  secret: string;
  logger: Logger;
  /** Records `notification.failed` when a delivery gives up; optional so tools can run without one. */
  audit?: AuditLog;
  maxAttempts?: number;
  timeoutMs?: number;
  /** Seconds until the next attempt, given the number of attempts made so far. */
  backoff?: (attempt: number) => number;
  fetch?: typeof fetch;
}

export interface DeliveryPassResult {
  delivered: number;
  failed: number;
  retried: number;
}

interface Claimed extends Record<string, unknown> {
  id: string;
  topic: string;
  url: string;
  body: string;
  attempts: number;
}

type Outcome = 'delivered' | 'failed' | 'retried' | 'lost';

export class WebhookDispatcher {
  private readonly db: Db;
  private readonly signer: Webhook;
  private readonly logger: Logger;
  private readonly audit: AuditLog | undefined;
  private readonly maxAttempts: number;
  private readonly timeoutMs: number;
  private readonly backoff: (attempt: number) => number;
  private readonly fetchFn: typeof fetch;

  private timer: NodeJS.Timeout | undefined;
  private background: Promise<void> | undefined;
  private rerun = false;
  private stopped = false;
  private readonly passes = new Set<Promise<unknown>>();

  constructor(options: WebhookDispatcherOptions) {
    if (!options.secret.startsWith('whsec_')) throw new TypeError('webhook secret must start with whsec_');
    // Throws on invalid base64 or an empty key.
    this.signer = new Webhook(options.secret);
    if (Buffer.from(options.secret.slice('whsec_'.length), 'base64').length < MIN_SECRET_BYTES) {
      throw new TypeError(`webhook secret must hold at least ${MIN_SECRET_BYTES} bytes`);
    }
    this.db = options.db;
    this.logger = options.logger;
    this.audit = options.audit;
    this.maxAttempts = Math.max(1, Math.floor(options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS));
    this.timeoutMs = Math.max(1, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    this.backoff = options.backoff ?? defaultBackoff;
    // Wrapped so a bare global fetch is never called with the dispatcher as `this`.
    const fetchImpl = options.fetch ?? fetch;
    this.fetchFn = (input, init) => fetchImpl(input, init);
  }

  /**
   * One pass: every delivery due now is attempted once (a row retried in this pass waits for the
   * next, even with a zero backoff). Safe to run in several processes at once: each row is claimed
   * by exactly one of them. Rejects only when the database fails.
   */
  deliverDue(): Promise<DeliveryPassResult> {
    const pass = this.runPass();
    this.passes.add(pass);
    void pass.finally(() => this.passes.delete(pass)).catch(() => {});
    return pass;
  }

  /**
   * Starts a pass in the background and returns at once; never throws. Kicks during a pass are
   * coalesced into one more pass after it, so a row committed mid-pass is not left for the timer.
   */
  kick(): void {
    if (this.stopped) return;
    this.rerun = true;
    if (this.background) return;
    this.background = (async () => {
      try {
        // The check and the reset below run without an await between them, so no kick is lost.
        while (this.rerun && !this.stopped) {
          this.rerun = false;
          try {
            await this.deliverDue();
          } catch (err) {
            this.logger.warn({ err: describeError(err) }, 'webhook delivery pass failed');
          }
        }
      } finally {
        this.background = undefined;
      }
    })();
  }

  /** Polls every `intervalMs` (and once now: rows left by a previous run or another process). */
  start(intervalMs = 5_000): void {
    this.stopped = false;
    if (this.timer) clearInterval(this.timer);
    this.timer = setInterval(() => this.kick(), intervalMs);
    this.timer.unref(); // never keeps the process alive on its own
    this.kick();
  }

  /** Stops polling and kicking, and waits for passes in flight (before the database is closed). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await Promise.allSettled([this.background, ...this.passes]);
  }

  private async runPass(): Promise<DeliveryPassResult> {
    const result: DeliveryPassResult = { delivered: 0, failed: 0, retried: 0 };
    const seen: string[] = [];
    for (;;) {
      const claimed = await this.claim(seen);
      seen.push(...claimed.map((row) => row.id));
      const outcomes = await Promise.all(claimed.map((row) => this.attempt(row)));
      for (const outcome of outcomes) if (outcome !== 'lost') result[outcome] += 1;
      if (claimed.length < BATCH_SIZE) return result;
    }
  }

  /**
   * Claims due rows in one auto-committed statement: SKIP LOCKED keeps concurrent claimers apart, and
   * the lease (next_attempt_at in the future) keeps the row away from them after the commit, while
   * the HTTP request runs without any transaction or lock held.
   */
  private async claim(exclude: string[]): Promise<Claimed[]> {
    const leaseSeconds = this.timeoutMs / 1000 + LEASE_MARGIN_SECONDS;
    const { rows } = await this.db.query<Claimed>(
      `UPDATE webhook_deliveries d
          SET attempts = d.attempts + 1, next_attempt_at = now() + $2::float8 * interval '1 second'
        WHERE d.id IN (
          SELECT id FROM webhook_deliveries
           WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now() AND id <> ALL($3::text[])
           ORDER BY next_attempt_at, id
           LIMIT $1
           FOR UPDATE SKIP LOCKED)
        RETURNING d.id, d.topic, d.url, d.body, d.attempts`,
      [BATCH_SIZE, leaseSeconds, exclude],
    );
    return rows.map((r) => ({ ...r, attempts: Number(r.attempts) }));
  }

  /** Sends one claimed row and records the outcome; never throws (a recording failure is logged). */
  private async attempt(row: Claimed): Promise<Outcome> {
    const error = await this.send(row);
    try {
      if (error === undefined) return await this.markDelivered(row);
      this.logger.warn({ delivery: row.id, topic: row.topic, url: safeUrl(row.url), attempt: row.attempts, error }, 'webhook delivery attempt failed');
      return row.attempts >= this.maxAttempts ? await this.markFailed(row, error) : await this.scheduleRetry(row, error);
    } catch (err) {
      // The lease runs out and the row is attempted again: at least once, never silently dropped.
      this.logger.warn({ delivery: row.id, topic: row.topic, err: describeError(err) }, 'webhook delivery outcome could not be recorded');
      return 'lost';
    }
  }

  /** undefined on a 2xx answer, otherwise a short reason (status code or error name). */
  private async send(row: Claimed): Promise<string | undefined> {
    const now = new Date();
    try {
      const response = await this.fetchFn(row.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'webhook-id': row.id,
          'webhook-timestamp': String(Math.floor(now.getTime() / 1000)),
          'webhook-signature': this.signer.sign(row.id, now, row.body),
        },
        body: row.body,
        // A redirect is not an acknowledgement, and following one would send the payload elsewhere.
        redirect: 'manual',
        signal: AbortSignal.timeout(this.timeoutMs),
      });
      // The answer's body is never read (nor logged); cancelling frees the connection.
      await response.body?.cancel().catch(() => {});
      return response.status >= 200 && response.status < 300 ? undefined : String(response.status);
    } catch (err) {
      return describeError(err);
    }
  }

  // Each update matches the attempt number of our claim: if our lease ran out and another process
  // claimed the row again, its outcome wins and ours is dropped ('lost').

  private async markDelivered(row: Claimed): Promise<Outcome> {
    const { rowCount } = await this.db.query(
      `UPDATE webhook_deliveries SET delivered_at = now(), last_error = NULL
        WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND failed_at IS NULL`,
      [row.id, row.attempts],
    );
    if (rowCount === 0) return this.leaseLost(row);
    this.logger.info({ delivery: row.id, topic: row.topic, url: safeUrl(row.url), attempt: row.attempts }, 'webhook delivered');
    return 'delivered';
  }

  private async scheduleRetry(row: Claimed, error: string): Promise<Outcome> {
    let delay = Number(this.backoff(row.attempts));
    if (!Number.isFinite(delay) || delay < 0) delay = defaultBackoff(row.attempts);
    const { rowCount } = await this.db.query(
      `UPDATE webhook_deliveries SET last_error = $3, next_attempt_at = now() + $4::float8 * interval '1 second'
        WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND failed_at IS NULL`,
      [row.id, row.attempts, error, delay],
    );
    return rowCount === 0 ? this.leaseLost(row) : 'retried';
  }

  /** Gives up, with the audit event in the same transaction: both are recorded, or neither (and the row is retried). */
  private async markFailed(row: Claimed, error: string): Promise<Outcome> {
    const outcome = await this.db.transaction(async (tx): Promise<Outcome> => {
      const { rowCount } = await tx.query(
        `UPDATE webhook_deliveries SET last_error = $3, failed_at = now()
          WHERE id = $1 AND attempts = $2 AND delivered_at IS NULL AND failed_at IS NULL`,
        [row.id, row.attempts, error],
      );
      if (rowCount === 0) return 'lost';
      await this.audit?.record({
        type: 'notification.failed',
        outcome: 'failure',
        severity: 'high',
        rule: 'webhook_retries_exhausted',
        details: { delivery: row.id, topic: row.topic, attempts: row.attempts },
      }, tx);
      return 'failed';
    });
    if (outcome === 'lost') return this.leaseLost(row);
    this.logger.error({ delivery: row.id, topic: row.topic, url: safeUrl(row.url), attempts: row.attempts, error }, 'webhook delivery gave up');
    return 'failed';
  }

  private leaseLost(row: Claimed): Outcome {
    this.logger.warn({ delivery: row.id, topic: row.topic, attempt: row.attempts }, 'webhook delivery lease lost: outcome left to the later attempt');
    return 'lost';
  }
}
