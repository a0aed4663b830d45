// argon2id for human passwords only (OWASP Password Storage Cheat Sheet: m=19 MiB, t=2, p=1 at least).
// The argon2 binding hashes on libuv's thread pool, off the event loop.
import argon2 from 'argon2';

export const ARGON2_OPTIONS = {
  type: argon2.argon2id,
  memoryCost: 19_456,
  timeCost: 2,
  parallelism: 1,
} as const;

export const MIN_PASSWORD_LENGTH = 12;
export const MAX_PASSWORD_LENGTH = 256;

export function hashPassword(password: string): Promise<string> {
  return argon2.hash(password, ARGON2_OPTIONS);
}

export async function verifyPassword(hash: string, password: string): Promise<boolean> {
  try {
    return await argon2.verify(hash, password);
  } catch {
    return false;
  }
}

// Verified when the username is unknown, so a miss costs as long as a wrong password.
let dummyHash: Promise<string> | undefined;
export function burnPasswordVerification(password: string): Promise<boolean> {
  dummyHash ??= hashPassword('not-a-real-password-only-for-timing');
  return dummyHash.then((hash) => verifyPassword(hash, password)).then(() => false);
}
