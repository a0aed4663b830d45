// The scope decision alone (no server): granted = requested ∩ resource server ∩ client ∩ role.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { decideScopes, MAX_REQUESTED_SCOPES, ScopePolicyError, type ScopePolicyInput } from '../src/smart/scope-policy.ts';

const FHIR = { identifier: 'https://fhir.test/r4', scope: 'patient/*.cruds user/*.cruds system/*.rs' };
const TOOLS = { identifier: 'https://tools.test/api', scope: 'tools/run tools/admin' };

function decide(overrides: Partial<ScopePolicyInput>) {
  return decideScopes({
    requested: '',
    resourceServers: [FHIR],
    clientCeiling: 'patient/Observation.rs patient/Patient.rs user/*.rs',
    roleCeiling: undefined,
    flow: 'user',
    ...overrides,
  });
}

function refusal(overrides: Partial<ScopePolicyInput>): { error: string; rule: string; scope: string } {
  try {
    decide(overrides);
  } catch (err) {
    assert.ok(err instanceof ScopePolicyError, String(err));
    return { error: err.error, rule: err.rule, scope: err.scope };
  }
  assert.fail('expected a refusal');
}

describe('scope policy', () => {
  test('named scopes pass; resource scopes are normalised and narrowed to the client ceiling', () => {
    const d = decide({ requested: 'openid launch/patient patient/Observation.read patient/Patient.cruds' });
    assert.equal(d.scope, 'openid launch/patient patient/Observation.rs patient/Patient.rs');
    assert.equal(d.perResource.get(FHIR.identifier), 'patient/Observation.rs patient/Patient.rs');
    assert.deepEqual(d.narrowed, [
      { requested: 'patient/Observation.read', granted: ['patient/Observation.rs'] },
      { requested: 'patient/Patient.cruds', granted: ['patient/Patient.rs'] },
    ]);
  });

  test('wildcard ceilings admit specific types; filters stay', () => {
    const d = decide({ requested: 'user/ImagingStudy.rs user/Observation.r?category=laboratory' });
    assert.equal(d.scope, 'user/ImagingStudy.rs user/Observation.r?category=laboratory');
    assert.deepEqual(d.narrowed, []);
  });

  test('the role ceiling narrows further and can drop a scope; all dropped is access_denied', () => {
    const d = decide({ requested: 'patient/Observation.rs user/Patient.rs', roleCeiling: ['patient/*.r'] });
    assert.equal(d.scope, 'patient/Observation.r');
    assert.deepEqual(d.droppedByRole, ['user/Patient.rs']);
    assert.deepEqual(refusal({ requested: 'openid patient/Observation.rs', roleCeiling: [] }),
      { error: 'access_denied', rule: 'user_role_ceiling', scope: '' });
    // Without resource scopes there is nothing for the role to deny.
    assert.equal(decide({ requested: 'openid', roleCeiling: [] }).scope, 'openid');
  });

  test('refusals name the rule and the offending scope', () => {
    assert.deepEqual(refusal({ requested: 'openid patient/Observation.sr' }),
      { error: 'invalid_scope', rule: 'scope_syntax', scope: 'patient/Observation.sr' });
    assert.deepEqual(refusal({ requested: 'made-up' }), { error: 'invalid_scope', rule: 'scope_syntax', scope: 'made-up' });
    assert.deepEqual(refusal({ requested: 'patient/MedicationRequest.rs' }),
      { error: 'invalid_scope', rule: 'client_scope_ceiling', scope: 'patient/MedicationRequest.rs' });
    assert.deepEqual(refusal({ requested: 'system/Patient.rs', clientCeiling: 'system/*.rs patient/*.rs' }),
      { error: 'invalid_scope', rule: 'scope_context', scope: 'system/Patient.rs' });
    assert.deepEqual(refusal({ requested: 'patient/Patient.rs', clientCeiling: 'system/*.rs patient/*.rs', flow: 'system' }),
      { error: 'invalid_scope', rule: 'scope_context', scope: 'patient/Patient.rs' });
    assert.deepEqual(refusal({ requested: 'patient/Observation.rs?patient=p2' }),
      { error: 'invalid_scope', rule: 'patient_filter', scope: 'patient/Observation.rs?patient=p2' });
    const many = Array.from({ length: MAX_REQUESTED_SCOPES + 1 }, (_, i) => `user/Observation.r?code=c${i}`).join(' ');
    assert.equal(refusal({ requested: many }).rule, 'scope_count');
  });

  test('a resource server none of whose scopes the client may hold is invalid_target', () => {
    assert.deepEqual(refusal({ requested: 'tools/run', resourceServers: [TOOLS] }),
      { error: 'invalid_target', rule: 'client_resource_ceiling', scope: '' });
  });

  test('custom (non-SMART) resource scopes match exactly, within the client ceiling', () => {
    const d = decide({ requested: 'tools/run', resourceServers: [TOOLS], clientCeiling: 'tools/run' });
    assert.equal(d.perResource.get(TOOLS.identifier), 'tools/run');
    assert.deepEqual(refusal({ requested: 'tools/admin', resourceServers: [TOOLS], clientCeiling: 'tools/run' }),
      { error: 'invalid_scope', rule: 'client_scope_ceiling', scope: 'tools/admin' });
  });

  test('system flow: system scopes within the ceiling', () => {
    const d = decide({ requested: 'system/Patient.rs system/Observation.cruds', clientCeiling: 'system/*.rs', flow: 'system' });
    assert.equal(d.scope, 'system/Patient.rs system/Observation.rs');
  });
});
