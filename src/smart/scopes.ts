// SMART App Launch 2.x scopes ("Scopes and Launch Context"): parsing, v1 -> v2 normalisation and the
// subset algebra the scope policy narrows with. Pure and synchronous; nothing here grants anything by
// itself, and every operation errs towards "not allowed" (never widens).
//
// Grammar (resource scopes):  <patient|user|system>/<FHIR R4 type|*>.<perms>[?<query>]
//   perms  v2: letters of "cruds", at least one, each once, in that order (".sr", ".rr", "." are malformed)
//          v1: ".read" = ".rs", ".write" = ".cud", ".*" = ".cruds" (a v1 scope with a query is malformed)
//   query  name=value(&name=value)*; name [A-Za-z_][A-Za-z0-9_.:-]*; value non-empty RFC 6749 scope-token
//          characters except & = ? (so no space), %XX escapes kept as written with hex upper-cased.
// Canonical text: v2 letters, query pairs sorted by name then value (code units), duplicates collapsed.
//
// Meaning of a resource scope, as allows() applies it: an operation is allowed if its context matches
// (or is unspecified), its type equals the scope's (or the scope's is *), its interaction is one of the
// letters, and its params carry every name=value of the query. isSubset, intersect, covers and narrow
// are all sound with respect to that meaning; where they are incomplete it is on the narrow side.
import { FHIR_R4_RESOURCE_TYPES } from './fhir-resource-types.ts';

export type SmartContext = 'patient' | 'user' | 'system';
export type Permission = 'c' | 'r' | 'u' | 'd' | 's';

export interface ResourceScope {
  kind: 'resource';
  context: SmartContext;
  /** A FHIR R4 resource type name, or '*'. */
  resourceType: string;
  /** Canonical order, e.g. 'rs'. */
  permissions: string;
  /** Sorted by name then value, no duplicates. Values as written (percent-escapes kept, hex upper-cased). */
  query: ReadonlyArray<readonly [string, string]>;
  /** Canonical v2 text. */
  text: string;
}

export type NamedScopeText =
  | 'openid' | 'fhirUser' | 'profile' | 'launch' | 'launch/patient' | 'launch/encounter'
  | 'offline_access' | 'online_access';

export interface NamedScope { kind: 'named'; text: NamedScopeText }

export type ParsedScope = ResourceScope | NamedScope;

export type ParseResult =
  | { ok: true; scope: ParsedScope }
  | { ok: false; reason: 'malformed' | 'unknown'; detail: string };
type ParseFailure = Extract<ParseResult, { ok: false }>;

/** One FHIR operation to check against granted scopes. */
export interface FhirAccess {
  /** undefined: any context will do. */
  context?: SmartContext;
  resourceType: string;
  interaction: Permission;
  /**
   * Search parameters of a search, or the resource's own values for a read/update/delete (e.g. its
   * category). Values are compared exactly (already percent-decoded, as URLSearchParams gives them)
   * with the scope's percent-decoded values. An array means the operation carries all of these values
   * (repeated search parameter, or a resource with several categories): one match suffices. A
   * comma-separated OR ("a,b") is one value and matches only a scope value "a,b".
   */
  params?: Record<string, string | string[]>;
}

/** Longer tokens are malformed: no real SMART scope comes near, and it bounds the work per token. */
export const MAX_SCOPE_TOKEN_LENGTH = 1024;

const CONTEXTS: ReadonlySet<string> = new Set<SmartContext>(['patient', 'user', 'system']);
const NAMED: ReadonlySet<string> = new Set<NamedScopeText>([
  'openid', 'fhirUser', 'profile', 'launch', 'launch/patient', 'launch/encounter', 'offline_access', 'online_access',
]);
const LETTERS = 'cruds';
const V1_PERMISSIONS: Readonly<Record<string, string>> = { read: 'rs', write: 'cud', '*': 'cruds' };
const V2_PERMISSIONS = /^c?r?u?d?s?$/;
// RFC 6749 scope-token: %x21 / %x23-5B / %x5D-7E.
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/;
const PARAM_NAME = /^[A-Za-z_][A-Za-z0-9_.:-]*$/;
// Scope-token characters except % & = ? (% only as the start of an escape).
const PARAM_VALUE = /^(?:[\x21\x23\x24\x27-\x3C\x3E\x40-\x5B\x5D-\x7E]|%[0-9A-Fa-f]{2})+$/;

// ---- error details ---------------------------------------------------------------------------------

const MAX_DETAIL = 100;

/**
 * A detail for an OAuth error_description: the message plus the token, cut so the whole stays within
 * 100 characters, and with anything outside error_description's characters (%x20-21 / %x23-5B /
 * %x5D-7E) replaced by '?'.
 */
function detailFor(message: string, token: string): string {
  const room = MAX_DETAIL - message.length - 4; // ": '" + "'"
  const shown = token.length > room ? `${token.slice(0, Math.max(0, room - 3))}...` : token;
  return `${message}: '${shown.replace(/[^\x20\x21\x23-\x5B\x5D-\x7E]/g, '?')}'`;
}

function fail(reason: 'malformed' | 'unknown', message: string, token: string): ParseFailure {
  return { ok: false, reason, detail: detailFor(message, token) };
}

// ---- construction ----------------------------------------------------------------------------------

type Pair = readonly [string, string];

function comparePairs(a: Pair, b: Pair): number {
  if (a[0] !== b[0]) return a[0] < b[0] ? -1 : 1;
  return a[1] === b[1] ? 0 : a[1] < b[1] ? -1 : 1;
}

/** Sorted, duplicates collapsed, frozen. */
function canonicalQuery(pairs: Iterable<Pair>): ReadonlyArray<Pair> {
  const sorted = [...pairs].sort(comparePairs);
  const out: Pair[] = [];
  for (const p of sorted) {
    const last = out[out.length - 1];
    if (!last || comparePairs(last, p) !== 0) out.push(Object.freeze([p[0], p[1]] as const));
  }
  return Object.freeze(out);
}

function canonicalPermissions(letters: Iterable<string>): string {
  const set = new Set(letters);
  return [...LETTERS].filter((l) => set.has(l)).join('');
}

function makeResourceScope(
  context: SmartContext, resourceType: string, permissions: string, query: ReadonlyArray<Pair>,
): ResourceScope {
  const q = query.length ? `?${query.map(([k, v]) => `${k}=${v}`).join('&')}` : '';
  return Object.freeze({
    kind: 'resource' as const, context, resourceType, permissions, query, text: `${context}/${resourceType}.${permissions}${q}`,
  });
}

function withPermissions(s: ResourceScope, permissions: string): ResourceScope {
  return makeResourceScope(s.context, s.resourceType, permissions, s.query);
}

/** Identity of a scope apart from its letters: scopes with equal keys merge by uniting their letters. */
function keyOf(s: ResourceScope): string {
  return withPermissions(s, '').text;
}

// ---- parsing ---------------------------------------------------------------------------------------

function isValidPercentEncoding(value: string): boolean {
  try {
    decodeURIComponent(value);
    return true;
  } catch {
    return false; // e.g. %FF: not UTF-8, so no operation's value could ever equal it
  }
}

function parseQuery(query: string, token: string): { query: ReadonlyArray<Pair> } | ParseFailure {
  if (query === '') return fail('malformed', 'empty query after ?', token);
  const pairs: Pair[] = [];
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    if (eq < 0) return fail('malformed', 'query parameter is not name=value', token);
    const name = part.slice(0, eq);
    const value = part.slice(eq + 1);
    if (!PARAM_NAME.test(name)) return fail('malformed', 'invalid query parameter name', token);
    if (!PARAM_VALUE.test(value)) return fail('malformed', 'invalid or empty query parameter value', token);
    if (!isValidPercentEncoding(value)) return fail('malformed', 'percent-escape is not UTF-8', token);
    pairs.push([name, value.replace(/%[0-9a-f]{2}/gi, (e) => e.toUpperCase())]);
  }
  return { query: canonicalQuery(pairs) };
}

/** `<Type>.` or `*.` after the last '/', i.e. a resource scope whose context is missing or wrong. */
function looksLikeResourceScope(token: string): boolean {
  const head = token.split('?', 1)[0] ?? '';
  const tail = head.slice(head.lastIndexOf('/') + 1);
  const dot = tail.indexOf('.');
  if (dot <= 0) return false;
  const type = tail.slice(0, dot);
  return type === '*' || FHIR_R4_RESOURCE_TYPES.has(type);
}

export function parseScope(token: string): ParseResult {
  if (typeof token !== 'string' || token === '') return fail('malformed', 'empty scope', '');
  if (token.length > MAX_SCOPE_TOKEN_LENGTH) return fail('malformed', `scope longer than ${MAX_SCOPE_TOKEN_LENGTH} characters`, token);
  if (!SCOPE_TOKEN.test(token)) return fail('malformed', 'character not allowed in a scope', token);
  if (NAMED.has(token)) return { ok: true, scope: Object.freeze({ kind: 'named', text: token as NamedScopeText }) };

  const slash = token.indexOf('/');
  const context = slash > 0 ? token.slice(0, slash) : '';
  if (!CONTEXTS.has(context)) {
    // Outside SMART's resource namespace: a custom scope the caller may accept by exact match.
    return looksLikeResourceScope(token)
      ? fail('malformed', 'resource scope needs patient/, user/ or system/', token)
      : fail('unknown', 'not a SMART scope', token);
  }
  const rest = token.slice(slash + 1);
  const question = rest.indexOf('?');
  const head = question < 0 ? rest : rest.slice(0, question);
  const dot = head.indexOf('.');
  if (dot < 0) return fail('malformed', 'missing .permissions', token);
  const resourceType = head.slice(0, dot);
  const perms = head.slice(dot + 1);
  if (resourceType !== '*' && !FHIR_R4_RESOURCE_TYPES.has(resourceType)) {
    return fail('malformed', 'unknown FHIR R4 resource type', token);
  }
  let permissions: string;
  const v1 = Object.hasOwn(V1_PERMISSIONS, perms) ? V1_PERMISSIONS[perms] : undefined;
  if (v1 !== undefined) {
    if (question >= 0) return fail('malformed', 'v1 scope (.read/.write/.*) cannot have a query', token);
    permissions = v1;
  } else {
    if (perms === '') return fail('malformed', 'no permissions after .', token);
    if (!V2_PERMISSIONS.test(perms)) return fail('malformed', 'permissions must be letters of cruds, once each, in that order', token);
    permissions = perms;
  }
  let query: ReadonlyArray<Pair> = Object.freeze([]);
  if (question >= 0) {
    const parsed = parseQuery(rest.slice(question + 1), token);
    if (!('query' in parsed)) return parsed;
    query = parsed.query;
  }
  return { ok: true, scope: makeResourceScope(context as SmartContext, resourceType, permissions, query) };
}

/**
 * Splits on single spaces (the OAuth scope syntax); an empty token (leading, trailing or double space)
 * is malformed. '' is the empty list. Valid scopes are de-duplicated by canonical text, first kept.
 */
export function parseScopeList(list: string): {
  scopes: ParsedScope[];
  invalid: Array<{ token: string; reason: 'malformed' | 'unknown'; detail: string }>;
} {
  const scopes: ParsedScope[] = [];
  const invalid: Array<{ token: string; reason: 'malformed' | 'unknown'; detail: string }> = [];
  if (list === '') return { scopes, invalid };
  const seen = new Set<string>();
  for (const token of list.split(' ')) {
    const r = parseScope(token);
    if (!r.ok) invalid.push({ token, reason: r.reason, detail: r.detail });
    else if (!seen.has(r.scope.text)) {
      seen.add(r.scope.text);
      scopes.push(r.scope);
    }
  }
  return { scopes, invalid };
}

/** The canonical v2 text, or undefined for malformed and unknown tokens. Idempotent. */
export function normaliseScope(token: string): string | undefined {
  const r = parseScope(token);
  return r.ok ? r.scope.text : undefined;
}

export function isResourceScope(s: ParsedScope): s is ResourceScope {
  return s.kind === 'resource';
}

export function formatScopes(scopes: readonly ParsedScope[]): string {
  return scopes.map((s) => s.text).join(' ');
}

// ---- algebra ---------------------------------------------------------------------------------------

/** Every operation a allows, b allows too. */
export function isSubset(a: ResourceScope, b: ResourceScope): boolean {
  return a.context === b.context
    && (b.resourceType === '*' || a.resourceType === b.resourceType)
    && [...a.permissions].every((l) => b.permissions.includes(l))
    // More filters are narrower: a must carry every filter of b.
    && b.query.every(([k, v]) => a.query.some(([k2, v2]) => k === k2 && v === v2));
}

function valuesByName(query: ReadonlyArray<Pair>): Map<string, Set<string>> {
  const m = new Map<string, Set<string>>();
  for (const [k, v] of query) {
    const set = m.get(k) ?? new Set<string>();
    set.add(v);
    m.set(k, set);
  }
  return m;
}

const setWithin = (a: ReadonlySet<string>, b: ReadonlySet<string>) => [...a].every((x) => b.has(x));

/**
 * The operations both allow, or undefined. Queries unite (both sets of filters apply), except that a
 * parameter both sides filter on with different values makes the result empty rather than a scope
 * demanding both values. Precisely: for each shared name, one side's values must include the other's
 * (so intersect(a, b) = a whenever a ⊆ b); otherwise undefined. Commutative.
 */
export function intersect(a: ResourceScope, b: ResourceScope): ResourceScope | undefined {
  if (a.context !== b.context) return undefined;
  let resourceType: string;
  if (a.resourceType === b.resourceType || b.resourceType === '*') resourceType = a.resourceType;
  else if (a.resourceType === '*') resourceType = b.resourceType;
  else return undefined;
  const permissions = [...LETTERS].filter((l) => a.permissions.includes(l) && b.permissions.includes(l)).join('');
  if (!permissions) return undefined;
  const va = valuesByName(a.query);
  for (const [name, vb] of valuesByName(b.query)) {
    const values = va.get(name);
    if (values && !setWithin(values, vb) && !setWithin(vb, values)) return undefined;
  }
  return makeResourceScope(a.context, resourceType, permissions, canonicalQuery([...a.query, ...b.query]));
}

/**
 * Whether the ceiling allows every operation the scope allows. A named scope: listed exactly. A
 * resource scope: for each of its letters, the scope cut down to that letter is ⊆ a single ceiling
 * element. So [patient/Observation.r, patient/*.s] covers patient/Observation.rs. This is exact for
 * allows(): an operation the scope allows with no params beyond its own query needs one ceiling element
 * whose type and query admit it, and that element then admits every such operation with that letter.
 * (Two spellings of one value, "a|b" and "a%7Cb", count as different: that only ever says "not covered".)
 */
export function covers(ceiling: readonly ParsedScope[], scope: ParsedScope): boolean {
  if (scope.kind === 'named') return ceiling.some((c) => c.kind === 'named' && c.text === scope.text);
  if (!scope.permissions) return false;
  const resources = ceiling.filter(isResourceScope);
  return [...scope.permissions].every((l) => {
    const one = withPermissions(scope, l);
    return resources.some((c) => isSubset(one, c));
  });
}

/** De-duplicated by text (first kept), then resource scopes strictly inside another dropped; order kept. */
function reduce(scopes: readonly ParsedScope[]): ParsedScope[] {
  const byText = new Map<string, ParsedScope>();
  for (const s of scopes) if (!byText.has(s.text)) byText.set(s.text, s);
  const unique = [...byText.values()];
  const resources = unique.filter(isResourceScope);
  return unique.filter((s) => s.kind === 'named' || !resources.some((t) => t.text !== s.text && isSubset(s, t)));
}

/**
 * What of `requested` the ceiling allows. Per requested resource scope: its intersections with each
 * ceiling element, those with the same context/type/query merged into one scope (so ceiling
 * [Observation.r, Observation.s] narrows Observation.rs to Observation.rs, not two scopes); pieces of
 * different requested scopes are never merged, so each output is ⊆ one requested scope. Then the whole
 * result is de-duplicated and scopes inside another output scope dropped; order follows requested, then
 * ceiling. Named scopes pass only if the ceiling lists them. Every output is covered by the ceiling;
 * narrow(narrow(r, c), c) = narrow(r, c); if every r ⊆ some ceiling element the result is r reduced.
 */
export function narrow(requested: readonly ParsedScope[], ceiling: readonly ParsedScope[]): ParsedScope[] {
  const resources = ceiling.filter(isResourceScope);
  const names = new Set(ceiling.filter((c) => c.kind === 'named').map((c) => c.text));
  const out: ParsedScope[] = [];
  for (const r of requested) {
    if (r.kind === 'named') {
      if (names.has(r.text)) out.push(r);
      continue;
    }
    const pieces = new Map<string, ResourceScope>(); // insertion order = first appearance
    for (const c of resources) {
      const piece = intersect(r, c);
      if (!piece) continue;
      const key = keyOf(piece);
      const prev = pieces.get(key);
      pieces.set(key, prev ? withPermissions(prev, canonicalPermissions([...prev.permissions, ...piece.permissions])) : piece);
    }
    out.push(...pieces.values());
  }
  return reduce(out);
}

const INTERACTIONS: ReadonlySet<string> = new Set<Permission>(['c', 'r', 'u', 'd', 's']);

function decoded(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value; // only for hand-built scopes; parseScope rejects such values
  }
}

function carries(params: FhirAccess['params'], name: string, value: string): boolean {
  // Own properties only: a scope filter "constructor=x" must not meet Object.prototype.
  if (!params || !Object.hasOwn(params, name)) return false;
  const given = params[name];
  const want = decoded(value);
  return Array.isArray(given) ? given.includes(want) : given === want;
}

/** The first scope (in the given order) that allows the operation, or undefined. */
export function allows(scopes: readonly ParsedScope[], access: FhirAccess): ResourceScope | undefined {
  if (!INTERACTIONS.has(access.interaction)) return undefined;
  for (const s of scopes) {
    if (s.kind !== 'resource') continue;
    if (access.context !== undefined && access.context !== s.context) continue;
    if (s.resourceType !== '*' && s.resourceType !== access.resourceType) continue;
    if (!s.permissions.includes(access.interaction)) continue;
    if (s.query.every(([k, v]) => carries(access.params, k, v))) return s;
  }
  return undefined;
}

/**
 * Search parameters that select a patient. The patient in context comes from the launch (or the
 * subject token), never from a scope filter: such a filter would also carry a patient id into tokens
 * and audit records.
 */
const PATIENT_SELECTING_PARAMETERS: ReadonlySet<string> = new Set(['patient', 'subject', '_id', 'identifier', 'name', 'family', 'given', 'birthdate']);

/** The first patient-selecting filter parameter of a scope, if it has one. */
export function patientSelectingFilter(scope: ResourceScope): string | undefined {
  return scope.query.find(([name]) => PATIENT_SELECTING_PARAMETERS.has(name))?.[0];
}
