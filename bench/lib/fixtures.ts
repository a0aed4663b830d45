// What the benchmark server is seeded with, and the names both sides use.
import { TOKEN_EXCHANGE_GRANT } from '../../src/exchange/decision.ts';
import { SeedSchema, type Seed } from '../../src/seed/seed.ts';

export const FHIR = 'https://fhir.bench/r4';
/** Bare oidc-provider: a resource server whose tokens are opaque. */
export const OPAQUE_API = 'https://opaque.bench/api';
export const CLINICIAN = { username: 'dr.bench', password: 'bench-password-0123456789', fhirUser: 'Practitioner/bench-1' };
export const PATIENT = 'p1';
export const APP = {
  client_id: 'bench-app',
  client_secret: 'bench-app-secret-0123456789-0123456789',
  redirect_uri: 'https://app.bench/callback',
};
/** tls_client_auth, client_credentials (the workload of the client credentials and introspection scenarios). */
export const WORKLOAD = 'bench-workload';
/** tls_client_auth, token exchange (the chatbot's orchestrator). */
export const ORCHESTRATOR = 'bench-orchestrator';
export const SYSTEM_SCOPE = 'system/Patient.rs';
export const LABS = 'patient/Observation.rs?category=laboratory';

/**
 * Users of the login scenario, one per concurrent sign-in: parallel attempts on one username count
 * against its failed-login lock (LOGIN_MAX_FAILURES) by design, so each connection signs in its own user.
 */
export const loginUser = (i: number) => `bench.login${i}`;

export const benchSeed = (loginUsers: number): Seed => SeedSchema.parse({
  users: [
    { username: CLINICIAN.username, password: CLINICIAN.password, displayName: 'Dr Bench', fhirUser: CLINICIAN.fhirUser, roles: ['clinician'] },
    ...Array.from({ length: loginUsers }, (_, i) => ({ username: loginUser(i), password: CLINICIAN.password, displayName: `Login ${i}` })),
  ],
  patients: [{ id: PATIENT, name: 'Alice Bench' }],
  careTeam: [{ username: CLINICIAN.username, patient: PATIENT }],
  roles: [{ name: 'clinician', scope: 'patient/*.cruds user/*.rs' }],
  resourceServers: [{ identifier: FHIR, name: 'Bench FHIR', scope: 'patient/Observation.rs patient/Patient.rs system/Patient.rs' }],
  clients: [
    {
      client_id: APP.client_id,
      client_secret: APP.client_secret,
      client_name: 'Bench App',
      grant_types: ['authorization_code', 'refresh_token'],
      redirect_uris: [APP.redirect_uri],
      scope: 'openid profile fhirUser offline_access launch launch/patient',
      resource_scope: 'patient/Observation.rs patient/Patient.rs',
    },
    {
      client_id: WORKLOAD,
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: `CN=${WORKLOAD}`,
      grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
      resource_scope: SYSTEM_SCOPE,
    },
    {
      client_id: ORCHESTRATOR,
      token_endpoint_auth_method: 'tls_client_auth',
      tls_client_auth_subject_dn: `CN=${ORCHESTRATOR}`,
      grant_types: [TOKEN_EXCHANGE_GRANT], response_types: [], redirect_uris: [],
    },
  ],
  exchangePolicies: [
    { actor: ORCHESTRATOR, audience: FHIR, subjectClients: [APP.client_id], scope: 'patient/Observation.rs', maxDepth: 2 },
  ],
});

/** TLS material the server generated, handed to the baselines so every listener uses the same certificate. */
export interface TlsSetup {
  certPem: string;
  keyPem: string;
  /** CA of the server certificate (clients trust it). */
  caPem: string;
  /** CA bundle client certificates are verified against (mTLS listeners). */
  clientCaPem: string;
}

export interface ServerInfo {
  /** https://localhost:PORT (browser listener: discovery, JWKS, login). */
  issuer: string;
  /** https://localhost:PORT (mTLS listener: token, introspection). */
  mtlsBaseUrl: string;
  tls: TlsSetup;
  pid: number;
}
