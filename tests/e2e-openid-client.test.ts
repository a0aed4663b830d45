// A real relying party (openid-client) against the real server: discovery, code + PKCE through the
// login form, ID token validation, refresh rotation, revocation, introspection, client credentials.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import * as oidc from 'openid-client';

import { relyingParty, signIn } from './support/relying-party.ts';
import { APP, CLINICIAN, FHIR, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

let ts: TestServer;

before(async () => {
  ts = await startTestServer();
});
after(() => ts.stop());

test('discovery publishes S256-only PKCE, code flow only, and our endpoints', async () => {
  const config = await relyingParty(ts);
  const metadata = config.serverMetadata();
  assert.equal(metadata.issuer, ts.issuer);
  assert.deepEqual(metadata.code_challenge_methods_supported, ['S256']);
  // `none` only serves the first-party account pages (a session, no code or token); clients cannot register it.
  assert.deepEqual(metadata.response_types_supported, ['code', 'none']);
  assert.ok(metadata.introspection_endpoint && metadata.revocation_endpoint && metadata.end_session_endpoint);
  assert.ok(metadata.grant_types_supported?.includes('client_credentials'));
  const jwks = await (await ts.fetch(metadata.jwks_uri!)).json() as { keys: Record<string, unknown>[] };
  assert.ok(jwks.keys.some((k) => k.alg === 'ES256'));
  assert.ok(jwks.keys.every((k) => k.d === undefined), 'JWKS must not publish private key material');
});

test('authorization code + PKCE through the login form, refresh rotation, revocation', async () => {
  const config = await relyingParty(ts);
  const nonce = oidc.randomNonce();
  const { callback, checks } = await signIn(ts, config, {
    scope: 'openid profile fhirUser offline_access patient/Observation.rs', nonce, prompt: 'consent',
  });
  assert.equal(callback.origin + callback.pathname, APP.redirect_uri);

  const tokens = await oidc.authorizationCodeGrant(config, callback, {
    ...checks, expectedNonce: nonce, idTokenExpected: true,
  }, { resource: FHIR });
  // openid-client validated the ID token (signature, iss, aud, nonce, exp) before returning.
  const claims = tokens.claims()!;
  assert.equal(claims.fhirUser, CLINICIAN.fhirUser);
  assert.equal(claims.acr, 'urn:clinical-authz:acr:pwd');
  assert.deepEqual(claims.amr, ['pwd']);
  assert.ok(tokens.refresh_token, 'offline_access gives a refresh token');
  assert.equal(tokens.scope?.split(' ').includes('patient/Observation.rs'), true);
  assert.ok(tokens.expires_in! <= 300, 'access tokens live minutes');

  const introspected = await oidc.tokenIntrospection(config, tokens.access_token);
  assert.equal(introspected.active, true);
  assert.equal(introspected.sub, claims.sub);
  assert.equal(introspected.aud, FHIR);

  // Refresh rotates: the new refresh token works, the old one is refused and revokes the grant.
  const refreshed = await oidc.refreshTokenGrant(config, tokens.refresh_token!, { resource: FHIR });
  assert.notEqual(refreshed.refresh_token, tokens.refresh_token);
  await assert.rejects(oidc.refreshTokenGrant(config, tokens.refresh_token!, { resource: FHIR }),
    (err: oidc.ResponseBodyError) => err.error === 'invalid_grant');
  // Reuse of a rotated refresh token is treated as theft: the whole grant is gone.
  assert.equal((await oidc.tokenIntrospection(config, refreshed.access_token)).active, false);
  await assert.rejects(oidc.refreshTokenGrant(config, refreshed.refresh_token!, { resource: FHIR }),
    (err: oidc.ResponseBodyError) => err.error === 'invalid_grant');
});

test('revoking an access token makes introspection answer inactive; the code cannot be redeemed twice', async () => {
  const config = await relyingParty(ts);
  const { callback, checks } = await signIn(ts, config, { scope: 'openid patient/Observation.rs' });
  const tokens = await oidc.authorizationCodeGrant(config, callback, checks, { resource: FHIR });
  assert.equal((await oidc.tokenIntrospection(config, tokens.access_token)).active, true);
  await oidc.tokenRevocation(config, tokens.access_token);
  assert.equal((await oidc.tokenIntrospection(config, tokens.access_token)).active, false);

  await assert.rejects(
    oidc.authorizationCodeGrant(config, callback, checks, { resource: FHIR }),
    (err: oidc.ResponseBodyError) => err.error === 'invalid_grant',
  );
});

test('client credentials gives a short-lived JWT access token for the resource server', async () => {
  const config = await relyingParty(ts, SERVICE.client_id, SERVICE.client_secret);
  const tokens = await oidc.clientCredentialsGrant(config, { scope: 'system/Patient.rs', resource: FHIR });
  const [header, payload] = tokens.access_token.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url').toString()));
  assert.equal(header.typ, 'at+jwt');
  assert.equal(header.alg, 'ES256');
  assert.equal(payload.aud, FHIR);
  assert.equal(payload.client_id, SERVICE.client_id);
  assert.equal(payload.scope, 'system/Patient.rs');
  assert.ok(payload.exp - payload.iat <= 300);
  const introspected = await oidc.tokenIntrospection(config, tokens.access_token);
  assert.equal(introspected.active, true);
  assert.equal(introspected.jti, payload.jti);
  await oidc.tokenRevocation(config, tokens.access_token);
  assert.equal((await oidc.tokenIntrospection(config, tokens.access_token)).active, false);
});
