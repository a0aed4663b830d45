// RFC 8693 token exchange at the token endpoint: an mTLS-authenticated workload (the AI orchestrator)
// trades a clinician's access token for a narrow, short-lived token for one audience, bound to its own
// certificate, naming itself in `act`. Facts are gathered here, decided in decision.ts, and the token
// is minted in a child grant of the clinician's, so revoking the clinician's grant revokes it too.
import type { JWK } from 'jose';
import type Provider from 'oidc-provider';
import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import { findUserById } from '../accounts/users.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Db } from '../db/index.ts';
import { allAlive, revokeWholeGrant, saveAsChildGrant } from '../oidc/adapter.ts';
import type { JwtAccessTokenRegistry } from '../oidc/jwt-access-tokens.ts';
import { usableCertificate } from '../oidc/mtls.ts';
import { listStepUpRules } from '../mfa/step-up-rules.ts';
import { InsufficientUserAuthentication } from '../oidc/insufficient-authentication.ts';
import { isOnCareTeam } from '../smart/care-team.ts';
import { activeBreakGlass, recordBreakGlassToken } from '../break-glass/events.ts';
import { parseScopeList, patientSelectingFilter } from '../smart/scopes.ts';
import { findResourceServer } from '../oidc/resource-servers.ts';
import { ourAccessTokens, type TokenRecord } from '../oidc/our-tokens.ts';
import {
  decideExchange, TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN, type ActClaim, type ExchangeDecision, type SubjectTokenFacts,
} from './decision.ts';
import { actorMayActFor, findExchangePolicy, listExchangePolicies } from './policies.ts';

/** Carried in exchanged tokens: the deepest chain any policy so far allowed. */
const DEPTH_LIMIT_CLAIM = 'delegation_depth_limit';

export const EXCHANGE_PARAMETERS = [
  'subject_token', 'subject_token_type', 'actor_token', 'actor_token_type', 'requested_token_type', 'resource', 'audience', 'scope',
] as const;

export interface TokenExchangeDeps {
  db: Db;
  issuer: string;
  audit: AuditLog | undefined;
  jwtAccessTokens: JwtAccessTokenRegistry;
  /** The provider's signing keys (private parts are dropped before use). */
  jwks: { keys: JWK[] };
  signingAlg: string;
}

type Record_ = TokenRecord;

// oidc-provider's InvalidGrant hides its description ("grant request is invalid"); an actor is told
// which rule refused (never anything about the token beyond that), so it can fix its request.
const ERRORS: Record<'invalid_request' | 'invalid_grant' | 'invalid_target' | 'unauthorized_client', (description: string) => Error> = {
  invalid_request: (d) => new errors.InvalidRequest(d),
  invalid_grant: (d) => new errors.CustomOIDCProviderError('invalid_grant', d),
  invalid_target: (d) => new errors.InvalidTarget(d),
  unauthorized_client: (d) => new errors.UnauthorizedClient(d),
};

function values(param: unknown): string[] {
  if (param === undefined) return [];
  return (Array.isArray(param) ? param : [param]).filter((v): v is string => typeof v === 'string' && v !== '');
}

function asAct(value: unknown): ActClaim | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const { sub, act } = value as { sub?: unknown; act?: unknown };
  if (typeof sub !== 'string') return undefined;
  const nested = asAct(act);
  return nested ? { sub, act: nested } : { sub };
}

/** RFC 8693 §4.4 `may_act`: the parties allowed to act for the token (by `sub` or `client_id`). */
function mayActOf(value: unknown): string[] | undefined {
  if (!value || typeof value !== 'object') return undefined;
  const { sub, client_id: clientId } = value as { sub?: unknown; client_id?: unknown };
  return [sub, clientId].filter((v): v is string => typeof v === 'string');
}

/**
 * The requested scopes as the audit log may hold them: well-formed ones only (a malformed token is
 * client-chosen text), and none with a patient-selecting filter (it would carry a raw patient id).
 */
function auditableScopes(scope: string): string[] {
  return parseScopeList(scope).scopes
    .filter((s) => s.kind !== 'resource' || !patientSelectingFilter(s))
    .map((s) => s.text);
}

export function registerTokenExchange(provider: Provider, deps: TokenExchangeDeps): void {
  /** One of our access tokens, JWT (verified, then its record) or opaque, if it is still alive. */
  const findOurToken = ourAccessTokens({ provider, ...deps });

  async function subjectFacts(value: string): Promise<{ facts: SubjectTokenFacts; record?: Record_; ref?: string }> {
    const found = value ? await findOurToken(value) : undefined;
    const inactive = { facts: { active: false, clientId: '', accountId: undefined, scope: '', expiresAt: 0 } };
    if (!found) return inactive;
    const { record } = found;
    // A clinician's token: client-credentials tokens have no user to act for.
    const grantAlive = found.grantAlive ?? (typeof record.grantId === 'string' && !!await provider.Grant.find(record.grantId));
    if (!grantAlive || typeof record.grantId !== 'string' || !record.accountId) return inactive;
    const extra = record.extra ?? {};
    const breakGlassId = extra.break_glass === true && typeof extra.break_glass_id === 'string' ? extra.break_glass_id : undefined;
    const breakGlassActive = breakGlassId ? !!await activeBreakGlass(deps.db, breakGlassId) : false;
    return {
      record,
      ref: found.ref,
      facts: {
        active: true,
        clientId: String(record.clientId),
        accountId: String(record.accountId),
        scope: typeof record.scope === 'string' ? record.scope : '',
        patient: typeof extra.patient === 'string' ? extra.patient : undefined,
        acr: typeof extra.acr === 'string' ? extra.acr : undefined,
        authTime: typeof extra.auth_time === 'number' ? extra.auth_time : undefined,
        expiresAt: Number(record.exp),
        act: asAct(extra.act),
        mayAct: mayActOf(extra.may_act),
        breakGlass: extra.break_glass === true,
        breakGlassActive,
        depthLimit: typeof extra[DEPTH_LIMIT_CLAIM] === 'number' ? extra[DEPTH_LIMIT_CLAIM] : undefined,
        // A live emergency access stands in for the care team (for its one patient, read-only).
        patientOnCareTeam: typeof extra.patient === 'string'
          ? breakGlassActive || await isOnCareTeam(deps.db, String(record.accountId), extra.patient)
          : undefined,
      },
    };
  }

  async function handler(ctx: KoaContextWithOIDC): Promise<void> {
    const params = ctx.oidc.params as Record<string, unknown>;
    const client = ctx.oidc.client!;
    const targets = [...values(params.resource), ...values(params.audience)];
    const subject = await subjectFacts(typeof params.subject_token === 'string' ? params.subject_token : '');
    const actorToken = typeof params.actor_token === 'string' && params.actor_token
      ? await findOurToken(params.actor_token)
      : undefined;
    const audience = new Set(targets).size === 1 ? targets[0] : undefined;
    const policy = audience ? await findExchangePolicy(deps.db, client.clientId, audience) : undefined;
    const user = subject.facts.accountId ? await findUserById(deps.db, subject.facts.accountId) : undefined;
    const resourceServer = audience ? await findResourceServer(deps.db, audience) : undefined;

    const decision: ExchangeDecision = decideExchange({
      request: {
        subjectTokenType: params.subject_token_type as string | undefined,
        requestedTokenType: params.requested_token_type as string | undefined,
        actorToken: typeof params.actor_token === 'string' && params.actor_token
          ? { type: params.actor_token_type as string | undefined, clientId: actorToken?.record.clientId as string | undefined }
          : undefined,
        targets,
        scope: params.scope as string | undefined,
      },
      actor: { clientId: client.clientId, authMethod: client.clientAuthMethod ?? '' },
      subject: subject.facts.active && (!user || user.disabled) ? { ...subject.facts, active: false } : subject.facts,
      policy: policy && {
        scope: policy.scope,
        maxTtlSeconds: policy.maxTtlSeconds,
        maxDepth: policy.maxDepth,
        allowBreakGlass: policy.allowBreakGlass,
        actorMayActForSubject: actorMayActFor(policy, { clientId: subject.facts.clientId, roles: user?.roles ?? [] }),
      },
      actorHasAnyPolicy: policy !== undefined || (await listExchangePolicies(deps.db, client.clientId)).length > 0,
      audienceScope: resourceServer?.scope,
      stepUpRules: await listStepUpRules(deps.db),
      now: Math.floor(Date.now() / 1000),
    });

    const cert = usableCertificate(ctx.req);
    const event = {
      actor: { clientId: client.clientId, userId: subject.facts.accountId, certThumbprint: cert?.thumbprint },
      target: { audience, patientId: subject.facts.patient },
      details: {
        subject_token: subject.ref,
        subject_client: subject.facts.active ? subject.facts.clientId : undefined,
        scope_requested: typeof params.scope === 'string' ? auditableScopes(params.scope) : undefined,
        break_glass_id: subject.facts.breakGlass ? String(subject.record?.extra?.break_glass_id ?? '') : undefined,
      },
    };
    if (!decision.ok) {
      await deps.audit?.record({ type: 'exchange.refused', outcome: 'denied', severity: 'warning', rule: decision.rule, ...event });
      if (decision.error === 'invalid_scope') throw new errors.InvalidScope(decision.description, String(params.scope ?? ''));
      if (decision.error === 'insufficient_user_authentication') {
        throw new InsufficientUserAuthentication(decision.description, decision.requirement ?? { acrValues: [] });
      }
      throw ERRORS[decision.error](decision.description);
    }
    // The binding: an exchanged token is only ever usable with the actor's certificate.
    if (!cert) {
      await deps.audit?.record({ type: 'exchange.refused', outcome: 'denied', severity: 'warning', rule: 'actor_certificate', ...event });
      throw new errors.InvalidGrant('mutual TLS client certificate not provided');
    }
    await deps.audit?.record({
      type: 'exchange.allowed', outcome: 'success', rule: decision.rule, ...event,
      details: { ...event.details, scope_granted: decision.scope, lifetime: decision.lifetimeSeconds, depth: decision.depth },
    });

    const { record } = subject;
    const parentGrantId = String(record!.grantId);
    const extra = record?.extra ?? {};
    // Linked before anything is issued, so a revocation of the clinician's grant from now on reaches it.
    const child = new provider.Grant({ accountId: subject.facts.accountId!, clientId: client.clientId });
    child.addResourceScope(decision.audience, decision.scope);
    const lifetime = Math.min(decision.lifetimeSeconds, resourceServer!.accessTokenTtl ?? Infinity);
    const childId = await saveAsChildGrant(parentGrantId, new Date((Math.floor(Date.now() / 1000) + lifetime) * 1000), () => child.save());

    const token = new provider.AccessToken({
      accountId: subject.facts.accountId!,
      client,
      grantId: childId,
      gty: 'token_exchange',
      scope: decision.scope,
      extra: {
        act: decision.act,
        [DEPTH_LIMIT_CLAIM]: decision.depthLimit,
        ...(subject.facts.patient ? { patient: subject.facts.patient } : {}),
        // Restrictions of the subject travel on: a later actor meets them too.
        ...Object.fromEntries(['fhirUser', 'acr', 'amr', 'auth_time', 'may_act', 'break_glass', 'break_glass_id', 'purpose_of_use']
          .filter((k) => extra[k] !== undefined).map((k) => [k, extra[k]])),
      },
    });
    token.resourceServer = new provider.ResourceServer(decision.audience, {
      scope: decision.scope,
      audience: decision.audience,
      accessTokenFormat: resourceServer!.accessTokenFormat,
      accessTokenTTL: lifetime,
      ...(resourceServer!.accessTokenFormat === 'jwt' ? { jwt: { sign: { alg: deps.signingAlg } } } : {}),
    } as never);
    token.setThumbprint('x5t', cert.leaf);
    ctx.oidc.entity('AccessToken', token);
    const value = await token.save();

    // A revocation that ran between the first look at the subject and the link above did not see the
    // child: look again now that the token exists, and take it back if the subject is gone.
    // (The subject was verified above; its record is the AccessToken row of its jti, JWT or opaque.)
    const subjectAlive = await allAlive(deps.db, [{ model: 'Grant', id: parentGrantId }, { model: 'AccessToken', id: String(record!.jti) }]);
    if (!subjectAlive) {
      await revokeWholeGrant(deps.db, childId);
      await deps.audit?.record({ type: 'exchange.refused', outcome: 'denied', severity: 'warning', rule: 'subject_revoked_during_exchange', ...event });
      throw ERRORS.invalid_grant('subject token is not active');
    }

    if (extra.break_glass === true && typeof extra.break_glass_id === 'string') {
      // "Which tokens followed" an emergency access includes what workloads exchanged it for.
      const tokenRef = resourceServer!.accessTokenFormat === 'jwt' ? String(token.jti) : deps.audit?.pseudonym('token', value) ?? 'unrecorded';
      await recordBreakGlassToken(deps.db, extra.break_glass_id, {
        tokenRef, kind: 'exchanged_token', clientId: client.clientId, audience: decision.audience, scope: decision.scope,
        expiresAt: new Date((Math.floor(Date.now() / 1000) + token.expiration) * 1000),
      });
    }

    ctx.body = {
      access_token: value,
      issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: decision.scope,
    };
  }

  provider.registerGrantType(TOKEN_EXCHANGE_GRANT, handler, EXCHANGE_PARAMETERS, ['resource', 'audience']);
}
