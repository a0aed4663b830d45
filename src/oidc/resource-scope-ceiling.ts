// A client's ceiling for resource-server scopes (SMART scopes) lives in our own client metadata
// field `resource_scope`: oidc-provider's `scope` field only admits its static OpenID scopes.
import { errors, type KoaContextWithOIDC } from 'oidc-provider';

export const RESOURCE_SCOPE_METADATA = 'resource_scope';
const SCOPE_LIST = /^[\x21\x23-\x5B\x5D-\x7E]+( [\x21\x23-\x5B\x5D-\x7E]+)*$/; // RFC 6749 scope-token syntax

export function resourceScopeCeiling(client: { [key: string]: unknown } | undefined): string {
  const value = client?.[RESOURCE_SCOPE_METADATA];
  return typeof value === 'string' ? value : '';
}

export function validateResourceScopeMetadata(_ctx: KoaContextWithOIDC | undefined, key: string, value: unknown): void {
  if (key !== RESOURCE_SCOPE_METADATA || value === undefined) return;
  if (typeof value !== 'string' || !SCOPE_LIST.test(value)) {
    throw new errors.InvalidClientMetadata(`${RESOURCE_SCOPE_METADATA} must be a space-separated list of scope tokens`);
  }
}
