// Step-up at the authorization endpoint: a login-prompt Check that asks for the user again when the
// session is weaker or older than the request needs. What it needs is the strictest of the request's
// own acr_values and every step-up rule that applies to this client, audience and these scopes.
import { interactionPolicy, type KoaContextWithOIDC } from 'oidc-provider';

import type { Queryable } from '../db/index.ts';
import { acrLevel, acrValuesAtLeast, knownAcrValues, strictest, unmetBy, type AuthenticationRequirement } from '../mfa/assurance.ts';
import { listStepUpRules, stepUpRequirement } from '../mfa/step-up-rules.ts';
import { parseScopeList, type ResourceScope } from '../smart/scopes.ts';

const { Check } = interactionPolicy;
export const STEP_UP_CHECK = 'step_up';

function list(value: unknown): string[] {
  if (Array.isArray(value)) return value.filter((v): v is string => typeof v === 'string');
  return typeof value === 'string' && value ? [value] : [];
}

/** What an authorization request needs of the sign-in, or undefined when nothing beyond a session. */
export async function authorizationRequirement(db: Queryable, clientId: string, params: Record<string, unknown>): Promise<AuthenticationRequirement | undefined> {
  const requirements: AuthenticationRequirement[] = [];
  // acr_values is voluntary (OIDC Core §3.1.2.1): values we do not issue are ignored, not failed.
  const asked = knownAcrValues(typeof params.acr_values === 'string' ? params.acr_values.split(' ') : []);
  if (asked.length) requirements.push({ acrValues: acrValuesAtLeast(acrLevel(asked[0])) });
  const scopes = parseScopeList(typeof params.scope === 'string' ? params.scope : '').scopes
    .filter((s): s is ResourceScope => s.kind === 'resource');
  const rule = stepUpRequirement(await listStepUpRules(db), {
    clientId,
    audiences: [...list(params.resource), ...list(params.aud)],
    scopes,
  });
  if (rule) requirements.push(rule);
  return strictest(requirements);
}

const cache = new WeakMap<KoaContextWithOIDC, Promise<AuthenticationRequirement | undefined>>();

function requirementOnce(db: Queryable, ctx: KoaContextWithOIDC) {
  let pending = cache.get(ctx);
  if (!pending) {
    pending = authorizationRequirement(db, ctx.oidc.client?.clientId ?? '', (ctx.oidc.params ?? {}) as Record<string, unknown>);
    cache.set(ctx, pending);
  }
  return pending;
}

export function stepUpCheck(db: Queryable) {
  return new Check(
    STEP_UP_CHECK,
    'a stronger or more recent sign-in is required',
    async (ctx: KoaContextWithOIDC) => {
      const session = ctx.oidc.session;
      if (!session?.accountId) return Check.NO_NEED_TO_PROMPT; // no_session asks for a sign-in anyway
      const requirement = await requirementOnce(db, ctx);
      if (!requirement) return Check.NO_NEED_TO_PROMPT;
      const unmet = unmetBy(requirement, { acr: session.acr, authTime: session.loginTs });
      // A sign-in that just happened is recent whatever the clock says (as oidc-provider's max_age).
      if (!unmet || (unmet === 'max_age' && ctx.oidc.result?.login)) return Check.NO_NEED_TO_PROMPT;
      return Check.REQUEST_PROMPT;
    },
    async (ctx: KoaContextWithOIDC) => {
      const requirement = await requirementOnce(db, ctx);
      return {
        acr_values: requirement?.acrValues ?? [],
        ...(requirement?.maxAge !== undefined ? { max_age: requirement.maxAge } : {}),
      };
    },
  );
}
