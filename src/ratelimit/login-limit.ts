// Login attempts per source address and per username, checked before the password (and before any
// other database work for the attempt). Usernames are counted under their keyed pseudonym, so no
// username reaches Redis or the rate_limits table in clear.
import { randomUUID } from 'node:crypto';

import { normaliseUsername } from '../accounts/users.ts';
import type { AuditLog } from '../audit/log.ts';
import { currentRequestContext } from '../audit/request-context.ts';
import { consumePoint, counterKey, type ConsumeOutcome, type RateLimiters } from './limiters.ts';

export type LoginRateLimitResult =
  | { allowed: true }
  | { allowed: false; retryAfterSeconds: number; limiter: 'loginIp' | 'loginUser' };

export interface LoginRateLimitInput {
  /** Source address (ctx.ip). */
  ip: string | undefined;
  /** As typed; normalised here as users.ts does. */
  username: string;
  /** The client the login is for, recorded as the actor of the audit event. */
  clientId?: string | undefined;
}

/**
 * Takes one point from the source address's counter and, if the address is within its limit, one
 * from the username's. An address already over its limit does not spend the username's points, so a
 * single noisy address cannot lock a clinician out.
 *
 * Throws RateLimitUnavailableError (a DatabaseUnavailableError: the app answers 503
 * temporarily_unavailable) when the counter store cannot answer — fail closed.
 */
export async function checkLoginRateLimit(limiters: RateLimiters, audit: AuditLog, input: LoginRateLimitInput): Promise<LoginRateLimitResult> {
  if (!limiters.enabled) return { allowed: true };

  const byIp = await consumePoint(limiters, 'loginIp', counterKey('ip', input.ip || 'unknown'));
  if (!byIp.allowed) return refused(limiters, audit, input, 'loginIp', byIp);

  const usernameRef = audit.pseudonym('username', normaliseUsername(input.username));
  const byUser = await consumePoint(limiters, 'loginUser', counterKey('u', usernameRef));
  if (!byUser.allowed) return refused(limiters, audit, input, 'loginUser', byUser, usernameRef);

  return { allowed: true };
}

async function refused(
  limiters: RateLimiters,
  audit: AuditLog,
  input: LoginRateLimitInput,
  limiter: 'loginIp' | 'loginUser',
  outcome: Extract<ConsumeOutcome, { allowed: false }>,
  usernameRef?: string,
): Promise<LoginRateLimitResult> {
  // One event per key and window, whichever process sees it: a guessing run leaves one record per
  // address or username, not one per guess.
  if (outcome.firstRefusal) {
    try {
      await audit.record({
        type: 'rate_limit.exceeded',
        outcome: 'denied',
        rule: limiter === 'loginIp' ? 'rate_limit.login_ip' : 'rate_limit.login_user',
        actor: { clientId: input.clientId },
        details: { limiter, username_ref: usernameRef },
      }, undefined, currentRequestContext() ?? { requestId: randomUUID(), sourceIp: input.ip });
    } catch (err) {
      // The refusal stands whatever the audit log says (the caller answers 429 either way).
      limiters.logger?.error({ err: (err as Error).message, limiter }, 'rate_limit.exceeded audit event could not be written');
    }
  }
  return { allowed: false, retryAfterSeconds: outcome.retryAfterSeconds, limiter };
}
