// The audit event for a login attempt. The username appears only as a keyed pseudonym: a password
// typed into the username field must never reach the log.
import { normaliseUsername } from '../accounts/users.ts';
import type { AuditEventInput } from '../audit/event.ts';
import type { AuditLog } from '../audit/log.ts';
import type { LoginOutcome } from './password-login.ts';

export function loginEvent(audit: AuditLog, outcome: LoginOutcome, username: string, clientId: string): AuditEventInput {
  if (outcome.ok) {
    return {
      type: 'login.success',
      outcome: 'success',
      rule: 'password',
      actor: { userId: outcome.user.id, clientId },
      details: { acr: outcome.acr, amr: [...outcome.amr] },
    };
  }
  const usernameRef = username && username.length <= 63 ? audit.pseudonym('username', normaliseUsername(username)) : undefined;
  return {
    type: outcome.locked ? 'login.locked' : 'login.failed',
    outcome: outcome.locked ? 'denied' : 'failure',
    rule: outcome.locked ? 'login_throttle' : 'password',
    actor: { clientId },
    details: { reason: outcome.reason, username_ref: usernameRef },
  };
}
