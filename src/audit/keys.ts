// Audit keys derived from the server's audit secret: one for the hash chain, one for pseudonyms.
import { createHmac, hkdfSync } from 'node:crypto';

export interface AuditKeys {
  chain: Buffer;
  pseudonym: Buffer;
}

export function deriveAuditKeys(auditSecret: string): AuditKeys {
  const ikm = Buffer.from(auditSecret, 'base64url');
  const derive = (info: string) => Buffer.from(hkdfSync('sha256', ikm, Buffer.alloc(0), info, 32));
  return { chain: derive('clinical-authz audit chain v1'), pseudonym: derive('clinical-authz audit pseudonym v1') };
}

/**
 * HMAC-SHA256 pseudonym: the same identifier always maps to the same value (events correlate) but
 * cannot be read back without the key. `kind` keeps a patient id and a token id with equal text apart.
 */
export function pseudonymise(keys: AuditKeys, kind: 'patient' | 'token' | 'username' | 'client', value: string): string {
  // `Patient/123` and `123` name the same patient and must correlate.
  const normalised = kind === 'patient' ? value.trim().replace(/^(?:.*\/)?Patient\//, '') : value;
  return createHmac('sha256', keys.pseudonym).update(`${kind}\0${normalised}`).digest('base64url');
}
