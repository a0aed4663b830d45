// Behind a TLS-terminating proxy the client certificate arrives in a header (RFC 9440 Client-Cert /
// Client-Cert-Chain, or nginx's URL-encoded PEM). It counts only from a configured proxy address; from
// anyone else it is stripped and the attempt is audited.
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';

import * as jose from 'jose';

import { loadOrCreateTls } from '../src/keystore/pki.ts';
import { x5tS256 } from '../src/mtls/index.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { createCa, derBase64, devCa, issueClientCertificate, issueWithUnknownCriticalExtension, type KeyPairPem } from './support/pki.ts';
import { basicAuth, FHIR, SERVICE, startTestServer, type TestServer } from './support/test-server.ts';

const WORKLOAD = 'proxied-workload';
const DEEP_WORKLOAD = 'deep-workload';

const byteSequence = (certPem: string) => `:${derBase64(certPem)}:`;
const thumbprint = (certPem: string) => x5tS256(Buffer.from(derBase64(certPem), 'base64'));

async function registerWorkloads(ts: TestServer): Promise<void> {
  const client = (id: string) => ({
    client_id: id, token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: `CN=${id}`,
    grant_types: ['client_credentials'], response_types: [], redirect_uris: [], resource_scope: 'system/Patient.rs',
  });
  await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
    clients: [client(WORKLOAD), client(DEEP_WORKLOAD)],
  }));
}

/** A token request to the browser listener (no client certificate in the handshake), as a proxy forwards it. */
async function proxiedToken(ts: TestServer, clientId: string, headers: Record<string, string>, auth?: string) {
  const res = await ts.fetch(`${ts.issuer}/token`, {
    method: 'POST',
    body: new URLSearchParams({ grant_type: 'client_credentials', resource: FHIR, scope: 'system/Patient.rs', ...(auth ? {} : { client_id: clientId }) }).toString(),
    headers: { 'content-type': 'application/x-www-form-urlencoded', ...(auth ? { authorization: auth } : {}), ...headers },
  });
  return { status: res.status, body: await res.json() as Record<string, unknown> };
}

async function auditCount(ts: TestServer, type: string): Promise<number> {
  const { rows } = await ts.testDb.db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_events WHERE type = $1', [type]);
  return rows[0]?.n ?? 0;
}

describe('client certificates from a trusted proxy header', () => {
  const servers: TestServer[] = [];
  let bundleDir: string;
  let leaf: KeyPairPem;
  let intermediate: KeyPairPem;
  let deepLeaf: KeyPairPem;
  let rfc9440: TestServer;
  let nginx: TestServer;
  let untrusted: TestServer;

  before(async () => {
    // One key directory (one dev CA) for all three servers; the client CA bundle adds a second root
    // whose intermediate is NOT in the bundle, so that path only verifies with the chain header.
    bundleDir = await fs.mkdtemp(path.join(os.tmpdir(), 'authz-proxy-certs-'));
    const keysDir = path.join(bundleDir, 'keys');
    await loadOrCreateTls(keysDir, { allowGenerate: true });
    const dev = await devCa(keysDir);
    const root = await createCa('Proxy Test Root', undefined, 1);
    intermediate = await createCa('Proxy Test Intermediate', root, 0);
    const bundle = path.join(bundleDir, 'client-ca.pem');
    await fs.writeFile(bundle, `${dev.certPem}\n${root.certPem}`);
    const start = async (env: Record<string, string>) => {
      const ts = await startTestServer({ keysDir, env: { ...env, CLIENT_CA_FILE: bundle } });
      servers.push(ts);
      await registerWorkloads(ts);
      return ts;
    };
    [rfc9440, nginx, untrusted] = await Promise.all([
      start({ CLIENT_CERT_HEADER: 'rfc9440', TRUSTED_PROXIES: '127.0.0.1' }),
      start({ CLIENT_CERT_HEADER: 'nginx', TRUSTED_PROXIES: '127.0.0.1/32' }),
      start({ CLIENT_CERT_HEADER: 'rfc9440', TRUSTED_PROXIES: '10.99.0.1' }),
    ]);
    leaf = await issueClientCertificate(dev, WORKLOAD);
    deepLeaf = await issueClientCertificate(intermediate, DEEP_WORKLOAD);
  });
  after(async () => {
    await Promise.all(servers.map((s) => s.stop()));
    await fs.rm(bundleDir, { recursive: true, force: true });
  });

  test('RFC 9440 Client-Cert (leaf only) from the trusted proxy authenticates and binds', async () => {
    const res = await proxiedToken(rfc9440, WORKLOAD, { 'client-cert': byteSequence(leaf.certPem) });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(jose.decodeJwt(String(res.body.access_token)).cnf, { 'x5t#S256': thumbprint(leaf.certPem) });
  });

  test('RFC 9440 full chain: a leaf under an intermediate verifies with Client-Cert-Chain, not without it', async () => {
    const withChain = await proxiedToken(rfc9440, DEEP_WORKLOAD, {
      'client-cert': byteSequence(deepLeaf.certPem), 'client-cert-chain': byteSequence(intermediate.certPem),
    });
    assert.equal(withChain.status, 200, JSON.stringify(withChain.body));
    const leafOnly = await proxiedToken(rfc9440, DEEP_WORKLOAD, { 'client-cert': byteSequence(deepLeaf.certPem) });
    assert.equal(leafOnly.status, 401);
    assert.equal(leafOnly.body.error, 'invalid_client');
  });

  test('a header certificate with a critical extension we do not process is refused (RFC 5280 §4.2)', async () => {
    const odd = await issueWithUnknownCriticalExtension(await devCa(path.join(bundleDir, 'keys')), WORKLOAD);
    const res = await proxiedToken(rfc9440, WORKLOAD, { 'client-cert': byteSequence(odd.certPem) });
    assert.equal(res.status, 401, JSON.stringify(res.body));
    assert.equal(res.body.error, 'invalid_client');
  });

  test('a malformed certificate header from the proxy is no certificate (invalid_client) and is audited', async () => {
    const before = await auditCount(rfc9440, 'mtls.malformed_certificate_header');
    const res = await proxiedToken(rfc9440, WORKLOAD, { 'client-cert': ':not base64 at all!:' });
    assert.equal(res.status, 401);
    assert.equal(res.body.error, 'invalid_client');
    assert.equal(await auditCount(rfc9440, 'mtls.malformed_certificate_header'), before + 1);
  });

  test('nginx $ssl_client_escaped_cert (URL-encoded PEM) from the trusted proxy authenticates', async () => {
    const res = await proxiedToken(nginx, WORKLOAD, { 'x-ssl-client-cert': encodeURIComponent(leaf.certPem) });
    assert.equal(res.status, 200, JSON.stringify(res.body));
    assert.deepEqual(jose.decodeJwt(String(res.body.access_token)).cnf, { 'x5t#S256': thumbprint(leaf.certPem) });
    // The RFC 9440 header is not what this proxy sets: a client's own Client-Cert is ignored.
    const spoof = await proxiedToken(nginx, WORKLOAD, { 'client-cert': byteSequence(leaf.certPem) });
    assert.equal(spoof.status, 401);
  });

  test('from a peer that is not a configured proxy the header is ignored and the attempt audited', async () => {
    const before = await auditCount(untrusted, 'mtls.untrusted_certificate_header');
    const auth = await proxiedToken(untrusted, WORKLOAD, { 'client-cert': byteSequence(leaf.certPem) });
    assert.equal(auth.status, 401);
    assert.equal(auth.body.error, 'invalid_client');
    // Nor can a spoofed header bind a token for a client that authenticates with a secret.
    const bind = await proxiedToken(untrusted, SERVICE.client_id, { 'client-cert': byteSequence(leaf.certPem) },
      basicAuth(SERVICE.client_id, SERVICE.client_secret));
    assert.equal(bind.status, 400);
    assert.equal(bind.body.error, 'invalid_grant');
    assert.equal(await auditCount(untrusted, 'mtls.untrusted_certificate_header'), before + 2);
    const { rows } = await untrusted.testDb.db.query<{ severity: string; rule: string; details: { headers: string[] } }>(
      "SELECT severity, rule, details FROM audit_events WHERE type = 'mtls.untrusted_certificate_header' ORDER BY seq DESC LIMIT 1",
    );
    assert.deepEqual(rows[0], { severity: 'warning', rule: 'trusted_proxies_only', details: { headers: ['client-cert'] } });
  });
});
