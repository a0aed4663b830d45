// Certificate-bound access tokens, resource server side (RFC 8705 §3): the token's
// `cnf["x5t#S256"]` must equal the SHA-256 thumbprint of the client certificate of this TLS connection.
import { timingSafeEqual } from 'node:crypto';
import type { TLSSocket } from 'node:tls';

import { x5tS256 } from '../mtls/thumbprint.ts';
import { invalidToken } from './errors.ts';

export { x5tS256 };

/**
 * The DER client certificate of a TLS connection, or undefined when the client sent none.
 * Use with `requestCert: true` (and `rejectUnauthorized: false` when the verifier, not the TLS layer,
 * decides). The certificate's chain is not checked here: the binding proves possession of the key of
 * exactly the certificate the token was issued to, which is what RFC 8705 §3 asks.
 */
export function peerCertificateDer(socket: unknown): Buffer | undefined {
  const tls = socket as Partial<TLSSocket> | undefined;
  if (typeof tls?.getPeerCertificate !== 'function') return undefined;
  const cert = tls.getPeerCertificate(false);
  const raw = (cert as { raw?: unknown } | null)?.raw;
  return Buffer.isBuffer(raw) && raw.length > 0 ? raw : undefined;
}

/** Members of `cnf` this verifier can check. Any other confirmation method makes the token unusable here. */
const SUPPORTED_CNF = new Set(['x5t#S256']);

/**
 * Checks the token's confirmation claim against the presented certificate.
 * Returns the thumbprint the token is bound to, or undefined for an unbound token (allowed only when
 * `requireBinding` is false). Throws 401 invalid_token otherwise.
 */
export function checkCertificateBinding(
  cnf: unknown,
  clientCertificateDer: Buffer | undefined,
  requireBinding: boolean,
): string | undefined {
  if (cnf === undefined || cnf === null) {
    if (requireBinding) throw invalidToken('token is not bound to a client certificate');
    return undefined;
  }
  if (typeof cnf !== 'object' || Array.isArray(cnf)) throw invalidToken('malformed confirmation claim');
  const members = Object.keys(cnf);
  // A DPoP-bound (jkt) or otherwise confirmed token cannot be used as a bearer token here.
  if (members.length === 0 || members.some((m) => !SUPPORTED_CNF.has(m))) {
    throw invalidToken('unsupported token confirmation method');
  }
  const expected = (cnf as Record<string, unknown>)['x5t#S256'];
  if (typeof expected !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(expected)) {
    throw invalidToken('malformed certificate thumbprint in token');
  }
  if (clientCertificateDer === undefined || clientCertificateDer.length === 0) {
    throw invalidToken('certificate-bound token presented without a client certificate');
  }
  const actual = x5tS256(clientCertificateDer);
  if (!timingSafeEqual(Buffer.from(actual), Buffer.from(expected))) {
    throw invalidToken('certificate binding mismatch');
  }
  return expected;
}
