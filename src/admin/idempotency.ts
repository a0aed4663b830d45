// Idempotency-Key on creates: a retried request (timeout, lost answer) gets the first answer again
// instead of creating a second record. The key is reserved before the work, so two concurrent requests
// with one key cannot both create; a different request under a used key is refused.
import { createHash } from 'node:crypto';

import type { Context } from 'koa';

import type { Queryable } from '../db/index.ts';
import { AdminHttpError } from './http.ts';

const KEY = /^[\x21-\x7e]{1,200}$/;
/** A reservation whose request is still running. */
const IN_PROGRESS = 0;

export interface Answer {
  status: number;
  body: unknown;
  etag?: string | undefined;
  /**
   * What a replay answers, when it must differ from `body`: a secret shown once is never stored, so a
   * replay repeats the first answer without it.
   */
  replayBody?: unknown;
}

/**
 * Runs `create` once per (principal, Idempotency-Key); replays its successful answer for the same
 * request. `key` defaults to the Idempotency-Key header (a page form carries its own).
 */
export async function idempotent(
  ctx: Context, db: Queryable, principal: string, rawBody: unknown, create: () => Promise<Answer>, key = ctx.get('Idempotency-Key'),
): Promise<Answer> {
  if (!key) return create();
  if (!KEY.test(key)) throw new AdminHttpError(400, 'invalid_request', 'Idempotency-Key must be 1-200 visible ASCII characters');
  const requestHash = createHash('sha256').update(`${ctx.method} ${ctx.path}\n${JSON.stringify(rawBody)}`).digest('hex');
  const reserved = await db.query(
    `INSERT INTO idempotency_keys (principal, key, method, path, request_hash, status, body)
     VALUES ($1, $2, $3, $4, $5, ${IN_PROGRESS}, 'null'::jsonb) ON CONFLICT (principal, key) DO NOTHING`,
    [principal, key, ctx.method, ctx.path, requestHash],
  );
  if (reserved.rowCount === 0) {
    const { rows: [first] } = await db.query<{ request_hash: string; status: number; body: { body: unknown; etag?: string } }>(
      'SELECT request_hash, status, body FROM idempotency_keys WHERE principal = $1 AND key = $2', [principal, key],
    );
    if (!first) return idempotent(ctx, db, principal, rawBody, create, key); // expired and swept meanwhile
    if (first.request_hash !== requestHash) throw new AdminHttpError(422, 'invalid_request', 'this Idempotency-Key was used for a different request');
    if (first.status === IN_PROGRESS) throw new AdminHttpError(409, 'conflict', 'a request with this Idempotency-Key is still in progress');
    ctx.set('Idempotent-Replayed', 'true');
    return { status: first.status, body: first.body.body, etag: first.body.etag };
  }
  let answer: Answer;
  try {
    answer = await create();
  } catch (err) {
    // A refused or failed request keeps nothing: the client may fix it and retry under the same key.
    await db.query('DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2', [principal, key]);
    throw err;
  }
  await db.query(
    'UPDATE idempotency_keys SET status = $3, body = $4::jsonb WHERE principal = $1 AND key = $2',
    [principal, key, answer.status, JSON.stringify({ body: answer.replayBody ?? answer.body, etag: answer.etag })],
  );
  return answer;
}

/** Keys older than a day are forgotten (called with the other sweeps). */
export async function sweepIdempotencyKeys(db: Queryable): Promise<number> {
  const { rowCount } = await db.query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'");
  return rowCount;
}
