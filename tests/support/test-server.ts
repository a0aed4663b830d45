// Starts the real server (both HTTPS listeners, real TLS) on random ports against a test database.
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

import { Agent, fetch as undiciFetch, type RequestInit } from 'undici';

import { loadConfig, type Config } from '../../src/config.ts';
import { ensureDevClientCertificate, type IssuedClientCertificate } from '../../src/keystore/pki.ts';
import { createLogger } from '../../src/log.ts';
import { applySeed, SeedSchema, type Seed } from '../../src/seed/seed.ts';
import { startServer, type RunningServer } from '../../src/server.ts';
import { createTestDb, type TestDb } from './test-db.ts';

export const FHIR = 'https://fhir.test/r4';
/** A resource server asking for hour-long tokens (the configured cap must win). */
export const TOOLS = 'https://tools.test/api';
/** A resource server no test client has any scope for. */
export const OTHER = 'https://other.test/api';
export const CLINICIAN = { username: 'dr.test', password: 'test-password-123456', fhirUser: 'Practitioner/test-1' };
export const APP = {
  client_id: 'test-app',
  client_secret: 'test-app-secret-0123456789-0123456789',
  redirect_uri: 'https://app.test/callback',
};
export const SERVICE = { client_id: 'test-service', client_secret: 'test-service-secret-0123456789-01234' };
export const PUBLIC_APP = { client_id: 'test-public-app', redirect_uri: 'https://public.test/callback' };
/** On dr.test's care team: the first is the picker's default choice. Ids match examples/fhir-server/data.json. */
export const CARE_TEAM_PATIENTS = [{ id: 'p1', name: 'Alice Test' }, { id: 'p2', name: 'Bob Test' }];
/** A patient dr.test does not care for. */
export const OUTSIDE_PATIENT = { id: 'p3', name: 'Olivia Outside' };
export const CLINICIAN_ROLE_SCOPE = 'patient/*.cruds user/*.rs';

export const TEST_SEED: Seed = SeedSchema.parse({
  users: [{ username: CLINICIAN.username, password: CLINICIAN.password, displayName: 'Dr Test', fhirUser: CLINICIAN.fhirUser, roles: ['clinician'] }],
  patients: [...CARE_TEAM_PATIENTS, OUTSIDE_PATIENT],
  careTeam: CARE_TEAM_PATIENTS.map((p) => ({ username: CLINICIAN.username, patient: p.id })),
  roles: [{ name: 'clinician', scope: CLINICIAN_ROLE_SCOPE }],
  resourceServers: [
    { identifier: FHIR, name: 'Test FHIR', scope: 'patient/Observation.rs patient/Patient.rs system/Patient.rs user/Patient.rs' },
    { identifier: TOOLS, name: 'Test tools', scope: 'tools/run', accessTokenTtl: 3600 },
    { identifier: OTHER, name: 'Nobody\'s API', scope: 'other/read' },
  ],
  clients: [
    {
      client_id: APP.client_id,
      client_secret: APP.client_secret,
      client_name: 'Test App',
      grant_types: ['authorization_code', 'refresh_token'],
      redirect_uris: [APP.redirect_uri],
      post_logout_redirect_uris: ['https://app.test/'],
      scope: 'openid profile fhirUser offline_access launch launch/patient',
      resource_scope: 'patient/Observation.rs patient/Patient.rs',
    },
    {
      client_id: SERVICE.client_id,
      client_secret: SERVICE.client_secret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      resource_scope: 'system/Patient.rs tools/run',
    },
    {
      client_id: PUBLIC_APP.client_id,
      token_endpoint_auth_method: 'none',
      application_type: 'native',
      grant_types: ['authorization_code'],
      redirect_uris: [PUBLIC_APP.redirect_uri],
      scope: 'openid',
    },
  ],
});

export interface TestServer {
  server: RunningServer;
  config: Config;
  issuer: string;
  mtlsBaseUrl: string;
  keysDir: string;
  caPem: string;
  testDb: TestDb;
  /** fetch that trusts the dev CA and presents the test client certificate (to listeners that ask); never follows redirects. */
  fetch(url: string | URL, init?: RequestInit): ReturnType<typeof undiciFetch>;
  dispatcher: Agent;
  /** The client certificate `fetch` presents (issued by the dev client CA). */
  clientCert: IssuedClientCertificate;
  /** The URL of an endpoint: token, introspection and revocation on the mTLS listener, the rest on the issuer. */
  endpoint(path: string): string;
  logs: string[];
  stop(): Promise<void>;
}

export interface TestServerOptions {
  env?: Record<string, string>;
  seed?: Seed | null;
  /** Share a database (and keys) with another server: a second process-like instance. */
  testDb?: TestDb;
  keysDir?: string;
  /** Keep every log line (info and up) in TestServer.logs, to scan them for secrets. */
  captureLogs?: boolean;
}

// TestServer.testDb shows the server's own Db (its configuration cache sees the test's writes at once,
// as it sees the server's own); a second server on the same database gets the database itself.
const underlying = new WeakMap<TestDb, TestDb>();

export async function startTestServer(options: TestServerOptions = {}): Promise<TestServer> {
  const keysDir = options.keysDir ?? await fs.mkdtemp(path.join(os.tmpdir(), 'authz-keys-'));
  const testDb = options.testDb ? underlying.get(options.testDb) ?? options.testDb : await createTestDb();
  const config = loadConfig({
    NODE_ENV: 'test',
    ISSUER: 'https://localhost:0',
    HOST: '127.0.0.1',
    PORT: '0',
    MTLS_PORT: '0',
    KEYS_DIR: keysDir,
    DATA_DIR: path.join(keysDir, 'data'),
    LOG_LEVEL: 'silent',
    DEMO_SEED: 'false',
    LOGIN_LOCK_SECONDS: '60',
    ...options.env,
  });
  const logs: string[] = [];
  const logger = options.captureLogs
    ? createLogger('info', { write: (line: string) => { logs.push(line); } })
    : createLogger(process.env.TEST_LOG_LEVEL ?? 'silent');
  const server = await startServer({ config, logger, db: testDb.db });
  const serversTestDb: TestDb = { ...testDb, db: server.db };
  underlying.set(serversTestDb, testDb);
  if (options.seed !== null) {
    await applySeed(server.db, server.provider(), server.secrets.clientSecretKey, options.seed ?? TEST_SEED);
  }
  const caPem = server.tls.caPem;
  const clientCert = await ensureDevClientCertificate(keysDir, 'test-client');
  const dispatcher = new Agent({ connect: { ca: caPem, cert: clientCert.certPem, key: clientCert.keyPem } });
  return {
    server,
    config,
    issuer: server.issuer,
    mtlsBaseUrl: server.mtlsBaseUrl,
    keysDir,
    caPem,
    testDb: serversTestDb,
    dispatcher,
    clientCert,
    endpoint: (p: string) => `${p.startsWith('/token') ? server.mtlsBaseUrl : server.issuer}${p}`,
    logs,
    fetch: (url, init = {}) => undiciFetch(url, { redirect: 'manual', ...init, dispatcher }),
    async stop() {
      await server.stop();
      await dispatcher.close();
      if (!options.testDb) await testDb.drop();
      if (!options.keysDir) await fs.rm(keysDir, { recursive: true, force: true });
    },
  };
}

export function basicAuth(clientId: string, secret: string): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

export function form(params: Record<string, string>): { body: string; headers: Record<string, string> } {
  return { body: new URLSearchParams(params).toString(), headers: { 'content-type': 'application/x-www-form-urlencoded' } };
}
