// JWT access tokens (RFC 9068) are not stored by oidc-provider, so its introspection and revocation
// refuse them. We record each one (id, grant, expiry, binding) when it is minted, and let
// introspection/revocation find that record once the JWT's signature has been verified.
import { randomBytes } from 'node:crypto';

import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, type JSONWebKeySet } from 'jose';
import type { AdapterPayload } from 'oidc-provider';
import type Provider from 'oidc-provider';

import type { StorageAudit } from '../audit/storage-events.ts';
import type { Db } from '../db/index.ts';
import { createAdapter, findWithGrant } from './adapter.ts';

type TokenLike = Record<string, unknown> & { jti?: string; constructor: { IN_PAYLOAD?: string[] } };

/** Marks stored JWT records so oidc-provider's opaque lookup never accepts a `jti` as a token. */
const FORMAT = 'jwt';

export class JwtAccessTokenRegistry {
  private readonly store;
  /** Per-request handles that stand in for a verified JWT inside oidc-provider's own endpoints. */
  private readonly handles = new Map<string, AdapterPayload>();

  constructor(private readonly db: Db, audit?: StorageAudit) {
    // Through the adapter, so the record and its audit event share one transaction.
    this.store = new (createAdapter(db, audit))('AccessToken');
  }

  /** formats.customizers.jwt: runs before signing, so no JWT leaves without its record. */
  async record(token: TokenLike, payload: { jti?: unknown; exp?: unknown; iat?: unknown }): Promise<void> {
    const jti = typeof payload.jti === 'string' ? payload.jti : token.jti;
    if (!jti || typeof payload.exp !== 'number') throw new Error('JWT access token without jti or exp');
    const record: AdapterPayload = { kind: 'AccessToken', format: FORMAT, jti, exp: payload.exp };
    if (typeof payload.iat === 'number') record.iat = payload.iat;
    for (const key of token.constructor.IN_PAYLOAD ?? []) {
      const value = token[key];
      if (value !== undefined && !(key in record)) (record as Record<string, unknown>)[key] = value;
    }
    // Stored under AccessToken either way; remember that it came from client credentials.
    if (token.kind === 'ClientCredentials') record.gty ??= 'client_credentials';
    const expiresIn = Math.max(1, payload.exp - Math.floor(Date.now() / 1000));
    await this.store.upsert(jti, record, expiresIn);
  }

  /**
   * For the introspection and revocation routes: when the presented token is one of our JWTs,
   * verify it and swap it for a one-request handle that `AccessToken.find` resolves to the record.
   * Returns the value to put in place of the token, or undefined to leave the request alone.
   */
  async substitute(token: string, jwks: JSONWebKeySet, issuer: string): Promise<string | undefined> {
    try {
      decodeProtectedHeader(token);
    } catch {
      return undefined; // not a JWT: opaque tokens go through oidc-provider unchanged
    }
    let jti: unknown;
    try {
      ({ payload: { jti } } = await jwtVerify(token, localKeySet(jwks), { issuer, typ: 'at+jwt' }));
    } catch {
      return randomHandle(); // forged, expired or foreign JWT: an unknown handle answers inactive
    }
    const stored = typeof jti === 'string' ? await this.store.find(jti) : undefined;
    const handle = randomHandle();
    if (stored?.format === FORMAT) this.handles.set(handle, stored);
    return handle;
  }

  /**
   * The stored record of one of our JWT access tokens, once its signature, issuer, type and expiry are
   * verified, and whether its grant is still stored (one query); undefined for anything else (forged,
   * foreign, expired, revoked, not a JWT).
   */
  async verifiedRecordWithGrant(token: string, jwks: JSONWebKeySet, issuer: string): Promise<{ record: AdapterPayload; grantAlive: boolean } | undefined> {
    try {
      const { payload: { jti } } = await jwtVerify(token, localKeySet(jwks), { issuer, typ: 'at+jwt' });
      const found = typeof jti === 'string' ? await findWithGrant(this.db, 'AccessToken', jti) : undefined;
      if (found?.payload.format !== FORMAT) return undefined;
      const { format: _format, ...record } = found.payload;
      return { record, grantAlive: found.grantAlive };
    } catch {
      return undefined;
    }
  }

  release(handle: string): void {
    this.handles.delete(handle);
  }

  /** Teaches provider.AccessToken.find about the handles; everything else goes to the original. */
  install(provider: Provider): void {
    const AccessToken = provider.AccessToken as unknown as {
      find(value: unknown, options?: unknown): Promise<unknown>;
      instantiate(payload: AdapterPayload): unknown;
    };
    const originalFind = AccessToken.find.bind(AccessToken);
    AccessToken.find = async (value: unknown, options?: unknown) => {
      const stored = typeof value === 'string' ? this.handles.get(value) : undefined;
      if (!stored) return originalFind(value, options);
      const { format: _format, ...payload } = stored;
      return AccessToken.instantiate(payload);
    };
    // Introspection also asks the other token models for the value it got (the handle): a handle is
    // never one of their ids (opaque ids have no '.'), so they answer without a database round trip.
    for (const model of [provider.ClientCredentials, provider.RefreshToken] as unknown as Array<{ find(value: unknown, options?: unknown): Promise<unknown> }>) {
      const find = model.find.bind(model);
      model.find = (value: unknown, options?: unknown) => (isHandle(value) ? Promise.resolve(undefined) : find(value, options));
    }
  }
}

// One jose key set per published key set: it keeps the imported keys, so a verification does not
// import the public key again (a key set object lives as long as its provider build).
const keySets = new WeakMap<JSONWebKeySet, ReturnType<typeof createLocalJWKSet>>();
function localKeySet(jwks: JSONWebKeySet): ReturnType<typeof createLocalJWKSet> {
  let keys = keySets.get(jwks);
  if (!keys) keySets.set(jwks, (keys = createLocalJWKSet(jwks)));
  return keys;
}

const HANDLE_PREFIX = 'jwt-handle.';

function randomHandle(): string {
  return `${HANDLE_PREFIX}${randomBytes(24).toString('base64url')}`;
}

function isHandle(value: unknown): boolean {
  return typeof value === 'string' && value.startsWith(HANDLE_PREFIX);
}
