// Turns the consent screen's "Allow" into a Grant: what was asked, cut to the client's ceiling, and,
// for a SMART launch, the patient in context.
import type Provider from 'oidc-provider';
import { errors, type InteractionResults } from 'oidc-provider';

import type { Queryable } from '../db/index.ts';
import { currentCareTeamPatients, isOnCareTeam, type CareTeamPatient } from '../smart/care-team.ts';
import { saveGrantLaunchContext } from '../smart/launch-contexts.ts';
import { normalisePatientId } from '../smart/patients.ts';
import { LAUNCH_RESULT, resolveLaunchFor, type LaunchKind } from '../oidc/launch-context.ts';

type Details = Awaited<ReturnType<Provider['interactionDetails']>>;

export interface ConsentSummary {
  accountId: string;
  clientId: string;
  scope: string[];
  resources: string[];
  /** Raw patient id when a launch context is set (the audit log pseudonymises it). */
  patientId?: string | undefined;
  launch?: LaunchKind | undefined;
}

interface MissingDetails {
  missingOIDCScope?: string[];
  missingOIDCClaims?: string[];
  missingResourceScopes?: Record<string, string[]>;
  launchContext?: LaunchKind;
}

export class LaunchRefusedError extends Error {
  override name = 'LaunchRefusedError';
  constructor(readonly rule: 'care_team' | 'launch_invalid', message: string, readonly patientId?: string) {
    super(message);
  }
}

export function launchRequired(details: Details): LaunchKind | undefined {
  return (details.prompt.details as MissingDetails).launchContext;
}

/** The patients the clinician may choose in a standalone launch: the current care team, nothing else. */
export function choosablePatients(db: Queryable, details: Details): Promise<CareTeamPatient[]> {
  const accountId = details.session?.accountId;
  return accountId ? currentCareTeamPatients(db, accountId) : Promise.resolve([]);
}

interface ChosenContext { patientId: string; encounterId?: string | undefined; kind: LaunchKind }

/** Which patient this authorization is for; refuses anyone outside the clinician's care team. */
async function chooseContext(db: Queryable, details: Details, accountId: string, form: ConsentOptions['form']): Promise<ChosenContext> {
  const kind = launchRequired(details)!;
  const clientId = String(details.params.client_id);
  if (kind === 'ehr') {
    let launch;
    try {
      launch = await resolveLaunchFor(db, details.params.launch, clientId, accountId);
    } catch (err) {
      throw new LaunchRefusedError('launch_invalid', (err as { error_description?: string }).error_description ?? 'launch is not valid');
    }
    if (!await isOnCareTeam(db, accountId, launch.patientId)) {
      throw new LaunchRefusedError('care_team', 'the launch patient is not on your care team', launch.patientId);
    }
    return { patientId: launch.patientId, encounterId: launch.encounterId, kind };
  }
  const patientId = normalisePatientId(form.get('patient') ?? '');
  if (!patientId) throw new LaunchRefusedError('care_team', 'choose a patient');
  if (!await isOnCareTeam(db, accountId, patientId)) {
    throw new LaunchRefusedError('care_team', 'that patient is not on your care team', patientId);
  }
  return { patientId, kind };
}

export interface ConsentOptions {
  db: Queryable;
  form: { get(name: string): string | null | undefined };
  /** Lifetime of the grant (seconds): the launch context lives as long. */
  grantTtlSeconds: number;
}

/**
 * Resource scopes reaching consent are already cut to the client's ceiling and the user's roles
 * (src/smart/scope-policy.ts). `record` runs before the grant is saved: if the consent cannot be
 * audited, nothing is granted.
 */
export async function grantConsent(
  provider: Provider,
  details: Details,
  record: (summary: ConsentSummary) => Promise<void>,
  options: ConsentOptions,
): Promise<InteractionResults> {
  const accountId = details.session?.accountId;
  const clientId = String(details.params.client_id);
  // An oidc-provider error (400 invalid_request), not a 500: the session ended under the interaction.
  if (!accountId) throw new errors.SessionNotFound('consent without a signed-in account');

  const launch = launchRequired(details);
  const context = launch ? await chooseContext(options.db, details, accountId, options.form) : undefined;

  // The grant may have gone while the consent page was open (revoked after a refresh-token replay or a
  // token revocation, or expired at GRANT_TTL). Start a fresh one holding only what this page showed:
  // oidc-provider then asks consent again for anything the revoked grant held, rather than restoring it.
  // A launch always gets a grant of its own (holding what the previous one held), so that the patient
  // context of earlier tokens never changes.
  const existing = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  const grant = existing && !context ? existing : new provider.Grant({ accountId, clientId });
  if (existing && context) {
    if (existing.openid) grant.openid = structuredClone(existing.openid);
    if (existing.resources) grant.resources = structuredClone(existing.resources);
  }

  const missing = details.prompt.details as MissingDetails;
  if (missing.missingOIDCScope?.length) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims?.length) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    if (scopes.length) grant.addResourceScope(indicator, scopes.join(' '));
  }
  const resourceScopes = Object.values(missing.missingResourceScopes ?? {}).flat();
  await record({
    accountId,
    clientId,
    scope: [...(missing.missingOIDCScope ?? []), ...resourceScopes],
    resources: Object.keys(missing.missingResourceScopes ?? {}),
    patientId: context?.patientId,
    launch: context?.kind,
  });
  const grantId = await grant.save();
  if (context) {
    await saveGrantLaunchContext(options.db, {
      grantId,
      patientId: context.patientId,
      encounterId: context.encounterId,
      // Standalone: the app chose nothing on screen, so it must show who the patient is.
      needPatientBanner: context.kind === 'standalone',
      source: context.kind,
      expiresAt: new Date(Date.now() + options.grantTtlSeconds * 1000),
    });
    return { consent: { grantId }, [LAUNCH_RESULT]: { kind: context.kind } };
  }
  return { consent: existing ? {} : { grantId } };
}
