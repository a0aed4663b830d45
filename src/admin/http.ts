// JSON in and out for the admin API: bodies, errors, entity tags and preconditions (RFC 9110 §13).
import { createHash } from 'node:crypto';

import type { Context } from 'koa';

import { readRawBody } from '../http/body.ts';

export const MAX_JSON_BODY = 64 * 1024;

/** An answer with an OAuth-style error body: `{ error, error_description }` (+ the offending field). */
export class AdminHttpError extends Error {
  override name = 'AdminHttpError';
  constructor(readonly status: number, readonly error: string, readonly description: string, readonly field?: string) {
    super(description);
  }
}

export const notFound = (what: string) => new AdminHttpError(404, 'not_found', `no such ${what}`);

/** The request body as a JSON object; anything else is a 4xx naming what is wrong. */
export async function readJson(ctx: Context): Promise<Record<string, unknown>> {
  if (!ctx.is('application/json')) throw new AdminHttpError(415, 'invalid_request', 'send application/json');
  const raw = await readRawBody(ctx, MAX_JSON_BODY);
  let value: unknown;
  try {
    value = JSON.parse(raw.toString('utf8'));
  } catch {
    throw new AdminHttpError(400, 'invalid_request', 'the body is not valid JSON');
  }
  if (!value || typeof value !== 'object' || Array.isArray(value)) throw new AdminHttpError(400, 'invalid_request', 'the body must be a JSON object');
  if (depthOf(value) > MAX_JSON_DEPTH) throw new AdminHttpError(400, 'invalid_request', `the body is nested deeper than ${MAX_JSON_DEPTH} levels`);
  return value as Record<string, unknown>;
}

/** No admin resource nests deeper; far deeper bodies would overflow recursive code (hashing, validation). */
export const MAX_JSON_DEPTH = 32;

/** Nesting depth of parsed JSON, without recursion (a hostile body must not overflow the stack here). */
function depthOf(root: unknown): number {
  let deepest = 0;
  const stack: Array<[unknown, number]> = [[root, 1]];
  while (stack.length) {
    const [value, depth] = stack.pop()!;
    if (!value || typeof value !== 'object') continue;
    deepest = Math.max(deepest, depth);
    if (deepest > MAX_JSON_DEPTH) return deepest;
    for (const child of Object.values(value)) stack.push([child, depth + 1]);
  }
  return deepest;
}

/** A strong entity tag over a resource's representation: any change to what was read changes it. */
export function etagOf(representation: unknown): string {
  return `"${createHash('sha256').update(JSON.stringify(representation)).digest('base64url').slice(0, 27)}"`;
}

export function send(ctx: Context, status: number, body: unknown, etag?: string): void {
  ctx.status = status;
  ctx.set('Cache-Control', 'no-store');
  if (etag) ctx.set('ETag', etag);
  ctx.body = body;
}

/**
 * Optimistic concurrency: a change names the version it was made against. No If-Match → 428, another
 * version → 412 (someone else changed it since it was read).
 */
export function requireIfMatch(ctx: Context, current: string): void {
  const header = ctx.get('If-Match');
  if (!header) throw new AdminHttpError(428, 'precondition_required', 'send If-Match with the ETag of the version you changed');
  const tags = header.split(',').map((t) => t.trim());
  // `*` ("any version") would be exactly the silent overwrite this check exists to stop.
  if (tags.includes('*')) throw new AdminHttpError(428, 'precondition_required', 'If-Match must name the ETag you read, not *');
  if (!tags.includes(current)) {
    throw new AdminHttpError(412, 'precondition_failed', 'the resource changed since it was read: read it again and re-apply your change');
  }
}
