// Client secrets are high-entropy random values: stored as a keyed SHA-256 digest, compared in
// constant time. Never a slow password hash (it would cap the token endpoint), never the clear value.
import { randomBytes } from 'node:crypto';

import type Provider from 'oidc-provider';

import { constantTimeEqual, keyedHash } from '../crypto/keyed-hash.ts';

const PURPOSE = 'client-secret';
const DIGEST_PREFIX = 'hmac-sha256:';

export function generateClientSecret(): string {
  return randomBytes(32).toString('base64url');
}

export function digestClientSecret(key: string, secret: string): string {
  return DIGEST_PREFIX + keyedHash(key, PURPOSE, secret);
}

export function isClientSecretDigest(value: unknown): boolean {
  return typeof value === 'string' && value.startsWith(DIGEST_PREFIX);
}

/**
 * oidc-provider compares the presented secret with `client_secret` as stored; we store a digest,
 * so the comparison digests the presented value first. Stored secrets that are not digests never match.
 */
export function installClientSecretDigests(provider: Provider, key: string): void {
  const proto = provider.Client.prototype as unknown as {
    clientSecret?: string;
    compareClientSecret(actual: string): Promise<boolean>;
  };
  proto.compareClientSecret = function compareClientSecret(actual: string) {
    const stored = this.clientSecret;
    if (!isClientSecretDigest(stored) || typeof actual !== 'string') return Promise.resolve(false);
    return Promise.resolve(constantTimeEqual(stored!, digestClientSecret(key, actual)));
  };
}
