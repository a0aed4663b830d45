// Token signing keys in <dir>/signing-keys.json, with rotation that publishes new keys before they
// sign (every process and every resource server's JWKS cache knows a key before any token carries it)
// and keeps retired keys published until every token they signed has expired.
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
  /** Signs from then on; before, it is only published (set by a rotation that publishes ahead). */
  activeFrom?: string;
  /** Signs until then (set by the rotation that replaces it); without it, a retired key no longer signs. */
  signsUntil?: string;
  /** Set when the key is retired: published for verification until then, then dropped. */
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
  .object({
    kid: z.string().min(1), alg: AlgSchema, createdAt: isoDate, activeFrom: isoDate.optional(), signsUntil: isoDate.optional(),
    retireAfter: isoDate.optional(), jwk: JwkSchema,
  })
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

/** Does the key sign at `now` (rather than only being published, or being gone)? */
export function signsAt(key: StoredSigningKey, now: Date): boolean {
  const t = now.getTime();
  if (isExpired(key, now) || (key.activeFrom !== undefined && Date.parse(key.activeFrom) > t)) return false;
  if (key.signsUntil !== undefined) return t < Date.parse(key.signsUntil);
  return key.retireAfter === undefined;
}

/**
 * Private JWKs for oidc-provider's `jwks` option. oidc-provider signs with the first key of each alg,
 * so signing keys come first (newest first), then keys published ahead of their activation, then
 * retired keys still inside their window (verification only).
 */
export function providerJwks(set: SigningKeySet, now = new Date()): { keys: JWK[] } {
  const live = set.keys.filter((k) => !isExpired(k, now));
  const signing = newestFirst(live.filter((k) => signsAt(k, now)));
  const pending = newestFirst(live.filter((k) => k.activeFrom !== undefined && Date.parse(k.activeFrom) > now.getTime()));
  const retired = newestFirst(live.filter((k) => !signing.includes(k) && !pending.includes(k)));
  if (!signing.some((k) => k.alg === 'ES256')) {
    throw new KeyMaterialError('no active ES256 signing key: rotate the signing keys');
  }
  // Copies, so that nothing downstream can mutate the loaded key set.
  return { keys: [...signing, ...pending, ...retired].map((k) => structuredClone(k.jwk)) };
}

/** The next instant after `now` at which providerJwks(set) changes (a key starts or stops signing, or goes). */
export function nextKeyChange(set: SigningKeySet, now = new Date()): Date | undefined {
  const times = set.keys
    .flatMap((k) => [k.activeFrom, k.signsUntil, k.retireAfter])
    .filter((v): v is string => v !== undefined)
    .map((v) => Date.parse(v))
    .filter((t) => t > now.getTime());
  return times.length ? new Date(Math.min(...times)) : undefined;
}

/**
 * Adds a fresh ES256 and RS256 key that start signing `publishAheadSeconds` from now (published at
 * once), retires the keys that sign now or would have (they sign until the new keys start, then stay
 * published for `retireAfterSeconds` more) and drops retired keys whose window has passed.
 * Not safe against two concurrent rotations (last writer wins); run it from one operator CLI.
 */
export async function rotateSigningKeys(
  dir: string,
  opts: { retireAfterSeconds: number; publishAheadSeconds?: number; now?: Date },
): Promise<{ added: string[]; retired: string[]; removed: string[]; activeFrom: string }> {
  const ahead = opts.publishAheadSeconds ?? 0;
  for (const [name, value] of [['retireAfterSeconds', opts.retireAfterSeconds], ['publishAheadSeconds', ahead]] as const) {
    if (!Number.isFinite(value) || value < 0) throw new RangeError(`${name} must be a non-negative number`);
  }
  const file = path.join(dir, SIGNING_KEYS_FILE);
  const now = opts.now ?? new Date();
  const current = await readSigningKeys(file);
  const activeFrom = new Date(now.getTime() + ahead * 1000);
  const retireAfter = new Date(activeFrom.getTime() + opts.retireAfterSeconds * 1000).toISOString();

  const added = await Promise.all((['ES256', 'RS256'] as const).map(async (alg) => {
    const key = await generateKey(alg, now);
    return ahead > 0 ? { ...key, activeFrom: activeFrom.toISOString() } : key;
  }));
  const retired: string[] = [];
  const removed: string[] = [];
  const kept: StoredSigningKey[] = [];
  for (const key of current.keys) {
    if (key.retireAfter === undefined) {
      // Signing now, or published ahead by an earlier rotation: signs until the new keys take over.
      retired.push(key.kid);
      kept.push({ ...key, signsUntil: activeFrom.toISOString(), retireAfter });
    } else if (isExpired(key, now)) {
      removed.push(key.kid);
    } else {
      kept.push(key);
    }
  }
  await writeFileAtomic(file, serialize({ dev: current.dev, keys: [...added, ...kept] }));
  return { added: added.map((k) => k.kid), retired, removed, activeFrom: activeFrom.toISOString() };
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
