// The "try it" guide printed when `npm start` seeds an empty database with the demo seed.
import path from 'node:path';

import type { RunningServer } from './server.ts';

export function tryItGuide(server: Pick<RunningServer, 'issuer' | 'mtlsBaseUrl'>, keysDir: string): string {
  const ca = path.join(keysDir, 'tls', 'ca.pem');
  return `
Clinical AuthZ is running (demo seed loaded).
  Issuer:        ${server.issuer}
  Discovery:     ${server.issuer}/.well-known/openid-configuration
  mTLS base:     ${server.mtlsBaseUrl}
  Dev CA:        ${ca}   (trust it, or use curl --cacert ${ca})

Sign in as clinician:  username dr.demo   password demo-password-change-me

Try client credentials (JWT access token for the demo FHIR API):
  curl --cacert ${ca} -u demo-service:demo-service-secret-change-me-0123456789 \\
    -d grant_type=client_credentials -d resource=https://fhir.localhost/r4 -d scope=system/Patient.rs \\
    ${server.issuer}/token

Try the browser flow (authorization code + PKCE) by opening:
  ${server.issuer}/auth?client_id=demo-app&response_type=code&scope=openid%20profile&redirect_uri=https%3A%2F%2Flocalhost%3A8443%2Fcallback&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=demo
  (the code arrives at the redirect URI; redeem it with code_verifier=dBjftJeZ4CVP-mB0unHzwEeC17nVk3F8gIO3kqyE1mfQ-_pWWN1c)
`;
}
