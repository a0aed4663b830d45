// RFC 9470 at the token endpoint: a refusal that tells the client how to sign the user in again.
// oidc-provider renders only error/error_description/scope, so the needed acr_values and max_age are
// added to the JSON body when the error event fires (after the body is set, before it is sent).
import Provider, { errors, type KoaContextWithOIDC } from 'oidc-provider';

import type { AuthenticationRequirement } from '../mfa/assurance.ts';

export class InsufficientUserAuthentication extends errors.CustomOIDCProviderError {
  readonly requirement: AuthenticationRequirement;

  constructor(description: string, requirement: AuthenticationRequirement) {
    super('insufficient_user_authentication', description);
    this.requirement = requirement;
  }
}

/** The RFC 9470 parameters of a requirement: acr_values space-separated, max_age in seconds. */
export function challengeParameters(requirement: AuthenticationRequirement): { acr_values?: string; max_age?: number } {
  return {
    ...(requirement.acrValues.length ? { acr_values: requirement.acrValues.join(' ') } : {}),
    ...(requirement.maxAge !== undefined ? { max_age: requirement.maxAge } : {}),
  };
}

export function installInsufficientAuthenticationBodies(provider: Provider): void {
  provider.on('grant.error', (ctx: KoaContextWithOIDC, err: unknown) => {
    if (!(err instanceof InsufficientUserAuthentication)) return;
    const body = ctx.body;
    if (!body || typeof body !== 'object' || Buffer.isBuffer(body)) return;
    ctx.body = { ...(body as Record<string, unknown>), ...challengeParameters(err.requirement) };
  });
}
