// Break-glass at the consent step (DESIGN.md §6): a clinician opens the record of a patient outside
// their care team in an emergency. Asked on the spot: a fresh passkey assertion (a challenge of its own
// ceremony, bound to this interaction), a reason code, a written justification and an acknowledgement.
// Granted: the read-only, one-patient part of what the app asked for, for BREAK_GLASS_TTL, with a
// review item, a high-severity audit event and a notification to the privacy office.
import type Provider from 'oidc-provider';
import { errors, type InteractionResults } from 'oidc-provider';

import { findUserById, type User } from '../accounts/users.ts';
import type { AuditLog } from '../audit/log.ts';
import {
  BreakGlassDisabledError, BreakGlassLimitError, countRecentBreakGlass, MAX_JUSTIFICATION_LENGTH, openBreakGlassEvent, type BreakGlassEvent,
} from '../break-glass/events.ts';
import { isBreakGlassReason, type BreakGlassReason } from '../break-glass/reasons.ts';
import { BREAK_GLASS_NAMED_SCOPES, breakGlassResourceScopes } from '../break-glass/scopes.ts';
import type { Db, Queryable } from '../db/index.ts';
import { listCredentials } from '../mfa/credentials.ts';
import { authenticationOptions, parseAuthentication, verifyAssertion, WebAuthnError, type RelyingParty } from '../mfa/webauthn.ts';
import { BREAK_GLASS_RESULT, clientMayBreakGlass } from '../oidc/break-glass-grants.ts';
import { LAUNCH_RESULT, resolveLaunchFor, type LaunchKind } from '../oidc/launch-context.ts';
import { isOnCareTeam } from '../smart/care-team.ts';
import { saveGrantLaunchContext } from '../smart/launch-contexts.ts';
import { normalisePatientId, patientExists } from '../smart/patients.ts';
import { launchRequired } from './consent.ts';
import { auditRefusal } from './passkey-login.ts';

type Details = Awaited<ReturnType<Provider['interactionDetails']>>;

/** Shorter than this is not an explanation a reviewer can judge. */
export const MIN_JUSTIFICATION_LENGTH = 10;

export interface BreakGlassDeps {
  db: Db;
  audit: AuditLog;
  rp: RelyingParty;
  /** Lifetime of the emergency access (seconds, at most an hour). */
  ttlSeconds: number;
  /** Emergency accesses per user per 24 hours. */
  dailyLimit: number;
  /** Queues the privacy office's notification in the grant's transaction (none configured: no-op). */
  notify(tx: Queryable, event: BreakGlassEvent, user: User): Promise<void>;
  /** Sends queued notifications in the background, after the grant committed (never awaited). */
  afterGrant(): void;
}

/** A refusal: the page shows `message`, answers `status`, and the audit log names `rule`. */
export class BreakGlassRefusal extends Error {
  override name = 'BreakGlassRefusal';
  constructor(readonly status: number, readonly rule: string, message: string, readonly patientId?: string) {
    super(message);
  }
}

export interface BreakGlassContext {
  user: User;
  clientId: string;
  kind: LaunchKind;
  /** The read-only scopes an emergency access would carry. */
  scopes: string[];
}

/** What must hold before the emergency form is even offered: the same checks run again on submit. */
export async function breakGlassContext(deps: BreakGlassDeps, details: Details, client: { [key: string]: unknown } | undefined): Promise<BreakGlassContext> {
  const accountId = details.session?.accountId;
  if (!accountId) throw new errors.SessionNotFound('break-glass without a signed-in account');
  const clientId = String(details.params.client_id);
  const kind = details.prompt.name === 'consent' ? launchRequired(details) : undefined;
  if (!kind) throw new BreakGlassRefusal(400, 'not_a_patient_launch', 'Emergency access is only for opening a patient\'s record.');
  if (!clientMayBreakGlass(client)) {
    throw new BreakGlassRefusal(403, 'client_not_allowed', 'This application is not allowed emergency (break-glass) access.');
  }
  const user = await findUserById(deps.db, accountId);
  if (!user || user.disabled || user.breakGlassDisabled) {
    throw new BreakGlassRefusal(403, 'user_disabled', 'Emergency access has been disabled for your account. Contact the privacy office.');
  }
  if (await countRecentBreakGlass(deps.db, user.id) >= deps.dailyLimit) {
    throw new BreakGlassRefusal(429, 'limit_exceeded', `You have reached the limit of ${deps.dailyLimit} emergency accesses in 24 hours. Contact the privacy office.`);
  }
  const scopes = breakGlassResourceScopes(String(details.params.scope ?? ''));
  if (!scopes.length) {
    throw new BreakGlassRefusal(403, 'no_read_scope', 'Emergency access is read-only, and this application asked to read nothing of a patient\'s record.');
  }
  if (!(await listCredentials(deps.db, user.id)).length) {
    throw new BreakGlassRefusal(403, 'passkey_missing', 'Emergency access needs a passkey. Register one on your account page first.');
  }
  return { user, clientId, kind, scopes };
}

/** A new single-use passkey challenge for this interaction's emergency access (never the login's). */
export async function breakGlassPasskeyOptions(deps: BreakGlassDeps, uid: string, userId: string) {
  const allow = await listCredentials(deps.db, userId);
  return authenticationOptions(deps.db, deps.rp, { ceremony: 'break_glass', binding: uid, userId, allow });
}

/** The patient the emergency access is for; refused when the care team already allows it. */
async function patientFor(deps: BreakGlassDeps, details: Details, context: BreakGlassContext, form: Map<string, string>): Promise<{ patientId: string; encounterId?: string | undefined }> {
  let chosen: { patientId: string; encounterId?: string | undefined };
  if (context.kind === 'ehr') {
    try {
      const launch = await resolveLaunchFor(deps.db, details.params.launch, context.clientId, context.user.id);
      chosen = { patientId: launch.patientId, encounterId: launch.encounterId };
    } catch {
      throw new BreakGlassRefusal(400, 'launch_invalid', 'The launch from your EHR is no longer valid. Start again from the EHR.');
    }
  } else {
    const patientId = normalisePatientId(form.get('patient') ?? '');
    if (!patientId) throw new BreakGlassRefusal(400, 'patient_missing', 'Enter the patient\'s identifier.');
    if (!await patientExists(deps.db, patientId)) throw new BreakGlassRefusal(400, 'patient_unknown', 'No patient has this identifier.');
    chosen = { patientId };
  }
  if (await isOnCareTeam(deps.db, context.user.id, chosen.patientId)) {
    throw new BreakGlassRefusal(400, 'not_needed', 'This patient is on your care team: no emergency access is needed. Go back and choose the patient.', chosen.patientId);
  }
  return chosen;
}

interface Statement { reason: BreakGlassReason; justification: string }

function statementOf(form: Map<string, string>, patientId: string): Statement {
  const reason = form.get('reason') ?? '';
  if (!isBreakGlassReason(reason)) throw new BreakGlassRefusal(400, 'reason_missing', 'Choose the reason for emergency access.', patientId);
  const justification = (form.get('justification') ?? '').trim();
  if (justification.length < MIN_JUSTIFICATION_LENGTH) {
    throw new BreakGlassRefusal(400, 'justification_missing', `Explain in a sentence why you need this record now (at least ${MIN_JUSTIFICATION_LENGTH} characters).`, patientId);
  }
  if (justification.length > MAX_JUSTIFICATION_LENGTH) {
    throw new BreakGlassRefusal(400, 'justification_too_long', `The justification is longer than ${MAX_JUSTIFICATION_LENGTH} characters.`, patientId);
  }
  if (form.get('acknowledge') !== 'yes') {
    throw new BreakGlassRefusal(400, 'acknowledgement_missing', 'Confirm that you understand this access is logged and reviewed.', patientId);
  }
  return { reason, justification };
}

/** The fresh passkey assertion: this interaction's break-glass challenge, the signed-in user's passkey. */
async function freshPasskey(deps: BreakGlassDeps, uid: string, context: BreakGlassContext, form: Map<string, string>, patientId: string): Promise<string> {
  const raw = form.get('credential');
  if (!raw) throw new BreakGlassRefusal(401, 'passkey_required', 'Confirm with your passkey to open the record.', patientId);
  try {
    const verified = await verifyAssertion(deps.db, deps.rp, { ceremonies: ['break_glass'], binding: uid, response: parseAuthentication(raw) });
    if (verified.userId !== context.user.id) {
      throw new WebAuthnError('wrong_user', 'this passkey belongs to another account', verified.credential.id, { ceremony: 'break_glass', userId: context.user.id });
    }
    return verified.credential.id;
  } catch (err) {
    if (!(err instanceof WebAuthnError)) throw err;
    await auditRefusal(deps.audit, err, context.clientId, context.user.id);
    throw new BreakGlassRefusal(err.reason === 'malformed' ? 400 : 401, `passkey_${err.reason}`, `The passkey check failed: ${err.message}.`, patientId);
  }
}

/**
 * Grants the emergency access for this interaction, or throws BreakGlassRefusal. Checks run cheapest
 * first; the passkey challenge is burnt only once the form is complete.
 */
export async function openBreakGlass(deps: BreakGlassDeps, input: {
  provider: Provider; details: Details; uid: string; client: { [key: string]: unknown } | undefined; form: Map<string, string>;
}): Promise<InteractionResults> {
  const { provider, details, form } = input;
  const context = await breakGlassContext(deps, details, input.client);
  const patient = await patientFor(deps, details, context, form);
  const statement = statementOf(form, patient.patientId);
  const credentialId = await freshPasskey(deps, input.uid, context, form, patient.patientId);

  const requested = String(details.params.scope ?? '').split(' ');
  // Only these scopes, for this long: expiresIn makes the grant itself end with the emergency access.
  const grant = new provider.Grant({ accountId: context.user.id, clientId: context.clientId, expiresIn: deps.ttlSeconds } as ConstructorParameters<Provider['Grant']>[0]);
  const named = requested.filter((s) => BREAK_GLASS_NAMED_SCOPES.has(s));
  if (named.length) grant.addOIDCScope(named.join(' '));
  const missing = details.prompt.details as { missingOIDCClaims?: string[]; missingResourceScopes?: Record<string, string[]> };
  if (missing.missingOIDCClaims?.length) grant.addOIDCClaims(missing.missingOIDCClaims);
  const resource = details.params.resource as string | string[] | undefined;
  const indicators = new Set([...Object.keys(missing.missingResourceScopes ?? {}), ...(Array.isArray(resource) ? resource : resource ? [resource] : [])]);
  for (const indicator of indicators) grant.addResourceScope(indicator, context.scopes.join(' '));
  const grantId = await grant.save();

  let event: BreakGlassEvent;
  try {
    event = await deps.db.transaction(async (tx) => {
      const opened = await openBreakGlassEvent(tx, {
        userId: context.user.id,
        clientId: context.clientId,
        patientPseudonym: deps.audit.pseudonym('patient', patient.patientId),
        reasonCode: statement.reason,
        justification: statement.justification,
        launchKind: context.kind,
        grantId,
        scope: context.scopes.join(' '),
        credentialId,
        lifetimeSeconds: deps.ttlSeconds,
        dailyLimit: deps.dailyLimit,
      });
      // Loud, in the same transaction: no emergency access exists without its audit record.
      await deps.audit.record({
        type: 'break_glass.granted',
        outcome: 'success',
        severity: 'high',
        rule: 'break_glass',
        actor: { userId: context.user.id, clientId: context.clientId },
        target: { patientId: patient.patientId },
        details: {
          break_glass_id: opened.id, purpose_of_use: statement.reason, scope: context.scopes, lifetime: deps.ttlSeconds,
          launch: context.kind, credential: credentialId,
        },
      }, tx);
      await saveGrantLaunchContext(tx, {
        grantId,
        patientId: patient.patientId,
        encounterId: patient.encounterId,
        needPatientBanner: context.kind === 'standalone',
        source: context.kind,
        expiresAt: opened.expiresAt,
      });
      await deps.notify(tx, opened, context.user);
      return opened;
    });
  } catch (err) {
    await grant.destroy();
    if (err instanceof BreakGlassLimitError) throw new BreakGlassRefusal(429, 'limit_exceeded', err.message, patient.patientId);
    if (err instanceof BreakGlassDisabledError) {
      throw new BreakGlassRefusal(403, 'user_disabled', 'Emergency access has been disabled for your account. Contact the privacy office.', patient.patientId);
    }
    throw err;
  }
  deps.afterGrant();
  return { consent: { grantId }, [LAUNCH_RESULT]: { kind: context.kind }, [BREAK_GLASS_RESULT]: { id: event.id } };
}
