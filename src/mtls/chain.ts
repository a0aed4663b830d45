// Client certificate path validation against the operator's CA bundle (RFC 5280 §6, the parts that
// matter for TLS client authentication). Synchronous: oidc-provider's certificateAuthorized(ctx) is.
// All parsing and signature checks are node:crypto (OpenSSL) and @peculiar/x509.
import 'reflect-metadata'; // must precede @peculiar/x509
import type { X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';

import { certificatesFromPem, type PresentedCertificate } from './certificate.ts';
import { peculiarView, perCertificate } from './parsed.ts';

/** Certificates of the CA bundle: a path is trusted when it ends at one of them. */
export interface TrustAnchors {
  readonly certificates: readonly X509Certificate[];
}

export type ChainFailure =
  | 'expired' | 'not_yet_valid' | 'untrusted_issuer' | 'bad_signature' | 'not_a_ca' | 'not_client_auth' | 'unhandled_critical_extension';
export type ChainResult = { ok: true } | { ok: false; reason: ChainFailure };

/** Certificates in one path, leaf and trust anchor included. */
export const MAX_PATH_LENGTH = 5;

const SIGNATURE_BUDGET = 32;
const EKU_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

/** Parses a PEM bundle of CA certificates (throws when it holds none or a block is not a certificate). */
export function loadTrustAnchors(pem: string): TrustAnchors {
  return { certificates: certificatesFromPem(pem) };
}

/**
 * Validates the presented leaf and the chain sent with it up to a bundle certificate.
 * Refusal reasons (the first one met; a leaf's own problems are reported before its path's):
 * - `not_client_auth`: the leaf is a CA, has an extendedKeyUsage without clientAuth, or a keyUsage without digitalSignature;
 * - `expired` / `not_yet_valid`: a certificate of the path (leaf, intermediate or anchor) is outside its validity window;
 * - `untrusted_issuer`: no issuer found among the chain and bundle for some certificate, or the path would exceed MAX_PATH_LENGTH;
 * - `bad_signature`: an issuer with the right name (and key identifier) was found, but its key did not sign the certificate;
 * - `not_a_ca`: the issuer is not a CA (basicConstraints cA false/absent) or its pathLenConstraint is exceeded.
 */
export function verifyChain(presented: Pick<PresentedCertificate, 'leaf' | 'chain'>, trust: TrustAnchors, now: Date = new Date()): ChainResult {
  const { leaf } = presented;
  // RFC 5280 §4.2: a certificate with a critical extension we do not process (name or policy
  // constraints, ...) must be rejected, or a constrained sub-CA could mint any subject.
  if ([leaf, ...presented.chain].some(hasUnhandledCriticalExtension)) return { ok: false, reason: 'unhandled_critical_extension' };
  if (!usableForClientAuth(leaf)) return { ok: false, reason: 'not_client_auth' };
  const leafWindow = validityFailure(leaf, now);
  if (leafWindow) return { ok: false, reason: leafWindow };

  const anchors = trust.certificates;
  const intermediates = presented.chain
    .filter((cert, i, all) => all.findIndex((other) => other.raw.equals(cert.raw)) === i)
    .slice(0, MAX_PATH_LENGTH * 2);
  const failure = extend([leaf], { anchors, intermediates, now, budget: SIGNATURE_BUDGET });
  return failure === undefined ? { ok: true } : { ok: false, reason: failure };
}

/**
 * verifyChain, plus one allowance for our own TLS listener: when the handshake was verified by OpenSSL
 * (`tlsAuthorized`, against the listener's `ca`, which must be the same bundle as `trust`) and the only
 * failure is a missing path, the path is taken as verified. Node hides the intermediates a client sent
 * once OpenSSL accepted them, so verifyChain alone would refuse clients whose intermediate is not in the
 * bundle. The leaf's own checks (client-auth usage, validity at `now`) still apply, as verifyChain runs them first.
 */
export function authorizeCertificate(
  presented: Pick<PresentedCertificate, 'leaf' | 'chain' | 'source' | 'tlsAuthorized'>,
  trust: TrustAnchors,
  now: Date = new Date(),
): ChainResult {
  const result = verifyChain(presented, trust, now);
  if (presented.source === 'socket') {
    // OpenSSL already judged the handshake against the same bundle (critical extensions, name
    // constraints, ...): its refusal is final, our checks only add to it.
    if (presented.tlsAuthorized !== true) return result.ok ? { ok: false, reason: 'untrusted_issuer' } : result;
    if (!result.ok && result.reason === 'untrusted_issuer') return { ok: true };
  }
  return result;
}

interface Search {
  anchors: readonly X509Certificate[];
  intermediates: readonly X509Certificate[];
  now: Date;
  /** Signature verifications left: a crafted chain of mutually-issuing certificates cannot make us spin. */
  budget: number;
}

/** Depth-first path building: undefined when `path` reaches an anchor, else the most specific failure met. */
function extend(path: X509Certificate[], search: Search): ChainFailure | undefined {
  const { anchors, intermediates, now } = search;
  const current = path[path.length - 1]!;
  let failure: ChainFailure | undefined;
  const note = (reason: ChainFailure) => {
    failure ??= reason;
  };
  // Anchors first: a path ending as early as possible is preferred.
  const candidates = [...anchors.map((cert) => ({ cert, anchor: true })), ...intermediates.map((cert) => ({ cert, anchor: false }))];
  for (const { cert: issuer, anchor } of candidates) {
    if (path.some((cert) => cert.raw.equals(issuer.raw))) continue; // no loops
    // Name chaining, authority/subject key identifiers and the issuer's keyCertSign bit (OpenSSL X509_check_issued).
    if (!current.checkIssued(issuer)) continue;
    if (search.budget <= 0) break;
    search.budget -= 1;
    if (!current.verify(issuer.publicKey)) {
      note('bad_signature');
      continue;
    }
    // `path.length - 1` intermediates already sit below this issuer.
    if (!issuer.ca || pathLengthExceeded(issuer, path.length - 1)) {
      note('not_a_ca');
      continue;
    }
    const window = validityFailure(issuer, now);
    if (window) {
      note(window);
      continue;
    }
    if (anchor) return undefined;
    if (path.length + 1 >= MAX_PATH_LENGTH) continue; // room left for an anchor above it? no: not a path
    const deeper = extend([...path, issuer], search);
    if (deeper === undefined) return undefined;
    if (deeper !== 'untrusted_issuer') note(deeper);
  }
  return failure ?? 'untrusted_issuer';
}

function validityFailure(cert: X509Certificate, now: Date): 'expired' | 'not_yet_valid' | undefined {
  if (now.getTime() < cert.validFromDate.getTime()) return 'not_yet_valid';
  if (now.getTime() > cert.validToDate.getTime()) return 'expired';
  return undefined;
}

/** A leaf for TLS client authentication: not a CA; EKU (if any) has clientAuth; key usage (if any) has digitalSignature. */
function usableForClientAuth(leaf: X509Certificate): boolean {
  if (leaf.ca) return false;
  const eku = leaf.keyUsage as string[] | undefined; // node: the extendedKeyUsage OIDs, undefined without the extension
  if (eku !== undefined && !eku.includes(EKU_CLIENT_AUTH)) return false;
  const keyUsage = peculiarView(leaf).getExtension(x509.KeyUsagesExtension);
  if (keyUsage && (keyUsage.usages & x509.KeyUsageFlags.digitalSignature) === 0) return false;
  return true;
}

/** Extensions whose meaning verifyChain and usableForClientAuth enforce (or that carry no constraint). */
const HANDLED_EXTENSIONS = new Set([
  '2.5.29.14', // subjectKeyIdentifier
  '2.5.29.15', // keyUsage
  '2.5.29.17', // subjectAltName
  '2.5.29.19', // basicConstraints
  '2.5.29.35', // authorityKeyIdentifier
  '2.5.29.37', // extKeyUsage
]);

const hasUnhandledCriticalExtension = perCertificate((cert: X509Certificate): boolean =>
  peculiarView(cert).extensions.some((extension) => extension.critical && !HANDLED_EXTENSIONS.has(extension.type)));

function pathLengthExceeded(issuer: X509Certificate, intermediatesBelow: number): boolean {
  const constraints = peculiarView(issuer).getExtension(x509.BasicConstraintsExtension);
  const limit = constraints?.pathLength;
  return limit !== undefined && intermediatesBelow > limit;
}
