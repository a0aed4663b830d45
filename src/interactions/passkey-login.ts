// Passkeys in the sign-in interaction: passwordless sign-in with a discoverable credential, the
// passkey as a second factor after the password, and step-up of an existing session. The challenge
// row is the state between the steps: a second-factor challenge exists only after a right password.
import type Provider from 'oidc-provider';

import type { User } from '../accounts/users.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Db } from '../db/index.ts';
import { ACR_PHISHING_RESISTANT, acrLevel, passkeyAmr, type AuthenticationRequirement } from '../mfa/assurance.ts';
import type { Ceremony } from '../mfa/challenges.ts';
import { listCredentials } from '../mfa/credentials.ts';
import { authenticationOptions, verifyAssertion, WebAuthnError, type RelyingParty, type VerifiedAssertion } from '../mfa/webauthn.ts';

export type AssertionCeremony = Exclude<Ceremony, 'registration'>;

export interface PasskeyLoginDeps {
  db: Db;
  audit: AuditLog;
  rp: RelyingParty;
  /** `enrolled`: a user with a passkey always uses it after the password. */
  mfaAtLogin: 'enrolled' | 'on_demand';
}

/** True when the requirement can only be met with a passkey. */
export function needsPasskey(requirement: AuthenticationRequirement | undefined): boolean {
  return !!requirement && requirement.acrValues.length > 0 && acrLevel(requirement.acrValues[0]) >= acrLevel(ACR_PHISHING_RESISTANT);
}

/** Options for a passkey prompt at this interaction (a new single-use challenge). */
export async function passkeyOptions(deps: PasskeyLoginDeps, uid: string, ceremony: AssertionCeremony, userId?: string) {
  const allow = userId ? await listCredentials(deps.db, userId) : [];
  return authenticationOptions(deps.db, deps.rp, { ceremony, binding: uid, userId, allow });
}

/** After a right password: whether the passkey comes next. */
export async function secondFactorFor(deps: PasskeyLoginDeps, user: User, requirement: AuthenticationRequirement | undefined):
  Promise<'passkey' | 'missing' | 'none'> {
  const has = (await listCredentials(deps.db, user.id)).length > 0;
  if (has && (deps.mfaAtLogin === 'enrolled' || needsPasskey(requirement))) return 'passkey';
  return needsPasskey(requirement) ? 'missing' : 'none';
}

export type PasskeyOutcome =
  | { ok: true; user: User; ceremony: AssertionCeremony; login: { accountId: string; acr: string; amr: string[] } }
  | { ok: false; error: WebAuthnError; retry?: { ceremony: AssertionCeremony; userId: string } | undefined };

/**
 * Verifies a passkey answer posted to interaction `uid`. `sessionAmr` is what the session already
 * proved (a password earlier, for step-up). Every refusal is audited with its reason.
 */
export async function completePasskey(deps: PasskeyLoginDeps, input: {
  provider: Provider; uid: string; clientId: string; response: Parameters<typeof verifyAssertion>[2]['response'];
  sessionAccountId: string | undefined; sessionAmr: readonly string[] | undefined;
  findUser: (id: string) => Promise<User | undefined>;
}): Promise<PasskeyOutcome> {
  let verified: VerifiedAssertion;
  try {
    verified = await verifyAssertion(deps.db, deps.rp, {
      ceremonies: ['second_factor', 'step_up', 'passwordless'], binding: input.uid, response: input.response,
    });
  } catch (err) {
    if (!(err instanceof WebAuthnError)) throw err;
    await auditRefusal(deps.audit, err, input.clientId);
    const issued = err.issued;
    // Only a challenge that named a user (after a password, or a session's step-up) may be retried.
    const retry = issued?.userId && issued.ceremony !== 'passwordless' && issued.ceremony !== 'registration'
      ? { ceremony: issued.ceremony, userId: issued.userId } : undefined;
    return { ok: false, error: err, retry };
  }
  const ceremony = verified.ceremony as AssertionCeremony; // only assertion ceremonies were accepted above
  const user = await input.findUser(verified.userId);
  if (!user || user.disabled) {
    const error = new WebAuthnError('unknown_credential', 'this passkey is not registered here', verified.credential.id);
    await auditRefusal(deps.audit, error, input.clientId, verified.userId);
    return { ok: false, error };
  }
  if (ceremony === 'step_up' && user.id !== input.sessionAccountId) {
    const error = new WebAuthnError('wrong_user', 'this passkey belongs to another account', verified.credential.id);
    await auditRefusal(deps.audit, error, input.clientId, user.id);
    return { ok: false, error };
  }
  const withPassword = ceremony === 'second_factor' || (ceremony === 'step_up' && !!input.sessionAmr?.includes('pwd'));
  const amr = passkeyAmr(verified.credential.deviceType, withPassword);
  await deps.audit.record({
    type: 'login.success',
    outcome: 'success',
    rule: ceremony === 'passwordless' ? 'passkey' : ceremony === 'step_up' ? 'passkey_step_up' : 'password_and_passkey',
    actor: { userId: user.id, clientId: input.clientId },
    details: { acr: ACR_PHISHING_RESISTANT, amr, credential: verified.credential.id },
  });
  return { ok: true, user, ceremony, login: { accountId: user.id, acr: ACR_PHISHING_RESISTANT, amr } };
}

export async function auditRefusal(audit: AuditLog, err: WebAuthnError, clientId: string | undefined, userId?: string): Promise<void> {
  const clone = err.reason === 'counter_regression';
  await audit.record({
    type: clone ? 'webauthn.counter_regression' : 'webauthn.assertion_refused',
    outcome: 'denied',
    // A counter going backwards means a copied private key: someone must look at it now.
    severity: clone ? 'high' : 'warning',
    rule: err.reason,
    actor: { userId: userId ?? err.issued?.userId, clientId },
    details: { credential: err.credentialId, ceremony: err.issued?.ceremony },
  });
}
