// The RFC 8693 exchange decision alone: one allowed case, then one row per refusal with its exact
// error and rule (the grant handler adds token parsing, minting and audit around it).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import {
  decideExchange, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, type ExchangeDecisionInput,
} from '../src/exchange/decision.ts';

const FHIR = 'https://fhir.test/r4';
const NOW = 1_800_000_000;

function input(overrides: {
  request?: Partial<ExchangeDecisionInput['request']>;
  actor?: Partial<ExchangeDecisionInput['actor']>;
  subject?: Partial<ExchangeDecisionInput['subject']>;
  policy?: Partial<NonNullable<ExchangeDecisionInput['policy']>> | null;
  actorHasAnyPolicy?: boolean;
  audienceScope?: string | null;
} = {}): ExchangeDecisionInput {
  return {
    request: {
      subjectTokenType: TOKEN_TYPE_ACCESS_TOKEN,
      requestedTokenType: undefined,
      targets: [FHIR],
      scope: 'patient/Observation.rs?category=laboratory',
      ...overrides.request,
    },
    actor: { clientId: 'orchestrator', authMethod: 'tls_client_auth', ...overrides.actor },
    subject: {
      active: true,
      clientId: 'clinician-app',
      accountId: 'user-1',
      scope: 'patient/Observation.rs patient/Patient.rs',
      patient: 'p1',
      patientOnCareTeam: true,
      expiresAt: NOW + 240,
      ...overrides.subject,
    },
    policy: overrides.policy === null ? undefined : {
      scope: 'patient/Observation.rs patient/MedicationRequest.rs',
      maxTtlSeconds: 300,
      maxDepth: 2,
      allowBreakGlass: false,
      actorMayActForSubject: true,
      ...overrides.policy,
    },
    actorHasAnyPolicy: overrides.actorHasAnyPolicy ?? true,
    audienceScope: overrides.audienceScope === null ? undefined : (overrides.audienceScope ?? 'patient/*.cruds user/*.rs'),
    now: NOW,
  };
}

function refusal(i: ExchangeDecisionInput): { error: string; rule: string } {
  const d = decideExchange(i);
  assert.equal(d.ok, false, `expected a refusal, got ${JSON.stringify(d)}`);
  return d.ok ? { error: '', rule: '' } : { error: d.error, rule: d.rule };
}

describe('token exchange decision', () => {
  test('allowed: narrowed scope, one audience, life = min(policy, subject remaining), act names the actor', () => {
    assert.deepEqual(decideExchange(input()), {
      ok: true,
      audience: FHIR,
      scope: 'patient/Observation.rs?category=laboratory',
      lifetimeSeconds: 240,
      act: { sub: 'orchestrator' },
      depth: 1,
      depthLimit: 2,
      rule: 'exchange_policy',
    });
    const longLived = decideExchange(input({ subject: { expiresAt: NOW + 3600 }, request: { subjectTokenType: TOKEN_TYPE_JWT } }));
    assert.equal(longLived.ok && longLived.lifetimeSeconds, 300);
  });

  test('step-up rules: met by the subject\'s acr, or not overlapping the request', () => {
    const rules = [{ scope: 'patient/MedicationRequest.rs', acrValues: ['urn:clinical-authz:acr:phr'] }];
    assert.ok(decideExchange({ ...input(), stepUpRules: rules }).ok, 'labs do not overlap medication requests');
    const labRule = [{ scope: 'patient/Observation.rs', acrValues: ['urn:clinical-authz:acr:phr'] }];
    assert.ok(decideExchange({ ...input({ subject: { acr: 'urn:clinical-authz:acr:phr' } }), stepUpRules: labRule }).ok);
  });

  test('break-glass subject: allowed actor gets read-only patient scopes, never longer than the emergency access', () => {
    const d = decideExchange(input({
      subject: { breakGlass: true, breakGlassActive: true, patientOnCareTeam: true, scope: 'patient/Observation.rs', expiresAt: NOW + 90 },
      policy: { allowBreakGlass: true, scope: 'patient/Observation.cruds', maxTtlSeconds: 3600 },
      request: { scope: 'patient/Observation.rs?category=laboratory' },
    }));
    assert.equal(d.ok, true, JSON.stringify(d));
    assert.equal(d.ok && d.lifetimeSeconds, 90);
    assert.equal(d.ok && d.scope, 'patient/Observation.rs?category=laboratory');
  });

  test('a chain nests act (RFC 8693 §4.1) and counts depth', () => {
    const d = decideExchange(input({ actor: { clientId: 'lab-tool' }, subject: { clientId: 'orchestrator', act: { sub: 'orchestrator' } } }));
    assert.ok(d.ok);
    assert.deepEqual(d.act, { sub: 'lab-tool', act: { sub: 'orchestrator' } });
    assert.equal(d.depth, 2);
  });

  const matrix: Array<[string, ExchangeDecisionInput, string, string]> = [
    ['actor authenticated without mTLS', input({ actor: { authMethod: 'client_secret_basic' } }), 'unauthorized_client', 'actor_mtls'],
    ['unknown requested_token_type', input({ request: { requestedTokenType: 'urn:ietf:params:oauth:token-type:refresh_token' } }), 'invalid_request', 'requested_token_type'],
    ['wrong subject_token_type', input({ request: { subjectTokenType: 'urn:ietf:params:oauth:token-type:id_token' } }), 'invalid_request', 'subject_token_type'],
    ['missing subject_token_type', input({ request: { subjectTokenType: undefined } }), 'invalid_request', 'subject_token_type'],
    ['actor_token of another client', input({ request: { actorToken: { type: TOKEN_TYPE_ACCESS_TOKEN, clientId: 'someone' } } }), 'invalid_request', 'actor_token'],
    ['actor_token without a type', input({ request: { actorToken: { type: undefined, clientId: 'orchestrator' } } }), 'invalid_request', 'actor_token_type'],
    ['no audience', input({ request: { targets: [] } }), 'invalid_request', 'target_required'],
    ['two audiences', input({ request: { targets: [FHIR, 'https://tools.test/api'] } }), 'invalid_target', 'single_audience'],
    ['the admin API as audience (whatever a policy says)', input({ request: { targets: ['urn:clinical-authz:admin'] } }), 'invalid_target', 'admin_audience'],
    ['missing scope', input({ request: { scope: undefined } }), 'invalid_request', 'scope_required'],
    ['malformed scope', input({ request: { scope: 'patient/Observation.sr' } }), 'invalid_scope', 'scope_syntax'],
    ['non-resource scope', input({ request: { scope: 'openid patient/Observation.rs' } }), 'invalid_scope', 'resource_scopes_only'],
    ['inactive (revoked, unknown, foreign) subject', input({ subject: { active: false } }), 'invalid_grant', 'subject_token_inactive'],
    ['expired subject', input({ subject: { expiresAt: NOW - 1 } }), 'invalid_grant', 'subject_token_inactive'],
    ['actor without any policy', input({ policy: null, actorHasAnyPolicy: false }), 'unauthorized_client', 'no_exchange_policy'],
    ['audience not allowed for the actor', input({ policy: null, actorHasAnyPolicy: true }), 'invalid_target', 'audience_not_allowed'],
    ['unknown resource server', input({ audienceScope: null }), 'invalid_target', 'unknown_audience'],
    ['actor not permitted for this subject', input({ policy: { actorMayActForSubject: false } }), 'invalid_grant', 'actor_not_permitted_for_subject'],
    ['may_act names someone else', input({ subject: { mayAct: ['another-agent'] } }), 'invalid_grant', 'may_act'],
    ['break-glass subject, policy says no', input({ subject: { breakGlass: true } }), 'invalid_grant', 'break_glass_not_allowed'],
    ['break-glass subject whose emergency access ended', input({ subject: { breakGlass: true, breakGlassActive: false }, policy: { allowBreakGlass: true } }), 'invalid_grant', 'break_glass_ended'],
    ['break-glass subject, a write asked (ceiling and subject allow it)', input({
      subject: { breakGlass: true, breakGlassActive: true, scope: 'patient/Observation.cruds' }, policy: { allowBreakGlass: true, scope: 'patient/Observation.cruds' },
      request: { scope: 'patient/Observation.u' } }), 'invalid_scope', 'break_glass_read_only'],
    ['break-glass subject, a user/ scope asked', input({
      subject: { breakGlass: true, breakGlassActive: true, scope: 'user/Observation.rs' }, policy: { allowBreakGlass: true, scope: 'user/Observation.rs' },
      request: { scope: 'user/Observation.rs' } }), 'invalid_scope', 'break_glass_read_only'],
    ['actor repeating in the chain', input({ subject: { clientId: 'lab-tool', act: { sub: 'orchestrator' } } }), 'invalid_grant', 'actor_repeated'],
    ['the actor\'s own exchanged token again', input({ subject: { clientId: 'orchestrator', act: { sub: 'orchestrator' } } }), 'invalid_grant', 'actor_repeated'],
    ['chain deeper than allowed', input({ actor: { clientId: 'lab-tool' }, subject: { clientId: 'orchestrator', act: { sub: 'orchestrator' } }, policy: { maxDepth: 1 } }), 'invalid_grant', 'delegation_depth'],
    ['scope wider than the subject\'s', input({ request: { scope: 'patient/Observation.cruds' } }), 'invalid_scope', 'subject_scope'],
    ['filtered subject, unfiltered request', input({ subject: { scope: 'patient/Observation.rs?category=laboratory' }, request: { scope: 'patient/Observation.rs' } }), 'invalid_scope', 'subject_scope'],
    ['scope outside the actor\'s ceiling', input({ request: { scope: 'patient/Patient.rs' } }), 'invalid_scope', 'actor_ceiling'],
    ['scope outside the audience', input({ audienceScope: 'user/*.rs' }), 'invalid_scope', 'audience_ceiling'],
    ['patient scope without a patient', input({ subject: { patient: undefined } }), 'invalid_scope', 'patient_context'],
    ['patient no longer on the care team', input({ subject: { patientOnCareTeam: false } }), 'invalid_grant', 'care_team'],
    ['a filter naming a patient', input({ request: { scope: 'patient/Observation.rs?subject=Patient/p2' } }), 'invalid_scope', 'patient_filter'],
    ['OR values in a filter', input({ request: { scope: 'patient/Observation.rs?category=laboratory,sensitive' } }), 'invalid_scope', 'or_values'],
    ['an earlier actor\'s depth limit', input({ actor: { clientId: 'lab-tool' }, subject: { clientId: 'orchestrator', act: { sub: 'orchestrator' }, depthLimit: 1 }, policy: { maxDepth: 3 } }), 'invalid_grant', 'delegation_depth'],
    ['step-up rule not met (password sign-in, labs need MFA)', { ...input({ subject: { acr: 'urn:clinical-authz:acr:pwd' } }),
      stepUpRules: [{ scope: 'patient/Observation.r', acrValues: ['urn:clinical-authz:acr:phr'] }] }, 'insufficient_user_authentication', 'step_up_required'],
    ['step-up max_age: a passkey sign-in, but too long ago', { ...input({ subject: { acr: 'urn:clinical-authz:acr:phr', authTime: NOW - 3601 } }),
      stepUpRules: [{ scope: 'patient/Observation.r', acrValues: ['urn:clinical-authz:acr:phr'], maxAge: 3600 }] }, 'insufficient_user_authentication', 'step_up_required'],
    ['step-up rule for the actor as client', { ...input({ subject: { acr: 'urn:clinical-authz:acr:pwd' } }),
      stepUpRules: [{ clientId: 'orchestrator', acrValues: ['urn:clinical-authz:acr:phr'] }] }, 'insufficient_user_authentication', 'step_up_required'],
    ['step-up rule, wider request overlapping it', { ...input({ request: { scope: 'patient/*.s' }, subject: { scope: 'patient/*.rs' }, policy: { scope: 'patient/*.rs' } }),
      stepUpRules: [{ scope: 'patient/Observation.rs?category=laboratory', acrValues: ['urn:clinical-authz:acr:phr'] }] }, 'insufficient_user_authentication', 'step_up_required'],
  ];
  test('step-up refusal carries what would satisfy it (strictest acr, shortest max_age)', () => {
    const decision = decideExchange({
      ...input({ subject: { acr: 'urn:clinical-authz:acr:pwd', authTime: NOW - 10 } }),
      stepUpRules: [
        { scope: 'patient/Observation.r', acrValues: ['urn:clinical-authz:acr:pwd'], maxAge: 900 },
        { scope: 'patient/*.rs', acrValues: ['urn:clinical-authz:acr:phr'], maxAge: 300 },
        { scope: 'patient/MedicationRequest.rs', acrValues: ['urn:clinical-authz:acr:phr'], maxAge: 60 },
      ],
    });
    assert.equal(decision.ok, false);
    assert.deepEqual(!decision.ok && decision.requirement, { acrValues: ['urn:clinical-authz:acr:phr'], maxAge: 300 });
    const met = decideExchange({
      ...input({ subject: { acr: 'urn:clinical-authz:acr:phr', authTime: NOW - 10 } }),
      stepUpRules: [{ scope: 'patient/Observation.r', acrValues: ['urn:clinical-authz:acr:phr'], maxAge: 300 }],
    });
    assert.ok(met.ok, 'a recent passkey sign-in meets it');
  });

  for (const [name, i, error, rule] of matrix) {
    test(`refused: ${name} → ${error} (${rule})`, () => {
      assert.deepEqual(refusal(i), { error, rule });
    });
  }
});
