// Username + password check with throttling. Every failure looks the same to the person typing.
import { setTimeout as sleep } from 'node:timers/promises';

import type { LoginThrottle } from '../accounts/login-throttle.ts';
import { burnPasswordVerification, MAX_PASSWORD_LENGTH, verifyPassword } from '../accounts/passwords.ts';
import { findUserByUsername, type User } from '../accounts/users.ts';
import type { Queryable } from '../db/index.ts';
import { ACR_PASSWORD, AMR_PASSWORD } from '../mfa/assurance.ts';

export const LOGIN_FAILED_MESSAGE = 'Sign-in failed. Check your username and password, or try again later.';

export interface PasswordLogin {
  db: Queryable;
  throttle: LoginThrottle;
}

export type LoginOutcome =
  | { ok: true; user: User; acr: string; amr: readonly string[] }
  | { ok: false; locked: boolean; message: string; reason: 'locked' | 'bad_credentials' | 'bad_input' };

export async function authenticatePassword(deps: PasswordLogin, username: string, password: string): Promise<LoginOutcome> {
  const fail = (reason: 'locked' | 'bad_credentials' | 'bad_input', locked = false): LoginOutcome =>
    ({ ok: false, locked, reason, message: LOGIN_FAILED_MESSAGE });

  if (!username || !password || username.length > 63 || password.length > MAX_PASSWORD_LENGTH) return fail('bad_input');

  // Count the attempt before checking the password, atomically: a locked username gets no check at
  // all, and parallel requests cannot get more checks than LOGIN_MAX_FAILURES between them.
  const reservation = await deps.throttle.reserve(username);
  if (!reservation.granted) return fail('locked', true);

  const user = await findUserByUsername(deps.db, username);
  const valid = user && !user.disabled
    ? await verifyPassword(user.passwordHash, password)
    : await burnPasswordVerification(password);

  if (!valid || !user) {
    // The failure is already counted. The growing delay slows a sequential guesser before the lock;
    // it costs the server only a timer (the lock, not the delay, bounds a parallel one).
    await sleep(deps.throttle.delayFor(reservation.failures));
    return fail(reservation.locked ? 'locked' : 'bad_credentials', reservation.locked);
  }
  await deps.throttle.reset(username);
  return { ok: true, user, acr: ACR_PASSWORD, amr: AMR_PASSWORD };
}
