// RFC 8705 over real TLS handshakes: mTLS client authentication (tls_client_auth and
// self_signed_tls_client_auth) and certificate-bound access and refresh tokens.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import tls from 'node:tls';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';

import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { x5tS256 } from '../src/mtls/index.ts';
import { Browser } from './support/login-flow.ts';
import {
  createCa, devCa, issueClientCertificate, issueWithUnknownCriticalExtension, selfSignedClientCertificate, type KeyPairPem,
} from './support/pki.ts';
import { basicAuth, CLINICIAN, FHIR, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

const DAY = 24 * 3600 * 1000;
const TLS_CLIENT = 'mtls-workload';
const SELF_SIGNED_CLIENT = 'self-signed-workload';
const BOUND_PUBLIC = { client_id: 'bound-public-app', redirect_uri: 'https://bound-public.test/callback' };

function thumbprint(certPem: string): string {
  return x5tS256(Buffer.from(certPem.replace(/-----[^-]+-----|\s/g, ''), 'base64'));
}

describe('mTLS client authentication and certificate-bound tokens', () => {
  let ts: TestServer;
  let ca: KeyPairPem;
  let workload: KeyPairPem;
  let selfSigned: Awaited<ReturnType<typeof selfSignedClientCertificate>>;
  const agents: Agent[] = [];

  /** POST a form over a TLS connection that presents `cert` (or none). */
  async function post(url: string, params: Record<string, string>, cert?: KeyPairPem, headers: Record<string, string> = {}) {
    const dispatcher = new Agent({ connect: { ca: ts.caPem, ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}) } });
    agents.push(dispatcher);
    const res = await undiciFetch(url, {
      method: 'POST',
      body: new URLSearchParams(params).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
      dispatcher,
    });
    return { status: res.status, body: await res.json() as Record<string, unknown> };
  }
  const mtlsToken = () => `${ts.mtlsBaseUrl}/token`;
  const clientCredentials = (clientId: string) => ({ grant_type: 'client_credentials', client_id: clientId, resource: FHIR, scope: 'system/Patient.rs' });

  before(async () => {
    ts = await startTestServer();
    ca = await devCa(ts.keysDir);
    workload = await issueClientCertificate(ca, TLS_CLIENT);
    selfSigned = await selfSignedClientCertificate(SELF_SIGNED_CLIENT);
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      clients: [
        {
          client_id: TLS_CLIENT,
          token_endpoint_auth_method: 'tls_client_auth',
          tls_client_auth_subject_dn: `CN=${TLS_CLIENT}`,
          grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
          resource_scope: 'system/Patient.rs',
        },
        {
          client_id: SELF_SIGNED_CLIENT,
          token_endpoint_auth_method: 'self_signed_tls_client_auth',
          jwks: { keys: [selfSigned.jwk] },
          grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
          resource_scope: 'system/Patient.rs',
        },
        {
          client_id: BOUND_PUBLIC.client_id,
          token_endpoint_auth_method: 'none',
          application_type: 'native',
          tls_client_certificate_bound_access_tokens: true,
          grant_types: ['authorization_code', 'refresh_token'],
          redirect_uris: [BOUND_PUBLIC.redirect_uri],
          scope: 'openid offline_access launch/patient',
          resource_scope: 'patient/Observation.rs',
        },
      ],
    }));
  });
  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await ts?.stop();
  });

  test('discovery advertises the mTLS aliases and certificate-bound tokens', async () => {
    const doc = await (await ts.fetch(`${ts.issuer}/.well-known/openid-configuration`)).json() as Record<string, unknown>;
    assert.equal(doc.tls_client_certificate_bound_access_tokens, true);
    assert.deepEqual(doc.mtls_endpoint_aliases, {
      token_endpoint: `${ts.mtlsBaseUrl}/token`,
      introspection_endpoint: `${ts.mtlsBaseUrl}/token/introspection`,
      revocation_endpoint: `${ts.mtlsBaseUrl}/token/revocation`,
      userinfo_endpoint: `${ts.mtlsBaseUrl}/me`,
      pushed_authorization_request_endpoint: `${ts.mtlsBaseUrl}/request`,
    });
    const methods = doc.token_endpoint_auth_methods_supported as string[];
    assert.ok(methods.includes('tls_client_auth') && methods.includes('self_signed_tls_client_auth'), methods.join(' '));
  });

  test('a confidential client gets a token bound to the certificate it presented; introspection returns cnf', async () => {
    const res = await post(mtlsToken(), { grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }, workload,
      { authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    const claims = jose.decodeJwt(String(res.body.access_token));
    assert.deepEqual(claims.cnf, { 'x5t#S256': thumbprint(workload.certPem) });
    const introspected = await post(`${ts.mtlsBaseUrl}/token/introspection`, { token: String(res.body.access_token) }, workload,
      { authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) });
    assert.equal(introspected.body.active, true);
    assert.deepEqual(introspected.body.cnf, { 'x5t#S256': thumbprint(workload.certPem) });
  });

  test('binding is on by default: a confidential client without a certificate gets no token', async () => {
    const res = await post(`${ts.issuer}/token`, { grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs' }, undefined,
      { authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) });
    assert.equal(res.status, 400);
    assert.equal(res.body.error, 'invalid_grant');
    assert.equal(res.body.access_token, undefined);
  });

  test('tls_client_auth: a certificate from the client CA with the registered subject authenticates', async () => {
    const res = await post(mtlsToken(), clientCredentials(TLS_CLIENT), workload);
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.equal(jose.decodeJwt(String(res.body.access_token)).client_id, TLS_CLIENT);
    assert.deepEqual(jose.decodeJwt(String(res.body.access_token)).cnf, { 'x5t#S256': thumbprint(workload.certPem) });
  });

  test('tls_client_auth refuses expired, not-yet-valid, wrong-CA, wrong-subject and missing certificates', async () => {
    const otherCa = await createCa('Some Other CA');
    const cases: Array<[string, KeyPairPem | undefined, string]> = [
      ['expired', await issueClientCertificate(ca, TLS_CLIENT, { notBefore: new Date(Date.now() - 10 * DAY), notAfter: new Date(Date.now() - DAY) }), mtlsToken()],
      ['not yet valid', await issueClientCertificate(ca, TLS_CLIENT, { notBefore: new Date(Date.now() + DAY), notAfter: new Date(Date.now() + 10 * DAY) }), mtlsToken()],
      ['wrong CA', await issueClientCertificate(otherCa, TLS_CLIENT), mtlsToken()],
      ['wrong subject', await issueClientCertificate(ca, 'somebody-else'), mtlsToken()],
      ['unknown critical extension', await issueWithUnknownCriticalExtension(ca, TLS_CLIENT), mtlsToken()],
      ['no certificate (browser listener)', undefined, `${ts.issuer}/token`],
    ];
    for (const [name, cert, url] of cases) {
      const res = await post(url, clientCredentials(TLS_CLIENT), cert);
      assert.equal(res.status, 401, `${name}: ${JSON.stringify(res.body)}`);
      assert.equal(res.body.error, 'invalid_client', name);
      assert.equal(res.body.access_token, undefined, name);
    }
    const { rows } = await ts.testDb.db.query<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE type = 'client.authentication_failed' AND actor_client = $1", [TLS_CLIENT],
    );
    assert.ok((rows[0]?.n ?? 0) >= cases.length, `each refusal audited (${rows[0]?.n})`);
  });

  test('self_signed_tls_client_auth: the registered certificate authenticates, another or an expired one does not', async () => {
    const ok = await post(mtlsToken(), clientCredentials(SELF_SIGNED_CLIENT), selfSigned);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.deepEqual(jose.decodeJwt(String(ok.body.access_token)).cnf, { 'x5t#S256': thumbprint(selfSigned.certPem) });

    const stranger = await selfSignedClientCertificate(SELF_SIGNED_CLIENT);
    const refused = await post(mtlsToken(), clientCredentials(SELF_SIGNED_CLIENT), stranger);
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error, 'invalid_client');

    const expired = await selfSignedClientCertificate(SELF_SIGNED_CLIENT, { notBefore: new Date(Date.now() - 10 * DAY), notAfter: new Date(Date.now() - DAY) });
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      clients: [{
        client_id: 'expired-self-signed', token_endpoint_auth_method: 'self_signed_tls_client_auth', jwks: { keys: [expired.jwk] },
        grant_types: ['client_credentials'], response_types: [], redirect_uris: [], resource_scope: 'system/Patient.rs',
      }],
    }));
    const stale = await post(mtlsToken(), clientCredentials('expired-self-signed'), expired);
    assert.equal(stale.status, 401, JSON.stringify(stale.body));
    assert.equal(stale.body.error, 'invalid_client');
  });

  test('a public client\'s refresh token is bound to its certificate: another certificate cannot refresh', async () => {
    const appCert = await issueClientCertificate(ca, 'bound-public-app');
    const thief = await issueClientCertificate(ca, 'bound-public-app');
    const verifier = 'v'.repeat(50);
    const challenge = Buffer.from(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier))).toString('base64url');
    const url = new URL(`${ts.issuer}/auth`);
    for (const [k, v] of Object.entries({
      client_id: BOUND_PUBLIC.client_id, redirect_uri: BOUND_PUBLIC.redirect_uri, response_type: 'code', state: 's1', nonce: 'n1',
      scope: 'openid offline_access patient/Observation.rs', resource: FHIR, prompt: 'consent',
      code_challenge: challenge, code_challenge_method: 'S256',
    })) url.searchParams.set(k, v);
    const callback = await new Browser(ts).authorize(url, CLINICIAN.username, CLINICIAN.password);
    const code = callback.searchParams.get('code');
    assert.ok(code, callback.href);

    const redeemed = await post(mtlsToken(), {
      grant_type: 'authorization_code', client_id: BOUND_PUBLIC.client_id, code: code!, redirect_uri: BOUND_PUBLIC.redirect_uri, code_verifier: verifier,
    }, appCert);
    assert.equal(redeemed.status, 200, JSON.stringify(redeemed.body));
    assert.deepEqual(jose.decodeJwt(String(redeemed.body.access_token)).cnf, { 'x5t#S256': thumbprint(appCert.certPem) });
    assert.ok(redeemed.body.refresh_token, 'refresh token issued');

    const refresh = (cert: KeyPairPem, token: string) => post(mtlsToken(), { grant_type: 'refresh_token', client_id: BOUND_PUBLIC.client_id, refresh_token: token }, cert);
    const stolen = await refresh(thief, String(redeemed.body.refresh_token));
    assert.equal(stolen.status, 400);
    assert.equal(stolen.body.error, 'invalid_grant');
    assert.equal(stolen.body.access_token, undefined);

    const renewed = await refresh(appCert, String(redeemed.body.refresh_token));
    assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
    assert.deepEqual(jose.decodeJwt(String(renewed.body.access_token)).cnf, { 'x5t#S256': thumbprint(appCert.certPem) });
  });

  test('the mTLS listener refuses TLS 1.2 renegotiation: a connection keeps the certificate of its handshake', async () => {
    const url = new URL(ts.mtlsBaseUrl);
    const socket = tls.connect({
      host: url.hostname, port: Number(url.port), ca: ts.caPem, servername: 'localhost', maxVersion: 'TLSv1.2',
      cert: workload.certPem, key: workload.keyPem,
    });
    try {
      await once(socket, 'secureConnect');
      assert.equal(socket.getProtocol(), 'TLSv1.2');
      const other = await issueClientCertificate(ca, 'someone-else');
      // Ask for a new handshake (the server's answer is a no_renegotiation alert or a closed connection).
      socket.setKeyCert?.(tls.createSecureContext({ cert: other.certPem, key: other.keyPem }));
      const outcome = await new Promise<string>((resolve) => {
        const started = socket.renegotiate({ rejectUnauthorized: false }, (err) => resolve(err ? 'refused' : 'renegotiated'));
        if (!started) resolve('refused');
        socket.once('error', () => resolve('refused'));
        socket.once('close', () => resolve('refused'));
      });
      assert.equal(outcome, 'refused');
    } finally {
      socket.destroy();
    }
  });
});
