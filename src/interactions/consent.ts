// Turns the consent screen's "Allow" into a Grant: what was asked, cut to the client's ceiling.
import type Provider from 'oidc-provider';
import { errors, type InteractionResults } from 'oidc-provider';

type Details = Awaited<ReturnType<Provider['interactionDetails']>>;

export interface ConsentSummary {
  accountId: string;
  clientId: string;
  scope: string[];
  resources: string[];
}

/**
 * Resource scopes reaching consent are already cut to the client's ceiling (getResourceServerInfo).
 * `record` runs before the grant is saved: if the consent cannot be audited, nothing is granted.
 */
export async function grantConsent(
  provider: Provider,
  details: Details,
  record: (summary: ConsentSummary) => Promise<void>,
): Promise<NonNullable<InteractionResults['consent']>> {
  const accountId = details.session?.accountId;
  const clientId = String(details.params.client_id);
  // An oidc-provider error (400 invalid_request), not a 500: the session ended under the interaction.
  if (!accountId) throw new errors.SessionNotFound('consent without a signed-in account');

  // The grant may have gone while the consent page was open (revoked after a refresh-token replay or a
  // token revocation, or expired at GRANT_TTL). Start a fresh one holding only what this page showed:
  // oidc-provider then asks consent again for anything the revoked grant held, rather than restoring it.
  const existing = details.grantId ? await provider.Grant.find(details.grantId) : undefined;
  const grant = existing ?? new provider.Grant({ accountId, clientId });

  const missing = details.prompt.details as {
    missingOIDCScope?: string[];
    missingOIDCClaims?: string[];
    missingResourceScopes?: Record<string, string[]>;
  };
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
  });
  const grantId = await grant.save();
  return existing ? {} : { grantId };
}
