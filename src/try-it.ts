// The "try it" guide printed when `npm start` seeds an empty database with the demo seed.
import path from 'node:path';

import type { RunningServer } from './server.ts';

/** Dev client certificates issued for the demo clients (keys/tls/clients/<name>.pem/.key). */
export const DEMO_CLIENT_CERTIFICATES = ['demo-service', 'demo-app', 'demo-orchestrator'] as const;
const DEMO_FHIR = 'https://localhost:9443/r4';

export function tryItGuide(server: Pick<RunningServer, 'issuer' | 'mtlsBaseUrl'>, keysDir: string): string {
  const ca = path.join(keysDir, 'tls', 'ca.pem');
  const cert = (name: string) => `--cert ${path.join(keysDir, 'tls', 'clients', `${name}.pem`)} --key ${path.join(keysDir, 'tls', 'clients', `${name}.key`)}`;
  return `
Clinical AuthZ is running (demo seed loaded).
  Issuer:        ${server.issuer}
  Discovery:     ${server.issuer}/.well-known/openid-configuration   (SMART: /.well-known/smart-configuration)
  mTLS base:     ${server.mtlsBaseUrl}   (token, introspection, revocation with a client certificate)
  Dev CA:        ${ca}   (trust it, or use curl --cacert ${ca})

Sign in as clinician:  username dr.demo   password demo-password-change-me   (care team: patients p1, p2)
Passkeys:              ${server.issuer}/account  (add one; then sign-ins ask for it, acr urn:clinical-authz:acr:phr)

1. Start the example FHIR server in another terminal:   npm run example:fhir   (${DEMO_FHIR})

2. Get a certificate-bound token (client credentials over mTLS) and use it with the same certificate:
  TOKEN=$(curl -s --cacert ${ca} ${cert('demo-service')} -u demo-service:demo-service-secret-change-me-0123456789 \\
    -d grant_type=client_credentials -d resource=${DEMO_FHIR} -d scope=system/Patient.rs \\
    ${server.mtlsBaseUrl}/token | sed -E 's/.*"access_token":"([^"]+)".*/\\1/')
  curl --cacert ${ca} ${cert('demo-service')} -H "Authorization: Bearer $TOKEN" ${DEMO_FHIR}/Patient/p1     # 200
  curl --cacert ${ca} ${cert('demo-app')} -H "Authorization: Bearer $TOKEN" ${DEMO_FHIR}/Patient/p1         # 401: another certificate

3. Try the browser flow (standalone SMART launch with a patient picker) by opening:
  ${server.issuer}/auth?client_id=demo-app&response_type=code&scope=openid%20fhirUser%20launch%2Fpatient%20patient%2FObservation.rs&aud=${encodeURIComponent(DEMO_FHIR)}&redirect_uri=https%3A%2F%2Flocalhost%3A8443%2Fcallback&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=demo
  (the code arrives at the redirect URI; redeem it at ${server.mtlsBaseUrl}/token with ${cert('demo-app')},
   -u demo-app:demo-app-secret-change-me-0123456789, grant_type=authorization_code, the code, that redirect_uri and
   code_verifier=dBjftJeZ4CVP-mB0unHzwEeC17nVk3F8gIO3kqyE1mfQ-_pWWN1c; the response names the patient)
  Emergency access: on the consent page, "Patient not listed? Emergency access (break the glass)" opens
  p3 (not on the care team) read-only for BREAK_GLASS_TTL (15 minutes) after a passkey, a reason and a justification
  (add a passkey first); review it with: npm run cli -- break-glass list

4. Let the AI orchestrator exchange that app token (APP_TOKEN) for a narrow per-task token bound to its own certificate:
  curl --cacert ${ca} ${cert('demo-orchestrator')} \\
    -d grant_type=urn:ietf:params:oauth:grant-type:token-exchange -d client_id=demo-orchestrator \\
    -d subject_token=$APP_TOKEN -d subject_token_type=urn:ietf:params:oauth:token-type:access_token \\
    -d resource=${DEMO_FHIR} --data-urlencode 'scope=patient/Observation.rs?category=laboratory' \\
    ${server.mtlsBaseUrl}/token
`;
}
