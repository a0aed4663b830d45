// /.well-known/smart-configuration, field by field against SMART App Launch 2.x ("Conformance").
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { SMART_CAPABILITIES } from '../src/smart/smart-configuration.ts';
import { startTestServer, type TestServer } from './support/test-server.ts';

describe('/.well-known/smart-configuration', () => {
  let ts: TestServer;
  let doc: Record<string, unknown>;
  let oidcDoc: Record<string, unknown>;
  let res: Awaited<ReturnType<TestServer['fetch']>>;

  before(async () => {
    ts = await startTestServer();
    res = await ts.fetch(`${ts.issuer}/.well-known/smart-configuration`);
    doc = await res.json() as Record<string, unknown>;
    oidcDoc = await (await ts.fetch(`${ts.issuer}/.well-known/openid-configuration`)).json() as Record<string, unknown>;
  });
  after(async () => {
    await ts?.stop();
  });

  test('served as JSON, readable cross-origin by browser apps', () => {
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    assert.equal(res.headers.get('access-control-allow-origin'), '*');
  });

  test('REQUIRED endpoints match OpenID discovery (same URLs, same issuer)', () => {
    assert.equal(doc.issuer, ts.issuer);
    assert.equal(doc.issuer, oidcDoc.issuer);
    assert.equal(doc.authorization_endpoint, `${ts.issuer}/auth`);
    assert.equal(doc.authorization_endpoint, oidcDoc.authorization_endpoint);
    assert.equal(doc.token_endpoint, oidcDoc.token_endpoint);
    assert.equal(doc.jwks_uri, oidcDoc.jwks_uri);
    assert.equal(doc.introspection_endpoint, oidcDoc.introspection_endpoint);
    assert.equal(doc.revocation_endpoint, oidcDoc.revocation_endpoint);
    assert.equal(doc.userinfo_endpoint, oidcDoc.userinfo_endpoint);
    assert.equal(doc.registration_endpoint, oidcDoc.registration_endpoint);
    assert.equal(doc.registration_endpoint, `${ts.issuer}/reg`);
  });

  test('REQUIRED: grant_types_supported, code_challenge_methods_supported (S256 only), capabilities', () => {
    assert.deepEqual(doc.grant_types_supported, ['authorization_code', 'client_credentials', 'refresh_token']);
    assert.deepEqual(doc.code_challenge_methods_supported, ['S256']);
    assert.deepEqual(oidcDoc.code_challenge_methods_supported, ['S256']);
    assert.deepEqual(doc.capabilities, [...SMART_CAPABILITIES]);
    for (const capability of ['launch-ehr', 'launch-standalone', 'context-standalone-patient', 'context-ehr-patient', 'permission-v2', 'sso-openid-connect']) {
      assert.ok((doc.capabilities as string[]).includes(capability), capability);
    }
  });

  test('RECOMMENDED: auth methods, scopes, response types; every OIDC auth method is listed and vice versa', () => {
    assert.deepEqual([...(doc.token_endpoint_auth_methods_supported as string[])].sort(),
      [...(oidcDoc.token_endpoint_auth_methods_supported as string[])].sort());
    assert.ok((doc.token_endpoint_auth_methods_supported as string[]).includes('private_key_jwt'));
    assert.deepEqual(doc.response_types_supported, ['code']);
    const scopes = doc.scopes_supported as string[];
    for (const scope of ['openid', 'fhirUser', 'launch', 'launch/patient', 'offline_access', 'patient/Observation.rs']) {
      assert.ok(scopes.includes(scope), scope);
    }
  });

  test('RFC 8705: bound tokens and the mTLS aliases, as in OpenID discovery', () => {
    assert.equal(doc.tls_client_certificate_bound_access_tokens, true);
    assert.deepEqual(doc.mtls_endpoint_aliases, oidcDoc.mtls_endpoint_aliases);
  });

  test('only GET and HEAD', async () => {
    const post = await ts.fetch(`${ts.issuer}/.well-known/smart-configuration`, { method: 'POST' });
    assert.equal(post.status, 405);
    assert.equal(((await post.json()) as { error: string }).error, 'invalid_request');
  });
});
