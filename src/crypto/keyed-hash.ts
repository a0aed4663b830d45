// Keyed SHA-256 (HMAC) for values we must match but must not store in the clear.
import { createHmac, timingSafeEqual } from 'node:crypto';

export function keyedHash(key: string, purpose: string, value: string): string {
  // The purpose label separates uses of one key (a client secret digest never equals a username digest).
  return createHmac('sha256', Buffer.from(key, 'base64url')).update(`${purpose}\0${value}`).digest('base64url');
}

export function constantTimeEqual(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}
