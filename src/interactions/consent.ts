// Turns the consent screen's "Allow" into a Grant: what was asked, cut to the client's ceiling.
import type Provider from 'oidc-provider';
import type { InteractionResults } from 'oidc-provider';

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
  if (!accountId) throw new Error('consent without a signed-in account');

  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId });
  if (!grant) throw new Error('grant vanished during consent');

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
  return details.grantId ? {} : { grantId };
}
