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

// Verified when the username is unknown (or disabled), so a miss costs as long as a wrong password.
// Built once per process; warmUpPasswordHashing() at start-up keeps the first miss from also paying
// for the hash (a one-off timing tell otherwise).
let dummyHash: Promise<string> | undefined;

function dummy(): Promise<string> {
  dummyHash ??= hashPassword('not-a-real-password-only-for-timing').catch((err: unknown) => {
    dummyHash = undefined;
    throw err;
  });
  return dummyHash;
}

/** Builds the dummy hash used for unknown usernames. Call (and await) once at start-up; idempotent. */
export async function warmUpPasswordHashing(): Promise<void> {
  await dummy();
}

export async function burnPasswordVerification(password: string): Promise<false> {
  await verifyPassword(await dummy(), password);
  return false;
}
