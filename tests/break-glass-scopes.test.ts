// The break-glass scope rule alone: what an emergency access may carry out of what an app asked for.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { breakGlassResourceScopes, breakGlassScope, isReadOnlyPatientScope } from '../src/break-glass/scopes.ts';
import { parseScope, type ResourceScope } from '../src/smart/scopes.ts';

test('emergency scopes: read and search of one patient only; writes, user/ and system/ dropped', () => {
  const cases: Array<[string, string[]]> = [
    ['patient/Observation.cruds', ['patient/Observation.rs']],
    ['patient/Observation.cud', []],
    ['patient/Observation.r patient/Patient.s', ['patient/Observation.r', 'patient/Patient.s']],
    ['patient/Observation.read patient/Observation.write', ['patient/Observation.rs']],
    ['patient/*.*', ['patient/*.rs']],
    ['patient/Observation.cruds?category=laboratory', ['patient/Observation.rs?category=laboratory']],
    ['user/*.cruds system/Patient.rs', []],
    ['tools/run openid offline_access', []],
  ];
  for (const [asked, expected] of cases) assert.deepEqual(breakGlassResourceScopes(asked), expected, asked);
});

test('emergency request scope keeps identity and launch scopes, never offline_access', () => {
  assert.equal(
    breakGlassScope('openid fhirUser offline_access online_access launch/patient patient/Observation.cruds user/Observation.rs'),
    'openid fhirUser launch/patient patient/Observation.rs',
  );
});

test('read-only patient scope predicate', () => {
  const scope = (text: string) => {
    const parsed = parseScope(text);
    assert.ok(parsed.ok && parsed.scope.kind === 'resource');
    return parsed.scope as ResourceScope;
  };
  assert.equal(isReadOnlyPatientScope(scope('patient/Observation.rs')), true);
  assert.equal(isReadOnlyPatientScope(scope('patient/Observation.s')), true);
  assert.equal(isReadOnlyPatientScope(scope('patient/Observation.ru')), false);
  assert.equal(isReadOnlyPatientScope(scope('user/Observation.rs')), false);
});
