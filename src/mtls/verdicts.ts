// Path validation is pure for a given certificate set, trust bundle and time, and it dominates the
// cost of an mTLS request when every keep-alive request re-validates the same certificate. A positive
// verdict is therefore remembered for the exact same leaf, chain, source and handshake result, until
// the earliest expiry of any certificate that took part (leaf, sent chain, bundle). Refusals are never
// remembered: they are rare, and a refused certificate must not be able to evict good entries.
import type { X509Certificate } from 'node:crypto';

import type { PresentedCertificate } from './certificate.ts';
import { authorizeCertificate, type ChainResult, type TrustAnchors } from './chain.ts';
import { perCertificate } from './parsed.ts';
import { x5tS256 } from './thumbprint.ts';

type Presented = Pick<PresentedCertificate, 'leaf' | 'chain' | 'source' | 'tlsAuthorized' | 'thumbprint'>;

/** Distinct certificates remembered at most (a few hundred bytes each); the oldest entry goes first. */
export const MAX_REMEMBERED_VERDICTS = 10_000;

const thumbprintOf = perCertificate((cert: X509Certificate) => x5tS256(cert.raw));
const notAfter = perCertificate((cert: X509Certificate) => cert.validToDate.getTime());

interface Remembered {
  /** The verdict was reached at this time (a clock set back re-validates). */
  since: number;
  /** ...and holds until then: the earliest notAfter among the certificates involved. */
  until: number;
}

export class CertificateVerdicts {
  private readonly remembered = new Map<string, Remembered>();
  private readonly bundleNotAfter: number;

  constructor(private readonly trust: TrustAnchors, private readonly capacity = MAX_REMEMBERED_VERDICTS) {
    this.bundleNotAfter = Math.min(...trust.certificates.map(notAfter));
  }

  /** authorizeCertificate(presented, trust, now), with positive verdicts remembered (see above). */
  authorize(presented: Presented, now: Date = new Date()): ChainResult {
    const key = [presented.source, String(presented.tlsAuthorized), presented.thumbprint, ...presented.chain.map(thumbprintOf)].join('|');
    const at = now.getTime();
    const known = this.remembered.get(key);
    if (known && at >= known.since && at <= known.until) return { ok: true };
    if (known) this.remembered.delete(key);

    const result = authorizeCertificate(presented, this.trust, now);
    if (result.ok) {
      const until = Math.min(this.bundleNotAfter, notAfter(presented.leaf), ...presented.chain.map(notAfter));
      if (this.remembered.size >= this.capacity) this.remembered.delete(this.remembered.keys().next().value!);
      this.remembered.set(key, { since: at, until });
    }
    return result;
  }

  get size(): number {
    return this.remembered.size;
  }
}
