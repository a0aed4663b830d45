// Certificate headers set by a TLS-terminating proxy. Only called for trusted proxies (middleware.ts);
// every parser here throws MalformedCertificateHeader on anything it does not fully understand.
//
// RFC 9440:  Client-Cert: :<base64 DER>:                      (Structured Field Item, sf-binary)
//            Client-Cert-Chain: :<base64 DER>:, :<b64>:, ...  (Structured Field List, leaf's issuer first)
// nginx:     X-SSL-Client-Cert: <$ssl_client_escaped_cert>    (URL-encoded PEM; more PEM blocks = chain)
import type { X509Certificate } from 'node:crypto';

import { CertificateParseError, MAX_PRESENTED_CHAIN, certificateFromDer, certificatesFromPem } from './certificate.ts';

export const RFC9440_CERT_HEADER = 'client-cert';
export const RFC9440_CHAIN_HEADER = 'client-cert-chain';
export const DEFAULT_NGINX_CERT_HEADER = 'x-ssl-client-cert';

export class MalformedCertificateHeader extends Error {
  override name = 'MalformedCertificateHeader';
  constructor(
    readonly header: string,
    message: string,
  ) {
    super(`${header}: ${message}`);
  }
}

export interface HeaderCertificates {
  leaf: X509Certificate;
  chain: X509Certificate[];
}

// sf-binary = ":" *(base64) ":" (RFC 8941 §3.3.5), optionally followed by parameters (none are defined
// by RFC 9440; they are accepted and ignored as RFC 8941 requires). Parameter values may not contain
// "," or ";" here (no sf-string with those characters), which keeps list splitting trivial.
const PARAMETERS = String.raw`(?:[ \t]*;[ \t]*[a-z*][a-z0-9_.*-]*(?:=[^,;]*)?)*`;
const SF_BINARY = new RegExp(String.raw`^:([A-Za-z0-9+/]*={0,2}):${PARAMETERS}$`);
const OWS = /^[ \t]+|[ \t]+$/g;

/** Decodes one sf-binary member to bytes; rejects non-canonical base64 (bad length, stray characters). */
function sfBinary(header: string, member: string): Buffer {
  const match = SF_BINARY.exec(member.replace(OWS, ''));
  const b64 = match?.[1];
  if (b64 === undefined) throw new MalformedCertificateHeader(header, 'not a structured-field byte sequence');
  // RFC 8941 §4.2.7: parsers SHOULD NOT fail when "=" padding is missing; anything else non-canonical fails.
  const padded = b64.length % 4 === 0 ? b64 : b64.length % 4 === 1 || b64.endsWith('=') ? undefined : b64.padEnd(b64.length + 4 - (b64.length % 4), '=');
  if (padded === undefined || padded.length === 0) throw new MalformedCertificateHeader(header, 'bad base64 length');
  const bytes = Buffer.from(padded, 'base64');
  if (bytes.toString('base64') !== padded) throw new MalformedCertificateHeader(header, 'non-canonical base64');
  return bytes;
}

function derCertificate(header: string, der: Buffer): X509Certificate {
  try {
    return certificateFromDer(der);
  } catch (err) {
    if (err instanceof CertificateParseError) throw new MalformedCertificateHeader(header, err.message);
    throw err;
  }
}

/** RFC 9440 `Client-Cert` (one Item) plus optional `Client-Cert-Chain` (a List). */
export function parseRfc9440(certValue: string, chainValue?: string): HeaderCertificates {
  // Repeated header lines arrive joined with ", ": that is a List, not the single Item RFC 9440 allows.
  const leaf = derCertificate(RFC9440_CERT_HEADER, sfBinary(RFC9440_CERT_HEADER, certValue));
  const chain: X509Certificate[] = [];
  if (chainValue !== undefined && chainValue.replace(OWS, '') !== '') {
    const members = chainValue.split(',');
    if (members.length > MAX_PRESENTED_CHAIN) throw new MalformedCertificateHeader(RFC9440_CHAIN_HEADER, 'too many certificates');
    for (const member of members) chain.push(derCertificate(RFC9440_CHAIN_HEADER, sfBinary(RFC9440_CHAIN_HEADER, member)));
  }
  return { leaf, chain };
}

/** nginx `$ssl_client_escaped_cert`: URL-encoded PEM. Extra CERTIFICATE blocks, if any, are the chain. */
export function parseNginxEscapedPem(header: string, value: string): HeaderCertificates {
  let pem: string;
  try {
    pem = decodeURIComponent(value.trim());
  } catch {
    throw new MalformedCertificateHeader(header, 'bad URL encoding');
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new MalformedCertificateHeader(header, 'no PEM certificate');
  let certs: X509Certificate[];
  try {
    certs = certificatesFromPem(pem);
  } catch (err) {
    if (err instanceof CertificateParseError) throw new MalformedCertificateHeader(header, err.message);
    throw err;
  }
  if (certs.length > MAX_PRESENTED_CHAIN + 1) throw new MalformedCertificateHeader(header, 'too many certificates');
  const [leaf, ...chain] = certs;
  if (leaf === undefined) throw new MalformedCertificateHeader(header, 'no PEM certificate');
  return { leaf, chain };
}
