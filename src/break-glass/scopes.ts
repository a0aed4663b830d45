// What an emergency access may carry: reading (and searching) one patient's record, nothing else.
import { formatScopes, narrow, parseScope, parseScopeList, type ResourceScope } from '../smart/scopes.ts';

const READ_ONE_PATIENT = (() => {
  const parsed = parseScope('patient/*.rs');
  if (!parsed.ok) throw new Error('unreachable: patient/*.rs is a valid scope');
  return [parsed.scope];
})();

/**
 * The read-only, patient-context part of requested resource scopes (SMART subset semantics):
 * `patient/Observation.cruds` → `patient/Observation.rs`; `user/...`, `system/...`, writes and
 * non-SMART scopes are dropped.
 */
export function breakGlassResourceScopes(requested: string): string[] {
  const resource = parseScopeList(requested).scopes.filter((s): s is ResourceScope => s.kind === 'resource');
  return [...new Set(formatScopes(narrow(resource, READ_ONE_PATIENT)).split(' ').filter(Boolean))];
}

/** OpenID and launch scopes an emergency grant keeps: never offline_access (no refresh token). */
export const BREAK_GLASS_NAMED_SCOPES: ReadonlySet<string> = new Set(['openid', 'fhirUser', 'profile', 'launch', 'launch/patient']);

/** The request scope of an emergency authorization: the kept named scopes plus the read-only scopes. */
export function breakGlassScope(requested: string): string {
  const named = requested.split(' ').filter((s) => BREAK_GLASS_NAMED_SCOPES.has(s));
  return [...new Set([...named, ...breakGlassResourceScopes(requested)])].join(' ');
}

/** True when every resource scope in the list only reads (r, s) in patient context. */
export function isReadOnlyPatientScope(scope: ResourceScope): boolean {
  return scope.context === 'patient' && /^[rs]+$/.test(scope.permissions);
}
