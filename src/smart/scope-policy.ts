// The one scope decision (DESIGN.md §6): granted = requested ∩ resource server ∩ client ceiling ∩ the
// user's roles, by SMART subset semantics. Pure: the oidc-provider glue feeds it and applies the result.
import {
  formatScopes, narrow, parseScope, parseScopeList, patientSelectingFilter, type ParsedScope, type ResourceScope,
} from './scopes.ts';

export type ScopeFlow = 'user' | 'system';

export interface ScopePolicyInput {
  /** The scope parameter as requested (space-separated). */
  requested: string;
  /** The resource servers the request targets, with their full scope lists. */
  resourceServers: ReadonlyArray<{ identifier: string; scope: string }>;
  /** The client's registered ceiling for resource-server scopes. */
  clientCeiling: string;
  /** The signed-in user's role ceiling; undefined before anyone has signed in (not applied yet). */
  roleCeiling: readonly string[] | undefined;
  /** `user`: a person is behind the request (code, refresh); `system`: client credentials. */
  flow: ScopeFlow;
}

export interface ScopePolicyDecision {
  /** What the request asks for once normalised and narrowed: non-resource scopes + granted resource scopes. */
  scope: string;
  /** Per resource server identifier: the resource scopes it may carry (space-separated). */
  perResource: Map<string, string>;
  /** Requested resource scopes the user's role removed entirely. */
  droppedByRole: string[];
  /** Requested scopes that were granted only in part (requested text -> granted texts). */
  narrowed: Array<{ requested: string; granted: string[] }>;
}

export class ScopePolicyError extends Error {
  override name = 'ScopePolicyError';
  constructor(
    readonly error: 'invalid_scope' | 'invalid_target' | 'access_denied',
    readonly description: string,
    readonly rule: string,
    /** The offending scope token, when one is to blame. */
    readonly scope = '',
  ) {
    super(description);
  }
}

const CONTEXT_FOR_FLOW: Record<ScopeFlow, ReadonlySet<string>> = {
  user: new Set(['patient', 'user']),
  system: new Set(['system']),
};

/** Scope narrowing is quadratic in the scopes involved: no honest client asks for more than this. */
export const MAX_REQUESTED_SCOPES = 64;

const shown = (token: string) => (token.length > 100 ? `${token.slice(0, 100)}…` : token);

/** A resource server's scope list, split into SMART scopes and exact-match custom scopes (e.g. `tools/run`). */
function splitServerScopes(scope: string): { smart: ResourceScope[]; custom: Set<string> } {
  const smart: ResourceScope[] = [];
  const custom = new Set<string>();
  for (const token of scope.split(' ').filter(Boolean)) {
    const parsed = parseScope(token);
    if (parsed.ok && parsed.scope.kind === 'resource') smart.push(parsed.scope);
    else custom.add(token);
  }
  return { smart, custom };
}

function resourceScopesOf(list: readonly string[] | string): ResourceScope[] {
  const text = typeof list === 'string' ? list : list.join(' ');
  return parseScopeList(text).scopes.filter((s): s is ResourceScope => s.kind === 'resource');
}

export function decideScopes(input: ScopePolicyInput): ScopePolicyDecision {
  const servers = input.resourceServers.map((rs) => ({ identifier: rs.identifier, ...splitServerScopes(rs.scope) }));
  const clientTokens = input.clientCeiling.split(' ').filter(Boolean);
  const clientSmart = resourceScopesOf(clientTokens);
  const clientCustom = new Set(clientTokens);
  const roleSmart = input.roleCeiling === undefined ? undefined : resourceScopesOf(input.roleCeiling);

  const named: string[] = [];
  const perResource = new Map<string, string[]>(servers.map((rs) => [rs.identifier, []]));
  for (const rs of servers) {
    const clientMay = narrow(rs.smart, clientSmart).length > 0 || [...rs.custom].some((s) => clientCustom.has(s));
    // Deny by default: a resource server none of whose scopes the client may hold is no audience for it.
    if (!clientMay) throw new ScopePolicyError('invalid_target', 'client is not allowed to use this resource', 'client_resource_ceiling');
  }
  const droppedByRole: string[] = [];
  const narrowed: ScopePolicyDecision['narrowed'] = [];
  let requestedResourceScopes = 0;

  const tokens = [...new Set(input.requested.split(' ').filter(Boolean))];
  if (tokens.length > MAX_REQUESTED_SCOPES) {
    throw new ScopePolicyError('invalid_scope', `more than ${MAX_REQUESTED_SCOPES} scopes requested`, 'scope_count');
  }
  for (const token of tokens) {
    const customServers = servers.filter((rs) => rs.custom.has(token));
    if (customServers.length) {
      // A resource server's own non-SMART scope: exact match, within the client's ceiling.
      requestedResourceScopes += 1;
      const allowed = customServers.filter(() => clientCustom.has(token));
      if (!allowed.length) throw new ScopePolicyError('invalid_scope', `scope not allowed for this client: ${shown(token)}`, 'client_scope_ceiling', token);
      for (const rs of allowed) perResource.get(rs.identifier)!.push(token);
      continue;
    }
    const parsed = parseScope(token);
    if (!parsed.ok) {
      throw new ScopePolicyError('invalid_scope', `${parsed.reason} scope: ${parsed.detail}`, 'scope_syntax', token);
    }
    if (parsed.scope.kind === 'named') {
      named.push(parsed.scope.text);
      continue;
    }
    const scope = parsed.scope;
    const patientFilter = patientSelectingFilter(scope);
    if (patientFilter) {
      throw new ScopePolicyError('invalid_scope', `patient filters are not allowed in scopes: ${patientFilter}`, 'patient_filter', token);
    }
    requestedResourceScopes += 1;
    if (!CONTEXT_FOR_FLOW[input.flow].has(scope.context)) {
      throw new ScopePolicyError('invalid_scope', input.flow === 'system'
        ? `${scope.context}/ scopes need a signed-in user: ${shown(token)}`
        : `system/ scopes are for backend services only: ${shown(token)}`, 'scope_context', token);
    }
    let anyForClient = false;
    const granted: ParsedScope[] = [];
    for (const rs of servers) {
      const forClient = narrow(narrow([scope], rs.smart), clientSmart);
      if (forClient.length) anyForClient = true;
      const forUser = roleSmart === undefined ? forClient : narrow(forClient, roleSmart);
      if (forUser.length) perResource.get(rs.identifier)!.push(...forUser.map((s) => s.text));
      granted.push(...forUser);
    }
    if (!anyForClient) {
      throw new ScopePolicyError('invalid_scope', `scope not allowed for this client: ${shown(token)}`, 'client_scope_ceiling', token);
    }
    const texts = [...new Set(formatScopes(granted).split(' ').filter(Boolean))];
    if (!texts.length) droppedByRole.push(scope.text);
    else if (texts.length !== 1 || texts[0] !== token) narrowed.push({ requested: token, granted: texts });
  }

  const grantedResource = [...new Set([...perResource.values()].flat())];
  if (requestedResourceScopes > 0 && grantedResource.length === 0 && roleSmart !== undefined) {
    throw new ScopePolicyError('access_denied', 'the signed-in user\'s role permits none of the requested scopes', 'user_role_ceiling');
  }
  return {
    scope: [...new Set([...named, ...grantedResource])].join(' '),
    perResource: new Map([...perResource].map(([id, scopes]) => [id, [...new Set(scopes)].join(' ')])),
    droppedByRole,
    narrowed,
  };
}
