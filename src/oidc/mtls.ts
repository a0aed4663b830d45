// RFC 8705 inside oidc-provider: which certificate a request presented (TLS handshake or trusted proxy
// header, see src/mtls/), whether it chains to the client CA bundle, and whether it names the client.
// oidc-provider calls these synchronously; the certificate was extracted before it ran.
import type { IncomingMessage } from 'node:http';

import type { Configuration, KoaContextWithOIDC } from 'oidc-provider';

import {
  CertificateVerdicts, presentedCertificate, subjectMatches, type PresentedCertificate, type SubjectProperty, type TrustAnchors,
} from '../mtls/index.ts';

/**
 * The request's certificate if it is inside its validity window. An expired or not-yet-valid
 * certificate is no credential at all: it neither authenticates a client nor binds a token.
 */
export function usableCertificate(req: IncomingMessage, now = new Date()): PresentedCertificate | undefined {
  const presented = presentedCertificate(req);
  if (!presented) return undefined;
  const { leaf } = presented;
  if (leaf.validFromDate > now || leaf.validToDate < now) return undefined;
  return presented;
}

type MtlsFeature = NonNullable<NonNullable<Configuration['features']>['mTLS']>;

export function mtlsFeature(trust: TrustAnchors): MtlsFeature {
  const verdicts = new CertificateVerdicts(trust);
  return {
    enabled: true,
    certificateBoundAccessTokens: true,
    tlsClientAuth: true,
    selfSignedTlsClientAuth: true,
    getCertificate: (ctx: KoaContextWithOIDC) => usableCertificate(ctx.req)?.leaf,
    certificateAuthorized: (ctx: KoaContextWithOIDC) => {
      const presented = usableCertificate(ctx.req);
      return presented !== undefined && verdicts.authorize(presented).ok;
    },
    certificateSubjectMatches: (ctx: KoaContextWithOIDC, property: string, expected: string) => {
      const presented = usableCertificate(ctx.req);
      return presented !== undefined && subjectMatches(presented.leaf, property as SubjectProperty, expected);
    },
  };
}
