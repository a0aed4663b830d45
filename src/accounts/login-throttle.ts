// Per-username failed-login throttling: a growing delay, then a temporary lock. Applies to unknown
// usernames too, so the answer never tells which usernames exist. Stored in the database so every
// process enforces the same counters.
//
// An attempt is counted BEFORE the password is checked (reserve()), in one atomic statement: parallel
// requests cannot all slip past the lock while the first ones are still hashing. At most maxFailures
// passwords are verified per username within a lock window, however many requests arrive at once.
import type { Queryable } from '../db/index.ts';
import { keyedHash } from '../crypto/keyed-hash.ts';
import { normaliseUsername } from './users.ts';

export interface ThrottlePolicy {
  maxFailures: number;
  lockSeconds: number;
  /** First delay; doubles with each failure up to maxDelayMs. */
  baseDelayMs: number;
  maxDelayMs: number;
}

export interface ThrottleState {
  locked: boolean;
  /** Attempts counted in the current window, this one included (in flight or failed). */
  failures: number;
}

export type Reservation =
  | { granted: false }
  | ({ granted: true } & ThrottleState);

export class LoginThrottle {
  constructor(private readonly db: Queryable, private readonly key: string, private readonly policy: ThrottlePolicy) {}

  private id(username: string) {
    return keyedHash(this.key, 'login-throttle', normaliseUsername(username));
  }

  /**
   * Counts one attempt before its password is checked; refused (no row written) while the username is
   * locked. The attempt that reaches maxFailures is still granted and sets the lock, so the count of
   * granted attempts (= password verifications) never exceeds maxFailures until the lock expires.
   * A counter starts again from one once its last attempt is older than the lock window, or once its
   * lock has expired. A successful login calls reset(); a failed one leaves the count as reserved.
   */
  async reserve(username: string): Promise<Reservation> {
    // ON CONFLICT DO UPDATE locks the row and evaluates SET and WHERE on its latest committed version,
    // so concurrent reservations are serialised; a refused update (WHERE false) returns no row.
    const { rows } = await this.db.query<{ failures: number; locked: boolean }>(
      `INSERT INTO login_throttle AS t (username_hash, failures, last_failure_at, locked_until)
       VALUES ($1, 1, now(), CASE WHEN 1 >= $2 THEN now() + make_interval(secs => $3) END)
       ON CONFLICT (username_hash) DO UPDATE SET
         failures = CASE
           WHEN t.last_failure_at <= now() - make_interval(secs => $3) OR t.locked_until <= now() THEN 1
           ELSE t.failures + 1 END,
         last_failure_at = now(),
         locked_until = CASE
           WHEN (CASE
                   WHEN t.last_failure_at <= now() - make_interval(secs => $3) OR t.locked_until <= now() THEN 1
                   ELSE t.failures + 1 END) >= $2
           THEN now() + make_interval(secs => $3)
           ELSE NULL END
         WHERE t.locked_until IS NULL OR t.locked_until <= now()
       RETURNING failures, coalesce(locked_until > now(), false) AS locked`,
      [this.id(username), this.policy.maxFailures, this.policy.lockSeconds],
    );
    const row = rows[0];
    if (!row) return { granted: false };
    return { granted: true, failures: row.failures, locked: row.locked || row.failures >= this.policy.maxFailures };
  }

  /** Clears the counter and any lock (a successful login; an administrator's unlock, in their transaction `db`). True when there was one. */
  async reset(username: string, db: Queryable = this.db): Promise<boolean> {
    const { rowCount } = await db.query('DELETE FROM login_throttle WHERE username_hash = $1', [this.id(username)]);
    return rowCount > 0;
  }

  /**
   * Deletes counters that no longer matter: last attempt older than the lock window and not locked.
   * Run it periodically; every username ever tried (attacker-chosen ones too) otherwise keeps a row.
   */
  async sweep(): Promise<number> {
    const { rows } = await this.db.query<{ n: number }>(
      `WITH gone AS (
         DELETE FROM login_throttle
         WHERE last_failure_at < now() - make_interval(secs => $1)
           AND (locked_until IS NULL OR locked_until <= now())
         RETURNING 1)
       SELECT count(*)::int AS n FROM gone`,
      [this.policy.lockSeconds],
    );
    return rows[0]?.n ?? 0;
  }

  delayFor(failures: number): number {
    return Math.min(this.policy.baseDelayMs * 2 ** Math.max(0, failures - 1), this.policy.maxDelayMs);
  }
}
