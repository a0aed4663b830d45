// Per-username failed-login throttling: a growing delay, then a temporary lock. Applies to unknown
// usernames too, so the answer never tells which usernames exist. Stored in the database so every
// process enforces the same counters.
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
  failures: number;
}

export class LoginThrottle {
  constructor(private readonly db: Queryable, private readonly key: string, private readonly policy: ThrottlePolicy) {}

  private id(username: string) {
    return keyedHash(this.key, 'login-throttle', normaliseUsername(username));
  }

  async isLocked(username: string): Promise<boolean> {
    const { rows } = await this.db.query<{ locked: boolean }>(
      'SELECT locked_until > now() AS locked FROM login_throttle WHERE username_hash = $1',
      [this.id(username)],
    );
    return rows[0]?.locked === true;
  }

  /** Records a failure atomically; counters older than the lock window start again from zero. */
  async recordFailure(username: string): Promise<ThrottleState> {
    const { rows } = await this.db.query<{ failures: number; locked: boolean }>(
      `INSERT INTO login_throttle AS t (username_hash, failures, last_failure_at, locked_until)
       VALUES ($1, 1, now(), CASE WHEN 1 >= $2 THEN now() + make_interval(secs => $3) END)
       ON CONFLICT (username_hash) DO UPDATE SET
         failures = CASE WHEN t.last_failure_at < now() - make_interval(secs => $3) THEN 1 ELSE t.failures + 1 END,
         last_failure_at = now(),
         locked_until = CASE
           WHEN (CASE WHEN t.last_failure_at < now() - make_interval(secs => $3) THEN 1 ELSE t.failures + 1 END) >= $2
           THEN now() + make_interval(secs => $3) ELSE t.locked_until END
       RETURNING failures, coalesce(locked_until > now(), false) AS locked`,
      [this.id(username), this.policy.maxFailures, this.policy.lockSeconds],
    );
    const row = rows[0]!;
    return { failures: row.failures, locked: row.locked || row.failures >= this.policy.maxFailures };
  }

  async reset(username: string): Promise<void> {
    await this.db.query('DELETE FROM login_throttle WHERE username_hash = $1', [this.id(username)]);
  }

  delayFor(failures: number): number {
    return Math.min(this.policy.baseDelayMs * 2 ** Math.max(0, failures - 1), this.policy.maxDelayMs);
  }
}
