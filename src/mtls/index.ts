// RFC 8705 client certificates: extraction (TLS socket or trusted proxy header), path validation,
// tls_client_auth subject matching, self-signed key matching and x5t#S256 thumbprints.
export { x5tS256 } from './thumbprint.ts';
export {
  CertificateParseError,
  MAX_PRESENTED_CHAIN,
  certificateFromDer,
  certificatesFromPem,
  type PresentedCertificate,
} from './certificate.ts';
export {
  DEFAULT_NGINX_CERT_HEADER,
  MalformedCertificateHeader,
  RFC9440_CERT_HEADER,
  RFC9440_CHAIN_HEADER,
  parseNginxEscapedPem,
  parseRfc9440,
  type HeaderCertificates,
} from './proxy-headers.ts';
export {
  certificateProblem,
  clientCertificates,
  presentedCertificate,
  type CertificateHeaderFormat,
  type CertificateProblem,
  type ClientCertificateOptions,
} from './middleware.ts';
export {
  MAX_PATH_LENGTH,
  authorizeCertificate,
  loadTrustAnchors,
  verifyChain,
  type ChainFailure,
  type ChainResult,
  type TrustAnchors,
} from './chain.ts';
export { CertificateVerdicts, MAX_REMEMBERED_VERDICTS } from './verdicts.ts';
export {
  canonicalIp,
  certificateSubject,
  isValidSubjectDn,
  parseDistinguishedName,
  subjectMatches,
  type DistinguishedName,
  type SubjectProperty,
} from './subject.ts';
export { matchesJwks, type ClientJwks } from './jwks.ts';
