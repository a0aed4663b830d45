// Plain-language lines for the consent screen.
import type Provider from 'oidc-provider';

import { parseScope, type ResourceScope } from '../smart/scopes.ts';

type Details = Awaited<ReturnType<Provider['interactionDetails']>>;

const KNOWN: Record<string, string> = {
  openid: 'Confirm who you are',
  profile: 'See your name and username',
  fhirUser: 'Know which clinician record (FHIR user) you are',
  offline_access: 'Stay connected when you are not using it (refresh tokens)',
  online_access: 'Stay connected while you are signed in',
  launch: 'Open with the patient your EHR has in context',
  'launch/patient': 'Know which patient you choose',
  'launch/encounter': 'Know which encounter your EHR has in context',
};

const VERBS: Record<string, string> = { c: 'create', r: 'read', u: 'update', d: 'delete', s: 'search' };
const WHOSE: Record<ResourceScope['context'], string> = {
  patient: 'of the patient in context',
  user: 'you can access',
  system: 'of any patient (backend service)',
};

function describeResourceScope(scope: ResourceScope): string {
  const verbs = [...scope.permissions].map((p) => VERBS[p] ?? p);
  const list = verbs.length > 1 ? `${verbs.slice(0, -1).join(', ')} and ${verbs.at(-1)}` : verbs[0]!;
  const what = scope.resourceType === '*' ? 'all kinds of records' : `${scope.resourceType} records`;
  const filter = scope.query.length ? ` (only ${scope.query.map(([k, v]) => `${k} ${v}`).join(', ')})` : '';
  return `${list[0]!.toUpperCase()}${list.slice(1)} ${what} ${WHOSE[scope.context]}${filter}`;
}

export function describeScope(scope: string): string {
  if (KNOWN[scope]) return KNOWN[scope];
  const parsed = parseScope(scope);
  if (parsed.ok && parsed.scope.kind === 'resource') return describeResourceScope(parsed.scope);
  return `Use the permission "${scope}"`;
}

export function describeScopes(details: Details): string[] {
  const missing = details.prompt.details as { missingOIDCScope?: string[]; missingResourceScopes?: Record<string, string[]> };
  const lines = (missing.missingOIDCScope ?? []).map(describeScope);
  for (const [resource, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    for (const scope of scopes) lines.push(`${describeScope(scope)} at ${resource}`);
  }
  return lines.length ? lines : ['Continue with the access you granted before'];
}

export function describeScopeList(scopes: readonly string[]): string[] {
  return scopes.map(describeScope);
}
