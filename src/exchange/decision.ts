// The RFC 8693 exchange decision (DESIGN.md §2 step 6, §6), pure: given what is known about the request,
// the subject token, the actor and the policy, either the narrowed token to mint or the refusal, with
// the RFC error and the name of the rule that decided. The grant handler gathers the facts and mints.
import { unmetBy, type AuthenticationRequirement } from '../mfa/assurance.ts';
import { stepUpRequirement, type StepUpRule } from '../mfa/step-up-rules.ts';
import { ADMIN_RESOURCE } from '../admin/resource.ts';
import { isReadOnlyPatientScope } from '../break-glass/scopes.ts';
import { covers, parseScopeList, patientSelectingFilter, type ParsedScope, type ResourceScope } from '../smart/scopes.ts';

export const TOKEN_TYPE_ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
export const TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt';
export const TOKEN_EXCHANGE_GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange';

/** Client authentication methods that prove which workload is speaking (its certificate). */
export const MTLS_AUTH_METHODS: ReadonlySet<string> = new Set(['tls_client_auth', 'self_signed_tls_client_auth']);

/** RFC 8693 §4.1: the current actor, with the previous ones nested. */
export interface ActClaim {
  sub: string;
  act?: ActClaim | undefined;
}

export interface ExchangeRequestFacts {
  subjectTokenType: string | undefined;
  requestedTokenType: string | undefined;
  /** When an actor_token was given: its type and the client it was issued to (already verified). */
  actorToken?: { type: string | undefined; clientId: string | undefined } | undefined;
  /** Every `resource` and `audience` value of the request. */
  targets: readonly string[];
  scope: string | undefined;
}

export interface SubjectTokenFacts {
  /** Issued by us, found, not revoked, not expired, and its grant still exists. */
  active: boolean;
  clientId: string;
  accountId: string | undefined;
  scope: string;
  patient?: string | undefined;
  /** The authentication context class the clinician signed in with. */
  acr?: string | undefined;
  /** When the clinician signed in (seconds since the epoch). */
  authTime?: number | undefined;
  expiresAt: number;
  act?: ActClaim | undefined;
  /** RFC 8693 §4.4: the parties the subject token allows to act for it (client ids). */
  mayAct?: readonly string[] | undefined;
  breakGlass?: boolean | undefined;
  /** For a break-glass subject: its emergency access is still live (not expired, not revoked). */
  breakGlassActive?: boolean | undefined;
  /** The deepest chain an earlier actor's policy allowed (carried in exchanged tokens). */
  depthLimit?: number | undefined;
  /** The patient in context is (still) on the clinician's care team; undefined when there is no patient. */
  patientOnCareTeam?: boolean | undefined;
}

export interface ExchangePolicyFacts {
  scope: string;
  maxTtlSeconds: number;
  maxDepth: number;
  allowBreakGlass: boolean;
  /** actorMayActFor(policy, subject) already evaluated by the caller. */
  actorMayActForSubject: boolean;
}

export interface ExchangeDecisionInput {
  request: ExchangeRequestFacts;
  actor: { clientId: string; authMethod: string };
  subject: SubjectTokenFacts;
  /** The policy row for (actor, audience); undefined when there is none. */
  policy: ExchangePolicyFacts | undefined;
  /** Whether the actor has a policy for any audience (tells "not an exchanging client" from "not this audience"). */
  actorHasAnyPolicy: boolean;
  /** The scopes the target resource server accepts; undefined when the target is not a known resource server. */
  audienceScope: string | undefined;
  /** Which requests need a stronger or more recent sign-in (step-up rules); none when omitted. */
  stepUpRules?: readonly StepUpRule[] | undefined;
  /** Seconds since the epoch. */
  now: number;
}

export type ExchangeError =
  | 'invalid_request' | 'invalid_grant' | 'invalid_scope' | 'invalid_target' | 'unauthorized_client'
  // RFC 9470: the clinician must sign in again, as strongly and as recently as `requirement` says.
  | 'insufficient_user_authentication';

export type ExchangeDecision =
  | {
    ok: true; audience: string; scope: string; lifetimeSeconds: number; act: ActClaim; depth: number;
    /** The depth limit the issued token carries on (the smallest along the chain). */
    depthLimit: number;
    rule: 'exchange_policy';
  }
  | { ok: false; error: ExchangeError; rule: string; description: string; requirement?: AuthenticationRequirement };

const refuse = (error: ExchangeError, rule: string, description: string): ExchangeDecision => ({ ok: false, error, rule, description });

function actors(act: ActClaim | undefined): string[] {
  const chain: string[] = [];
  for (let link = act; link && chain.length < 16; link = link.act) chain.push(link.sub);
  return chain;
}

function resourceScopes(list: string): ResourceScope[] {
  return parseScopeList(list).scopes.filter((s): s is ResourceScope => s.kind === 'resource');
}

export function decideExchange(input: ExchangeDecisionInput): ExchangeDecision {
  const { request, actor, subject, policy } = input;

  // Which workload is speaking: only a certificate says so.
  if (!MTLS_AUTH_METHODS.has(actor.authMethod)) {
    return refuse('unauthorized_client', 'actor_mtls', 'token exchange requires mutual-TLS client authentication');
  }
  if (request.requestedTokenType !== undefined && request.requestedTokenType !== TOKEN_TYPE_ACCESS_TOKEN) {
    return refuse('invalid_request', 'requested_token_type', 'only access tokens are issued (requested_token_type must be urn:ietf:params:oauth:token-type:access_token)');
  }
  if (request.subjectTokenType !== TOKEN_TYPE_ACCESS_TOKEN && request.subjectTokenType !== TOKEN_TYPE_JWT) {
    return refuse('invalid_request', 'subject_token_type', 'subject_token_type must be an access token or JWT token type');
  }
  if (request.actorToken) {
    if (request.actorToken.type !== TOKEN_TYPE_ACCESS_TOKEN && request.actorToken.type !== TOKEN_TYPE_JWT) {
      return refuse('invalid_request', 'actor_token_type', 'actor_token_type must be an access token or JWT token type');
    }
    if (request.actorToken.clientId !== actor.clientId) {
      return refuse('invalid_request', 'actor_token', 'actor_token must be a token of the authenticated client');
    }
  }
  const targets = [...new Set(request.targets)];
  if (targets.length === 0) return refuse('invalid_request', 'target_required', 'name the one resource server (resource or audience)');
  if (targets.length > 1) return refuse('invalid_target', 'single_audience', 'a token is issued for exactly one audience');
  const audience = targets[0]!;
  // Administration is never delegated, whatever a policy says.
  if (audience === ADMIN_RESOURCE) return refuse('invalid_target', 'admin_audience', 'the admin API is never a token exchange audience');
  if (!request.scope) return refuse('invalid_request', 'scope_required', 'scope is required: a per-task token names what it needs');
  const parsed = parseScopeList(request.scope);
  const bad = parsed.invalid[0];
  if (bad) return refuse('invalid_scope', 'scope_syntax', `${bad.reason} scope: ${bad.detail}`);
  const named = parsed.scopes.find((s) => s.kind !== 'resource');
  if (named) return refuse('invalid_scope', 'resource_scopes_only', `exchanged tokens carry resource scopes only, not ${named.text}`);
  const requested = parsed.scopes as ResourceScope[];
  for (const scope of requested) {
    const patientFilter = patientSelectingFilter(scope);
    if (patientFilter) return refuse('invalid_scope', 'patient_filter', `patient filters are not allowed in scopes: ${patientFilter}`);
    for (const [name, value] of scope.query) {
      // FHIR reads a comma as OR: a filtered scope must name exactly one value per parameter.
      if (value.includes(',') || value.toUpperCase().includes('%2C')) {
        return refuse('invalid_scope', 'or_values', `one value per filter in exchanged scopes: ${name}`);
      }
    }
  }

  // The subject token: ours, alive, its grant alive.
  if (!subject.active) return refuse('invalid_grant', 'subject_token_inactive', 'subject token is not active');
  if (subject.patient !== undefined && subject.patientOnCareTeam !== true) {
    return refuse('invalid_grant', 'care_team', 'the patient in context is no longer on the clinician\'s care team');
  }
  const remaining = subject.expiresAt - input.now;
  if (remaining <= 0) return refuse('invalid_grant', 'subject_token_inactive', 'subject token is expired');

  // The actor: a policy for this audience, permitted for this subject.
  if (!policy) {
    return input.actorHasAnyPolicy
      ? refuse('invalid_target', 'audience_not_allowed', 'the actor may not target this audience')
      : refuse('unauthorized_client', 'no_exchange_policy', 'the client is not permitted to exchange tokens');
  }
  if (input.audienceScope === undefined) return refuse('invalid_target', 'unknown_audience', 'unknown resource server');
  // A workload never exchanges a token it already holds or acts in (no laundering of its own tokens).
  const chain = actors(subject.act);
  if (chain.includes(actor.clientId) || subject.clientId === actor.clientId) {
    return refuse('invalid_grant', 'actor_repeated', 'the actor already appears in this delegation chain');
  }
  if (!policy.actorMayActForSubject) {
    return refuse('invalid_grant', 'actor_not_permitted_for_subject', 'the actor may not act for this subject');
  }
  if (subject.mayAct && !subject.mayAct.includes(actor.clientId)) {
    return refuse('invalid_grant', 'may_act', 'the subject token does not allow this actor');
  }
  if (subject.breakGlass && !policy.allowBreakGlass) {
    return refuse('invalid_grant', 'break_glass_not_allowed', 'break-glass tokens may not be exchanged by this actor');
  }
  if (subject.breakGlass && !subject.breakGlassActive) {
    return refuse('invalid_grant', 'break_glass_ended', 'the emergency access of the subject token has ended');
  }
  if (subject.breakGlass) {
    // An emergency access stays what it was: reading one patient's record.
    const widening = requested.find((scope) => !isReadOnlyPatientScope(scope));
    if (widening) return refuse('invalid_scope', 'break_glass_read_only', `break-glass tokens exchange for patient read scopes only: ${widening.text}`);
  }
  const depth = chain.length + 1;
  // Every policy along the chain bounds it: a later actor cannot re-delegate beyond an earlier one's limit.
  const depthLimit = Math.min(policy.maxDepth, subject.depthLimit ?? Infinity);
  if (depth > depthLimit) return refuse('invalid_grant', 'delegation_depth', 'the delegation chain would be deeper than allowed');

  // What data: requested ⊆ subject ∩ actor ceiling ∩ audience, by SMART subset semantics.
  const subjectScopes: ParsedScope[] = resourceScopes(subject.scope);
  const ceiling = resourceScopes(policy.scope);
  const audienceScopes = resourceScopes(input.audienceScope);
  for (const scope of requested) {
    if (!covers(subjectScopes, scope)) return refuse('invalid_scope', 'subject_scope', `wider than the subject token: ${scope.text}`);
    if (!covers(ceiling, scope)) return refuse('invalid_scope', 'actor_ceiling', `outside the actor's ceiling for this audience: ${scope.text}`);
    if (!covers(audienceScopes, scope)) return refuse('invalid_scope', 'audience_ceiling', `not a scope of this resource server: ${scope.text}`);
    if (scope.context === 'patient' && !subject.patient) {
      return refuse('invalid_scope', 'patient_context', `patient scopes need a patient in context: ${scope.text}`);
    }
  }

  // Why it is allowed includes how strongly, and how recently, the clinician proved who they are.
  const requirement = stepUpRequirement(input.stepUpRules ?? [], { clientId: actor.clientId, audiences: [audience], scopes: requested });
  const unmet = requirement && unmetBy(requirement, { acr: subject.acr, authTime: subject.authTime }, input.now);
  if (requirement && unmet) {
    return {
      ok: false,
      error: 'insufficient_user_authentication',
      rule: 'step_up_required',
      description: unmet === 'acr' ? 'a stronger sign-in is required for this request' : 'a more recent sign-in is required for this request',
      requirement,
    };
  }

  return {
    ok: true,
    audience,
    scope: requested.map((s) => s.text).join(' '),
    lifetimeSeconds: Math.min(policy.maxTtlSeconds, remaining),
    act: subject.act ? { sub: actor.clientId, act: subject.act } : { sub: actor.clientId },
    depth,
    depthLimit,
    rule: 'exchange_policy',
  };
}
