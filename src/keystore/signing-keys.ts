// Token signing keys in <dir>/signing-keys.json, with rotation that keeps retired keys published
// until every token they signed has expired.
import { createHash, createPrivateKey } from 'node:crypto';
import path from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';
import { z } from 'zod';
import {
  KeyMaterialError,
  describeIssues,
  parseJsonFile,
  readOptional,
  readRequired,
  writeFileAtomic,
  writeFileExclusive,
} from './files.ts';

export type SigningAlg = 'ES256' | 'RS256';

export interface StoredSigningKey {
  kid: string;
  alg: SigningAlg;
  createdAt: string;
  /** Set when the key is retired: no longer used to sign, published for verification until then. */
  retireAfter?: string;
  /** Private JWK including kid, alg and use: 'sig'. */
  jwk: JWK;
}

export interface SigningKeySet {
  dev: boolean;
  keys: StoredSigningKey[];
}

export const SIGNING_KEYS_FILE = 'signing-keys.json';
const RSA_MODULUS_BITS = 2048;

const b64u = z.string().regex(/^[A-Za-z0-9_-]+$/, 'must be base64url');
const isoDate = z.iso.datetime({ offset: true });
const AlgSchema = z.enum(['ES256', 'RS256']);

// Known JWK members only (unknown ones are dropped); the key itself is checked by node:crypto below.
const JwkSchema = z.object({
  kty: z.enum(['EC', 'RSA']),
  kid: z.string().min(1),
  alg: AlgSchema,
  use: z.literal('sig'),
  crv: z.string().optional(),
  x: b64u.optional(),
  y: b64u.optional(),
  n: b64u.optional(),
  e: b64u.optional(),
  d: b64u,
  p: b64u.optional(),
  q: b64u.optional(),
  dp: b64u.optional(),
  dq: b64u.optional(),
  qi: b64u.optional(),
});

const StoredKeySchema = z
  .object({ kid: z.string().min(1), alg: AlgSchema, createdAt: isoDate, retireAfter: isoDate.optional(), jwk: JwkSchema })
  .refine((k) => k.jwk.kid === k.kid, { message: 'jwk.kid must equal kid', path: ['jwk', 'kid'] })
  .refine((k) => k.jwk.alg === k.alg, { message: 'jwk.alg must equal alg', path: ['jwk', 'alg'] });

const KeySetSchema = z
  .object({ dev: z.boolean(), keys: z.array(StoredKeySchema).min(1) })
  .refine((s) => new Set(s.keys.map((k) => k.kid)).size === s.keys.length, { message: 'duplicate kid', path: ['keys'] });

export async function loadOrCreateSigningKeys(dir: string, opts: { allowGenerate: boolean }): Promise<SigningKeySet> {
  const file = path.join(dir, SIGNING_KEYS_FILE);
  if ((await readOptional(file)) === undefined) {
    if (!opts.allowGenerate) {
      throw new KeyMaterialError(`missing ${file}: provision signing keys (they are generated only in development)`);
    }
    const now = new Date();
    const set: SigningKeySet = { dev: true, keys: [await generateKey('ES256', now), await generateKey('RS256', now)] };
    // A concurrent starter may win the race; everyone then uses the winner's file.
    await writeFileExclusive(file, serialize(set));
  }
  return readSigningKeys(file);
}

/**
 * Private JWKs for oidc-provider's `jwks` option. oidc-provider signs with the first key of each alg,
 * so active keys come first (newest first), then retired keys still inside their window (verification only).
 */
export function providerJwks(set: SigningKeySet, now = new Date()): { keys: JWK[] } {
  const live = set.keys.filter((k) => !isExpired(k, now));
  const active = newestFirst(live.filter((k) => k.retireAfter === undefined));
  const retired = newestFirst(live.filter((k) => k.retireAfter !== undefined));
  if (!active.some((k) => k.alg === 'ES256')) {
    throw new KeyMaterialError('no active ES256 signing key: rotate the signing keys');
  }
  // Copies, so that nothing downstream can mutate the loaded key set.
  return { keys: [...active, ...retired].map((k) => structuredClone(k.jwk)) };
}

/**
 * Adds a fresh ES256 and RS256 key, retires the previously active keys (published for
 * `retireAfterSeconds` more) and drops retired keys whose window has passed.
 * Not safe against two concurrent rotations (last writer wins); run it from one operator CLI.
 */
export async function rotateSigningKeys(
  dir: string,
  opts: { retireAfterSeconds: number; now?: Date },
): Promise<{ added: string[]; retired: string[]; removed: string[] }> {
  if (!Number.isFinite(opts.retireAfterSeconds) || opts.retireAfterSeconds < 0) {
    throw new RangeError('retireAfterSeconds must be a non-negative number');
  }
  const file = path.join(dir, SIGNING_KEYS_FILE);
  const now = opts.now ?? new Date();
  const current = await readSigningKeys(file);
  const retireAfter = new Date(now.getTime() + opts.retireAfterSeconds * 1000).toISOString();

  const added = [await generateKey('ES256', now), await generateKey('RS256', now)];
  const retired: string[] = [];
  const removed: string[] = [];
  const kept: StoredSigningKey[] = [];
  for (const key of current.keys) {
    if (key.retireAfter === undefined) {
      retired.push(key.kid);
      kept.push({ ...key, retireAfter });
    } else if (isExpired(key, now)) {
      removed.push(key.kid);
    } else {
      kept.push(key);
    }
  }
  await writeFileAtomic(file, serialize({ dev: current.dev, keys: [...added, ...kept] }));
  return { added: added.map((k) => k.kid), retired, removed };
}

/** Fingerprint of the key file, polled by running servers to pick up a rotation done by the CLI. */
export async function signingKeysVersion(dir: string): Promise<string> {
  const text = await readRequired(path.join(dir, SIGNING_KEYS_FILE));
  return createHash('sha256').update(text).digest('base64url');
}

async function readSigningKeys(file: string): Promise<SigningKeySet> {
  const text = await readRequired(file);
  const parsed = KeySetSchema.safeParse(parseJsonFile(file, text));
  if (!parsed.success) throw new KeyMaterialError(describeIssues(file, parsed.error.issues));
  parsed.data.keys.forEach((key, i) => assertUsableKey(file, i, key));
  return parsed.data;
}

/** Catches broken or weak keys at startup instead of at the first token request. */
function assertUsableKey(file: string, index: number, key: StoredSigningKey): void {
  const where = `${file}: keys.${index} (kid ${key.kid})`;
  let details: { type: string; keyType: string | undefined; curve: string | undefined; bits: number | undefined };
  try {
    const obj = createPrivateKey({ key: key.jwk, format: 'jwk' });
    const d = obj.asymmetricKeyDetails;
    details = { type: obj.type, keyType: obj.asymmetricKeyType, curve: d?.namedCurve, bits: d?.modulusLength };
  } catch (err) {
    throw new KeyMaterialError(`${where}: not a valid private JWK (${(err as Error).message})`);
  }
  const ok =
    key.alg === 'ES256'
      ? details.keyType === 'ec' && details.curve === 'prime256v1'
      : details.keyType === 'rsa' && (details.bits ?? 0) >= RSA_MODULUS_BITS;
  if (!ok) throw new KeyMaterialError(`${where}: key does not fit ${key.alg}`);
}

async function generateKey(alg: SigningAlg, now: Date): Promise<StoredSigningKey> {
  const size = alg === 'RS256' ? { modulusLength: RSA_MODULUS_BITS } : {};
  const { privateKey } = await generateKeyPair(alg, { extractable: true, ...size });
  const exported = await exportJWK(privateKey);
  const kid = await calculateJwkThumbprint(exported); // RFC 7638: stable, collision-free key ids
  return { kid, alg, createdAt: now.toISOString(), jwk: { ...exported, kid, alg, use: 'sig' } };
}

function isExpired(key: StoredSigningKey, now: Date): boolean {
  return key.retireAfter !== undefined && Date.parse(key.retireAfter) <= now.getTime();
}

function newestFirst(keys: StoredSigningKey[]): StoredSigningKey[] {
  return [...keys].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
}

function serialize(set: SigningKeySet): string {
  return `${JSON.stringify(set, null, 2)}\n`;
}
