// The client registration policy as oidc-provider applies it (Client.validate: the same check every
// path goes through: seed, CLI, admin API, dynamic registration). One case per rule, with the exact
// error code and the field named first in the description.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';
import type Provider from 'oidc-provider';

import { loadConfig } from '../src/config.ts';
import { migrate } from '../src/db/migrate.ts';
import { TOKEN_EXCHANGE_GRANT } from '../src/exchange/decision.ts';
import { createLogger } from '../src/log.ts';
import { buildProvider } from '../src/oidc/provider.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

const WEB = {
  client_id: 'web-app', client_secret: 'a'.repeat(40), grant_types: ['authorization_code', 'refresh_token'],
  redirect_uris: ['https://app.example.org/callback'], resource_scope: 'patient/Observation.rs',
};
const NATIVE = {
  client_id: 'native-app', token_endpoint_auth_method: 'none', application_type: 'native', grant_types: ['authorization_code'],
  redirect_uris: ['http://127.0.0.1:8765/callback'],
};
const WORKLOAD = {
  client_id: 'orchestrator', token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: 'CN=orchestrator',
  grant_types: [TOKEN_EXCHANGE_GRANT], response_types: [], redirect_uris: [],
};

describe('client metadata policy', () => {
  let testDb: TestDb;
  let provider: Provider;

  const validate = (metadata: Record<string, unknown>) =>
    (provider.Client as unknown as { validate(m: unknown): Promise<void> }).validate(metadata);

  async function refused(metadata: Record<string, unknown>, error: string, description: RegExp) {
    await assert.rejects(validate(metadata), (err: { error?: string; error_description?: string }) => {
      assert.equal(err.error, error, `${JSON.stringify(metadata)} → ${err.error_description}`);
      assert.match(err.error_description ?? '', description);
      return true;
    });
  }

  before(async () => {
    testDb = await createTestDb();
    await migrate(testDb.db);
    const key = await jose.exportJWK((await jose.generateKeyPair('ES256', { extractable: true })).privateKey);
    ({ provider } = buildProvider({
      config: loadConfig({ NODE_ENV: 'test', ISSUER: 'https://authz.test' }), db: testDb.db, logger: createLogger('silent'),
      jwks: { keys: [{ ...key, alg: 'ES256', use: 'sig', kid: 'k1' }] }, cookieKeys: ['c'.repeat(32)], clientSecretKey: 's'.repeat(32),
    }));
  });
  after(async () => testDb?.drop());

  test('accepted: a web app, a native app on loopback or a private-use scheme, an mTLS workload', async () => {
    await validate(WEB);
    await validate(NATIVE);
    await validate({ ...NATIVE, redirect_uris: ['http://[::1]/cb', 'org.hospital.viewer:/oauth2redirect'] });
    await validate({ ...NATIVE, grant_types: ['authorization_code', 'refresh_token'], dpop_bound_access_tokens: true });
    await validate(WORKLOAD);
  });

  test('redirect URIs: exact, https, no fragment, no user information; loopback http only for native apps', async () => {
    const cases: Array<[Record<string, unknown>, RegExp]> = [
      [{ ...WEB, redirect_uris: ['https://*.example.org/callback'] }, /^redirect_uris must be exact: no wildcards/],
      [{ ...WEB, redirect_uris: ['https://app.example.org/*'] }, /^redirect_uris must be exact: no wildcards/],
      [{ ...WEB, redirect_uris: ['http://app.example.org/callback'] }, /^redirect_uris must use https/],
      [{ ...WEB, redirect_uris: ['http://127.0.0.1/callback'] }, /^redirect_uris must use https/],
      [{ ...WEB, redirect_uris: ['https://app.example.org/cb#frag'] }, /^redirect_uris must not contain fragments/],
      [{ ...WEB, redirect_uris: ['https://user:pw@app.example.org/cb'] }, /^redirect_uris must not contain user information/],
      [{ ...WEB, redirect_uris: ['org.hospital.app:/cb'] }, /^redirect_uris/],
      [{ ...NATIVE, redirect_uris: ['http://localhost:8765/cb'] }, /^redirect_uris/],
      [{ ...NATIVE, redirect_uris: ['myapp:/cb'] }, /^redirect_uris must use https, loopback http or a reverse-domain private-use scheme/],
      [{ ...NATIVE, redirect_uris: ['javascript:alert(1)'] }, /^redirect_uris/],
    ];
    for (const [metadata, description] of cases) await refused(metadata, 'invalid_redirect_uri', description);
    await refused({ ...WEB, post_logout_redirect_uris: ['http://app.example.org/'] }, 'invalid_client_metadata', /^post_logout_redirect_uris must use https/);
  });

  test('jwks_uri, grants and authentication methods, scope ceilings', async () => {
    await refused({ ...WORKLOAD, token_endpoint_auth_method: 'private_key_jwt', jwks_uri: 'http://keys.example.org/jwks', tls_client_auth_subject_dn: undefined },
      'invalid_client_metadata', /^jwks_uri must use https/);
    await refused({ ...WORKLOAD, token_endpoint_auth_method: 'client_secret_basic', client_secret: 'b'.repeat(40), tls_client_auth_subject_dn: undefined },
      'invalid_client_metadata', /^token_endpoint_auth_method must be tls_client_auth or self_signed_tls_client_auth for token exchange/);
    await refused({ ...NATIVE, grant_types: ['authorization_code', 'refresh_token'] }, 'invalid_client_metadata', /^grant_types: a public client gets refresh tokens only when they are bound/);
    await refused({ ...NATIVE, grant_types: ['authorization_code', 'client_credentials'] }, 'invalid_client_metadata', /^grant_types: client_credentials needs an authenticated client|token_endpoint_auth_method/);
    await refused({ ...WEB, resource_scope: 'patient/Observation.rs patient/Observaton.rs' }, 'invalid_client_metadata', /^resource_scope has an invalid SMART scope: patient\/Observaton\.rs/);
    await refused({ ...WEB, resource_scope: 'user/*.xyz' }, 'invalid_client_metadata', /^resource_scope has an invalid SMART scope/);
    await refused({ ...WORKLOAD, break_glass_allowed: true }, 'invalid_client_metadata', /^break_glass_allowed needs the authorization_code grant/);
    await refused({ ...WEB, break_glass_allowed: 'yes' }, 'invalid_client_metadata', /^break_glass_allowed must be true or false/);
    await validate({ ...WEB, resource_scope: 'patient/Observation.rs tools/run' });
    // Admin scopes by client credentials only for a CA-issued certificate (tls_client_auth).
    await validate({ ...WORKLOAD, grant_types: ['client_credentials'], resource_scope: 'admin:read admin:write' });
    await refused({ ...WORKLOAD, grant_types: ['client_credentials'], token_endpoint_auth_method: 'client_secret_basic', client_secret: 'c'.repeat(40),
      tls_client_auth_subject_dn: undefined, resource_scope: 'admin:write' }, 'invalid_client_metadata', /^token_endpoint_auth_method must be tls_client_auth \(a CA-issued certificate\) for a client holding admin scopes/);
  });
});
