// Plain-language lines for the consent screen.
import type Provider from 'oidc-provider';

type Details = Awaited<ReturnType<Provider['interactionDetails']>>;

const KNOWN: Record<string, string> = {
  openid: 'Confirm who you are',
  profile: 'See your name and username',
  fhirUser: 'Know which clinician record (FHIR user) you are',
  offline_access: 'Stay connected when you are not using it (refresh tokens)',
};

export function describeScope(scope: string): string {
  return KNOWN[scope] ?? `Use the permission "${scope}"`;
}

export function describeScopes(details: Details): string[] {
  const missing = details.prompt.details as { missingOIDCScope?: string[]; missingResourceScopes?: Record<string, string[]> };
  const lines = (missing.missingOIDCScope ?? []).map(describeScope);
  for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    for (const scope of scopes) lines.push(`${describeScope(scope)} at ${resource}`);
  }
  return lines.length ? lines : ['Continue with the access you granted before'];
}
