// Emergency (break-glass) grants inside oidc-provider. The interaction (src/interactions/break-glass.ts)
// creates the grant and its event; from then on this module makes every token of that grant read-only,
// short-lived, without refresh token, labelled with its purpose of use, and recorded for the review.
import { errors, type KoaContextWithOIDC } from 'oidc-provider';

import type { AuditLog } from '../audit/log.ts';
import { activeBreakGlassForGrant, isBreakGlassGrant, recordBreakGlassToken, type ActiveBreakGlass } from '../break-glass/events.ts';
import type { Queryable } from '../db/index.ts';

/** The interaction result key set when the clinician broke the glass (value: `{ id }` of the event). */
export const BREAK_GLASS_RESULT = 'breakGlass';

/** Client metadata: only clients registered with `break_glass_allowed: true` receive emergency grants. */
export const BREAK_GLASS_METADATA = 'break_glass_allowed';

export function clientMayBreakGlass(client: { [key: string]: unknown } | undefined): boolean {
  return client?.[BREAK_GLASS_METADATA] === true;
}

export function validateBreakGlassMetadata(key: string, value: unknown): void {
  if (key !== BREAK_GLASS_METADATA || value === undefined) return;
  if (typeof value !== 'boolean') throw new errors.InvalidClientMetadata(`${BREAK_GLASS_METADATA} must be true or false`);
}

type Lookup = { state: 'none' } | { state: 'active'; access: ActiveBreakGlass } | { state: 'ended' };

interface TokenForClaims {
  jti?: string | undefined;
  grantId?: string | undefined;
  clientId?: string | undefined;
  gty?: string | undefined;
  scope?: string | undefined;
  exp?: number | undefined;
  expiration?: number | undefined;
  resourceServer?: { audience?: string | undefined; accessTokenFormat?: string | undefined } | undefined;
}

export class BreakGlassGrants {
  readonly #db: Queryable;
  readonly #audit: AuditLog | undefined;
  readonly #lookups = new WeakMap<object, Map<string, Promise<Lookup>>>();
  /** Token requests of an emergency grant: the seconds left of the emergency access (for ttl.AccessToken). */
  readonly #remaining = new WeakMap<object, number>();

  constructor(db: Queryable, audit: AuditLog | undefined) {
    this.#db = db;
    this.#audit = audit;
  }

  /** Whether the grant is an emergency grant, and whether its access is still live (once per request). */
  lookup(ctx: object | undefined, grantId: string | undefined): Promise<Lookup> {
    if (!grantId) return Promise.resolve({ state: 'none' });
    const find = async (): Promise<Lookup> => {
      const access = await activeBreakGlassForGrant(this.#db, grantId);
      if (access) return { state: 'active', access };
      return await isBreakGlassGrant(this.#db, grantId) ? { state: 'ended' } : { state: 'none' };
    };
    if (!ctx) return find();
    let perRequest = this.#lookups.get(ctx);
    if (!perRequest) this.#lookups.set(ctx, perRequest = new Map());
    let found = perRequest.get(grantId);
    if (!found) perRequest.set(grantId, found = find());
    return found;
  }

  /** True when this request is the resume right after the clinician broke the glass. */
  static isEmergencyResume(ctx: KoaContextWithOIDC): boolean {
    const result = ctx.oidc.result as Record<string, unknown> | undefined;
    return ctx.oidc.route === 'resume' && !!result?.[BREAK_GLASS_RESULT];
  }

  /** The grant a token-endpoint request draws on (authorization code or refresh token). */
  static sourceGrantId(ctx: KoaContextWithOIDC): string | undefined {
    const entities = ctx.oidc.entities as { AuthorizationCode?: { grantId?: string }; RefreshToken?: { grantId?: string } };
    return entities.AuthorizationCode?.grantId ?? entities.RefreshToken?.grantId;
  }

  /** Whether this request's scopes must be cut to the emergency rule (resume, or a token request of such a grant). */
  async isEmergency(ctx: KoaContextWithOIDC): Promise<boolean> {
    if (BreakGlassGrants.isEmergencyResume(ctx)) return true;
    if (ctx.oidc.route !== 'token') return false;
    return (await this.lookup(ctx, BreakGlassGrants.sourceGrantId(ctx))).state !== 'none';
  }

  /**
   * At the token endpoint: the live emergency access of the code's grant, remembered for the access
   * token's lifetime. An emergency access that has ended (expired, revoked) issues nothing.
   */
  async forTokenRequest(ctx: KoaContextWithOIDC): Promise<ActiveBreakGlass | undefined> {
    if (ctx.oidc.route !== 'token') return undefined;
    const found = await this.lookup(ctx, BreakGlassGrants.sourceGrantId(ctx));
    if (found.state === 'none') return undefined;
    if (found.state === 'ended') throw new errors.InvalidGrant('the emergency access has ended');
    const remaining = Math.floor((found.access.expiresAt.getTime() - Date.now()) / 1000);
    if (remaining < 1) throw new errors.InvalidGrant('the emergency access has ended');
    this.#remaining.set(ctx, remaining);
    return found.access;
  }

  /** ttl.AccessToken: an emergency token lives until its access ends (set by forTokenRequest), no longer. */
  accessTokenTtl(ctx: object | undefined): number | undefined {
    return ctx ? this.#remaining.get(ctx) : undefined;
  }

  /** Whether the patient of this grant may be read although not on the care team (live emergency access). */
  async grantsPatientAccess(ctx: object | undefined, grantId: string | undefined): Promise<boolean> {
    return (await this.lookup(ctx, grantId)).state === 'active';
  }

  /**
   * extraTokenClaims for access tokens of an emergency grant: the purpose of use, for resource servers
   * to label and log, and the event id; the token is recorded for the review. Exchanged tokens carry
   * these claims on from their subject (src/exchange/grant.ts records them).
   */
  async claims(ctx: object | undefined, token: TokenForClaims): Promise<Record<string, unknown>> {
    if (token.gty === 'token_exchange') return {};
    const found = await this.lookup(ctx, token.grantId);
    if (found.state === 'none') return {};
    if (found.state === 'ended') throw new errors.InvalidGrant('the emergency access has ended');
    const { access } = found;
    if (token.jti) {
      const exp = token.exp ?? Math.floor(Date.now() / 1000) + (token.expiration ?? 0);
      const tokenRef = token.resourceServer?.accessTokenFormat === 'jwt'
        ? token.jti
        : this.#audit?.pseudonym('token', token.jti) ?? 'unrecorded';
      await recordBreakGlassToken(this.#db, access.id, {
        tokenRef, kind: 'access_token', clientId: String(token.clientId ?? ''),
        audience: token.resourceServer?.audience ?? null, scope: token.scope ?? '', expiresAt: new Date(exp * 1000),
      });
      await this.#audit?.record({
        type: 'break_glass.token_issued', outcome: 'success', severity: 'warning', rule: 'break_glass',
        actor: { clientId: token.clientId },
        target: { audience: token.resourceServer?.audience },
        details: { break_glass_id: access.id, token_ref: tokenRef, scope: token.scope ?? '', expires_at: exp },
      });
    }
    return { purpose_of_use: access.reasonCode, break_glass: true, break_glass_id: access.id };
  }

  /** oidc-provider loadExistingGrant: a later authorization never reuses (or widens) an emergency grant. */
  loadExistingGrant() {
    return async (ctx: KoaContextWithOIDC) => {
      const chosen = (ctx.oidc.result as { consent?: { grantId?: string } } | undefined)?.consent?.grantId;
      const grantId = chosen || ctx.oidc.session?.grantIdFor(ctx.oidc.client!.clientId);
      if (!grantId) return undefined;
      const emergency = await this.lookup(ctx, grantId);
      if (!chosen && emergency.state !== 'none') return undefined;
      const grant = await ctx.oidc.provider.Grant.find(grantId);
      // Revoked or expired between the emergency form and the resume: end here, never fall back to an
      // ordinary consent carrying the emergency choice.
      if (chosen && BreakGlassGrants.isEmergencyResume(ctx) && (!grant || emergency.state !== 'active')) {
        throw new errors.AccessDenied('the emergency access has ended');
      }
      return grant;
    };
  }

  /** oidc-provider issueRefreshToken: never for an emergency grant, otherwise the default rule. */
  issueRefreshToken() {
    return async (ctx: KoaContextWithOIDC, client: { grantTypeAllowed(type: string): boolean }, source: { scopes: Set<string>; grantId?: string }) => {
      if (!client.grantTypeAllowed('refresh_token') || !source.scopes.has('offline_access')) return false;
      return (await this.lookup(ctx, source.grantId)).state === 'none';
    };
  }
}
