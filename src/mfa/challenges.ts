// WebAuthn challenges: random, single-use, short-lived, and answerable only in the ceremony and the
// place (interaction or account session) that asked for them.
import { randomBytes } from 'node:crypto';

import type { Queryable } from '../db/index.ts';

export type Ceremony = 'registration' | 'second_factor' | 'passwordless' | 'step_up' | 'break_glass';

export interface IssuedChallenge {
  /** The random bytes, as the WebAuthn options carry them. */
  bytes: Uint8Array<ArrayBuffer>;
  /** base64url of the bytes: what the browser's clientDataJSON echoes. */
  challenge: string;
  expiresAt: Date;
}

export interface ConsumedChallenge {
  ceremony: Ceremony;
  userId: string | undefined;
}

export async function issueChallenge(db: Queryable, input: { ceremony: Ceremony; binding: string; userId?: string | undefined; ttlSeconds: number }): Promise<IssuedChallenge> {
  const bytes = new Uint8Array(randomBytes(32));
  const challenge = Buffer.from(bytes).toString('base64url');
  const { rows } = await db.query<{ expires_at: Date }>(
    `INSERT INTO webauthn_challenges (challenge, ceremony, binding, user_id, expires_at)
     VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5)) RETURNING expires_at`,
    [challenge, input.ceremony, input.binding, input.userId ?? null, input.ttlSeconds],
  );
  return { bytes, challenge, expiresAt: new Date(rows[0]!.expires_at) };
}

/**
 * Marks the challenge used and returns it, in one statement: of two answers racing with the same
 * challenge, one wins. Unknown, expired, used, or issued for another ceremony or place: undefined.
 */
export async function consumeChallenge(db: Queryable, challenge: string, ceremonies: readonly Ceremony[], binding: string): Promise<ConsumedChallenge | undefined> {
  if (!/^[A-Za-z0-9_-]{16,128}$/.test(challenge)) return undefined;
  const { rows } = await db.query<{ ceremony: Ceremony; user_id: string | null }>(
    `UPDATE webauthn_challenges SET consumed_at = now()
     WHERE challenge = $1 AND consumed_at IS NULL AND expires_at > now() AND ceremony = ANY($2) AND binding = $3
     RETURNING ceremony, user_id`,
    [challenge, [...ceremonies], binding],
  );
  const row = rows[0];
  return row ? { ceremony: row.ceremony, userId: row.user_id ?? undefined } : undefined;
}

export async function sweepExpiredChallenges(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ n: string | number }>(
    `WITH gone AS (DELETE FROM webauthn_challenges WHERE expires_at < now() - interval '1 hour' RETURNING 1) SELECT count(*) AS n FROM gone`,
  );
  return Number(rows[0]?.n ?? 0);
}
