// Reads small urlencoded form bodies for our own pages, with a hard size limit.
import type { Context } from 'koa';

import { OAuthStyleError } from '../errors.ts';

/** A refusal of one of our own routes: status, OAuth error code, description. */
export class HttpError extends OAuthStyleError {
  override name = 'HttpError';
}

export async function readRawBody(ctx: Context, limit: number): Promise<Buffer> {
  const declared = ctx.request.length;
  if (declared !== undefined && declared > limit) throw new HttpError(413, 'invalid_request', 'request body too large');
  const chunks: Buffer[] = [];
  let received = 0;
  for await (const chunk of ctx.req) {
    received += (chunk as Buffer).length;
    if (received > limit) throw new HttpError(413, 'invalid_request', 'request body too large');
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks, received);
}

/**
 * Parses application/x-www-form-urlencoded; refuses other types, repeated parameters and NUL
 * characters (which no field of ours can hold and the database refuses), as parseFormStrict does.
 */
export async function readForm(ctx: Context, limit = 16 * 1024): Promise<Map<string, string>> {
  if (!ctx.is('application/x-www-form-urlencoded')) {
    throw new HttpError(415, 'invalid_request', 'only application/x-www-form-urlencoded bodies are supported');
  }
  const params = new URLSearchParams((await readRawBody(ctx, limit)).toString('utf8'));
  const form = new Map<string, string>();
  for (const [key, value] of params) {
    if (key.includes('\0') || value.includes('\0')) throw new HttpError(400, 'invalid_request', 'parameters must not contain NUL');
    if (form.has(key)) throw new HttpError(400, 'invalid_request', `parameter ${key} must appear once`);
    form.set(key, value);
  }
  return form;
}
