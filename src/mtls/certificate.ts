// A client certificate as presented on this request, parsed once with node:crypto. DER is never
// decoded by hand here: node (OpenSSL) and @peculiar/x509 do all certificate parsing.
import 'reflect-metadata'; // @peculiar/x509 (via tsyringe) needs a Reflect polyfill loaded before it
import { X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';

import { x5tS256 } from './thumbprint.ts';

export interface PresentedCertificate {
  /** Where it came from: the TLS handshake on our own listener, or a trusted proxy's header. */
  source: 'socket' | 'header';
  leaf: X509Certificate;
  /** Exact DER of the leaf (what the thumbprint is computed over). */
  der: Buffer;
  /** Other certificates sent along (intermediates, maybe a root), leaf excluded, leaf's issuer first. Untrusted. */
  chain: X509Certificate[];
  /** RFC 8705 `x5t#S256` of the leaf. */
  thumbprint: string;
  /** PEM of the leaf, for oidc-provider's `features.mTLS.getCertificate`. */
  pem: string;
  /**
   * Socket only: OpenSSL verified the handshake's path against the listener's `ca` option (`socket.authorized`).
   * Node does not expose the chain a client sent once that verification succeeded (see authorizeCertificate).
   */
  tlsAuthorized?: boolean;
}

/** More certificates than any sane path needs: a longer chain is refused rather than searched. */
export const MAX_PRESENTED_CHAIN = 8;

export class CertificateParseError extends Error {
  override name = 'CertificateParseError';
}

/** Parses one DER certificate; the input must be exactly one certificate, with no trailing bytes. */
export function certificateFromDer(der: Uint8Array): X509Certificate {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(der);
  } catch (err) {
    throw new CertificateParseError(`not a DER certificate: ${(err as Error).message}`);
  }
  if (!cert.raw.equals(der)) throw new CertificateParseError('trailing data after the certificate');
  return cert;
}

/** All CERTIFICATE blocks of a PEM text (other block types ignored); throws when there is none. */
export function certificatesFromPem(pem: string): X509Certificate[] {
  let blocks: ReturnType<typeof x509.PemConverter.decodeWithHeaders>;
  try {
    blocks = x509.PemConverter.decodeWithHeaders(pem);
  } catch (err) {
    throw new CertificateParseError(`not PEM: ${(err as Error).message}`);
  }
  const certs = blocks
    .filter((block) => block.type === 'CERTIFICATE')
    .map((block) => certificateFromDer(Buffer.from(block.rawData)));
  if (certs.length === 0) throw new CertificateParseError('no CERTIFICATE block');
  return certs;
}

export function presented(
  source: PresentedCertificate['source'],
  leaf: X509Certificate,
  chain: X509Certificate[],
  tlsAuthorized?: boolean,
): PresentedCertificate {
  const der = leaf.raw;
  return {
    ...(tlsAuthorized === undefined ? {} : { tlsAuthorized }),
    source,
    leaf,
    der,
    chain: chain.filter((cert) => !cert.raw.equals(der)),
    thumbprint: x5tS256(der),
    pem: leaf.toString(),
  };
}
