// RFC 8705 §3.1 certificate thumbprint: the `x5t#S256` confirmation member of certificate-bound tokens.
import { createHash } from 'node:crypto';

/** base64url(SHA-256(DER certificate)), without padding. */
export function x5tS256(der: Buffer | Uint8Array): string {
  return createHash('sha256').update(der).digest('base64url');
}
