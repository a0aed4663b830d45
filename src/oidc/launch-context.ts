// SMART launch context inside oidc-provider: which authorizations need a patient, the `launch` parameter
// of an EHR launch, and the context travelling with tokens (claims) and token responses.
// Each authorization that sets a patient gets its own Grant (see interactions/consent.ts), and the
// context is stored per grant id, so refreshing keeps it and a later launch for another patient
// cannot change what an earlier grant's tokens say.
import type Koa from 'koa';
import type Provider from 'oidc-provider';
import { errors, interactionPolicy, type KoaContextWithOIDC } from 'oidc-provider';

import type { Queryable } from '../db/index.ts';
import { isOnCareTeam } from '../smart/care-team.ts';
import { findGrantLaunchContext, resolveLaunch, type GrantLaunchContext, type LaunchContext } from '../smart/launch-contexts.ts';
import { parseScope } from '../smart/scopes.ts';

/** The interaction result key our consent step sets once it has stored this authorization's context. */
export const LAUNCH_RESULT = 'smartLaunch';

export type LaunchKind = 'standalone' | 'ehr';

/** A patient must be in context when the app asks for one or for any patient-level resource scope. */
export function needsPatientContext(scope: string | undefined): boolean {
  return (scope ?? '').split(' ').some((token) => {
    if (token === 'launch/patient' || token === 'launch') return true;
    const parsed = parseScope(token);
    return parsed.ok && parsed.scope.kind === 'resource' && parsed.scope.context === 'patient';
  });
}

/** EHR launch when the request carries the `launch` scope; otherwise the clinician picks a patient. */
export function launchKind(scope: string | undefined): LaunchKind {
  return (scope ?? '').split(' ').includes('launch') ? 'ehr' : 'standalone';
}

/**
 * Resolves an EHR launch value for this client and (when known) this user. The same check runs at the
 * authorization endpoint (parameter validation) and again when the context is stored at consent.
 */
export async function resolveLaunchFor(
  db: Queryable, launch: unknown, clientId: string, userId: string | undefined,
): Promise<LaunchContext> {
  if (typeof launch !== 'string' || !launch) throw new errors.InvalidRequest('launch parameter is required with the launch scope');
  const context = await resolveLaunch(db, launch);
  if (!context) throw new errors.InvalidRequest('launch is unknown or expired');
  if (context.clientId && context.clientId !== clientId) throw new errors.InvalidRequest('launch was issued for another client');
  if (userId && context.userId && context.userId !== userId) throw new errors.AccessDenied('launch was issued for another user');
  return context;
}

/** extraParams validator for `launch` (SMART EHR launch). */
export function launchParameter(db: Queryable) {
  return async (ctx: KoaContextWithOIDC, value: string | undefined, client: { clientId: string }) => {
    const scope = ctx.oidc.params?.scope as string | undefined;
    if (launchKind(scope) !== 'ehr') {
      if (value !== undefined) throw new errors.InvalidRequest('launch parameter given without the launch scope');
      return;
    }
    await resolveLaunchFor(db, value, client.clientId, ctx.oidc.session?.accountId);
  };
}

/** extraParams validator for SMART's `aud`: it must name the resource the request is for. */
export async function audParameter(ctx: KoaContextWithOIDC, value: string | undefined) {
  if (value === undefined) return;
  const resource = ctx.oidc.params?.resource as string | string[] | undefined;
  const resources = Array.isArray(resource) ? resource : resource ? [resource] : [];
  if (resources.length !== 1 || resources[0] !== value) {
    throw new errors.InvalidRequest('aud must be the one resource server the request is for');
  }
}

/** Consent-prompt check: this authorization needs a patient and has not chosen one yet. */
export function launchContextCheck(): InstanceType<typeof interactionPolicy.Check> {
  return new interactionPolicy.Check(
    'launch_context_missing',
    'a patient must be chosen for this launch',
    (ctx) => {
      if (!needsPatientContext(ctx.oidc.params?.scope as string | undefined)) return interactionPolicy.Check.NO_NEED_TO_PROMPT;
      const result = ctx.oidc.result as { consent?: { grantId?: string }; [LAUNCH_RESULT]?: unknown } | undefined;
      // The patient was chosen for one grant: if that grant is not the one in use (revoked or expired
      // before the resume, so oidc-provider started an empty one), the choice does not carry over.
      const grant = ctx.oidc.entities.Grant as { jti?: string } | undefined;
      const chosen = !!result?.[LAUNCH_RESULT] && !!result.consent?.grantId && result.consent.grantId === grant?.jti;
      return chosen ? interactionPolicy.Check.NO_NEED_TO_PROMPT : interactionPolicy.Check.REQUEST_PROMPT;
    },
    (ctx) => ({ launchContext: launchKind(ctx.oidc.params?.scope as string | undefined) }),
  );
}

/** The launch context of the grant a token belongs to, looked up once per request. */
export class GrantContexts {
  readonly #db: Queryable;
  readonly #cache = new WeakMap<object, Map<string, Promise<GrantLaunchContext | undefined>>>();
  /** Access to the grant's patient besides the care team: a live emergency (break-glass) access. */
  readonly #emergencyAccess: ((ctx: object | undefined, grantId: string | undefined) => Promise<boolean>) | undefined;

  constructor(db: Queryable, emergencyAccess?: (ctx: object | undefined, grantId: string | undefined) => Promise<boolean>) {
    this.#db = db;
    this.#emergencyAccess = emergencyAccess;
  }

  find(ctx: object | undefined, grantId: string | undefined): Promise<GrantLaunchContext | undefined> {
    if (!grantId) return Promise.resolve(undefined);
    if (!ctx) return findGrantLaunchContext(this.#db, grantId);
    let perRequest = this.#cache.get(ctx);
    if (!perRequest) this.#cache.set(ctx, perRequest = new Map());
    let found = perRequest.get(grantId);
    if (!found) perRequest.set(grantId, found = findGrantLaunchContext(this.#db, grantId));
    return found;
  }

  /**
   * Claims an access token of this grant carries: the patient in context (SMART `patient`), only when
   * the authorization it comes from needs a patient, and only while that patient is still on the
   * clinician's care team (checked at every issue, refresh included: leaving the team ends access), or
   * while the grant's emergency access lasts.
   */
  async claims(ctx: object | undefined, token: { grantId?: string | undefined; accountId?: string | undefined }, sourceScope: string | undefined): Promise<Record<string, unknown>> {
    if (!needsPatientContext(sourceScope)) return {};
    const context = await this.find(ctx, token.grantId);
    if (!context) return {};
    const allowed = !!token.accountId && (await isOnCareTeam(this.#db, token.accountId, context.patientId)
      || !!await this.#emergencyAccess?.(ctx, token.grantId));
    if (!allowed) {
      throw new errors.InvalidGrant('the patient in context is no longer on the clinician\'s care team');
    }
    return { patient: context.patientId, ...(context.encounterId ? { encounter: context.encounterId } : {}) };
  }

  /** Adds `patient`, `encounter` and `need_patient_banner` to successful token responses (SMART App Launch). */
  tokenResponses(): Parameters<Provider['use']>[0] {
    return (async (ctx: KoaContextWithOIDC, next: Koa.Next) => {
      await next();
      if (ctx.oidc?.route !== 'token' || ctx.status !== 200) return;
      const body = ctx.body as Record<string, unknown> | undefined;
      if (!body || typeof body.access_token !== 'string') return;
      const source = ctx.oidc.entities.AuthorizationCode ?? ctx.oidc.entities.RefreshToken;
      if (!needsPatientContext(source?.scope)) return;
      const token = ctx.oidc.entities.AccessToken as { grantId?: string } | undefined;
      const context = await this.find(ctx, token?.grantId);
      if (!context) return;
      body.patient = context.patientId;
      if (context.encounterId) body.encounter = context.encounterId;
      body.need_patient_banner = context.needPatientBanner;
    }) as unknown as Parameters<Provider['use']>[0];
  }
}
