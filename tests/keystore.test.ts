import 'reflect-metadata'; // must precede @peculiar/x509
import assert from 'node:assert/strict';
import { X509Certificate, createHash, createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, unlink, writeFile } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import { test, type TestContext } from 'node:test';
import * as x509 from '@peculiar/x509';
import { SignJWT, exportPKCS8, importJWK, jwtVerify, type JWK } from 'jose';
import { KeyMaterialError } from '../src/keystore/files.ts';
import { ensureDevClientCertificate, issueTestCertificate, loadOrCreateTls, type TlsMaterial } from '../src/keystore/pki.ts';
import { assertNotDev, loadOrCreateSecrets } from '../src/keystore/secrets.ts';
import {
  loadOrCreateSigningKeys,
  nextKeyChange,
  providerJwks,
  rotateSigningKeys,
  signingKeysVersion,
  type SigningKeySet,
} from '../src/keystore/signing-keys.ts';

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'keystore-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function mode(file: string): Promise<number> {
  return (await stat(file)).mode & 0o777;
}

const seconds = (date: Date, s: number) => new Date(date.getTime() + s * 1000);

// ---- secrets ----

test('secrets: generated once in development with 0600 and 32-byte keys', async (t) => {
  const dir = await tempDir(t);
  const first = await loadOrCreateSecrets(dir, { allowGenerate: true });
  assert.equal(first.dev, true);
  assert.equal(await mode(path.join(dir, 'secrets.json')), 0o600);
  for (const key of [...first.cookieKeys, first.clientSecretKey, first.auditKey]) {
    assert.equal(Buffer.from(key, 'base64url').length, 32);
  }
  assert.deepEqual(await loadOrCreateSecrets(dir, { allowGenerate: true }), first);
  assert.deepEqual(await loadOrCreateSecrets(dir, { allowGenerate: false }), first);
});

test('concurrent first starts agree on one set of secrets and signing keys', async (t) => {
  const dir = await tempDir(t);
  const [a, b] = await Promise.all([
    loadOrCreateSecrets(dir, { allowGenerate: true }),
    loadOrCreateSecrets(dir, { allowGenerate: true }),
  ]);
  assert.deepEqual(a, b);
  const [c, d] = await Promise.all([
    loadOrCreateSigningKeys(dir, { allowGenerate: true }),
    loadOrCreateSigningKeys(dir, { allowGenerate: true }),
  ]);
  assert.deepEqual(c, d);
  await rotateSigningKeys(dir, { retireAfterSeconds: 60 });
  assert.deepEqual((await readdir(dir)).sort(), ['secrets.json', 'signing-keys.json'], 'no temp files left behind');
});

test('secrets: missing file without allowGenerate is a KeyMaterialError', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(loadOrCreateSecrets(dir, { allowGenerate: false }), KeyMaterialError);
});

test('secrets: validation names the bad field', async (t) => {
  const dir = await tempDir(t);
  const good = await loadOrCreateSecrets(dir, { allowGenerate: true });
  await writeFile(path.join(dir, 'secrets.json'), JSON.stringify({ ...good, auditKey: 'too-short' }));
  await assert.rejects(loadOrCreateSecrets(dir, { allowGenerate: true }), (err: Error) => {
    assert.ok(err instanceof KeyMaterialError);
    assert.match(err.message, /auditKey/);
    return true;
  });
});

test('assertNotDev refuses development material only', () => {
  assert.throws(() => assertNotDev('secrets', true), {
    name: 'KeyMaterialError',
    message: 'refusing to start in production with development secrets',
  });
  assert.doesNotThrow(() => assertNotDev('secrets', false));
});

// ---- signing keys ----

test('signing keys: generates ES256 + RS256 once, file 0600', async (t) => {
  const dir = await tempDir(t);
  const set = await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  assert.equal(set.dev, true);
  assert.deepEqual(set.keys.map((k) => k.alg).sort(), ['ES256', 'RS256']);
  for (const key of set.keys) {
    assert.equal(key.jwk.kid, key.kid);
    assert.equal(key.jwk.alg, key.alg);
    assert.equal(key.jwk.use, 'sig');
    assert.ok(key.jwk.d, 'private JWK');
  }
  assert.equal(await mode(path.join(dir, 'signing-keys.json')), 0o600);
  assert.deepEqual(await loadOrCreateSigningKeys(dir, { allowGenerate: false }), set);
});

test('signing keys: missing file without allowGenerate is a KeyMaterialError', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(loadOrCreateSigningKeys(dir, { allowGenerate: false }), KeyMaterialError);
  await assert.rejects(signingKeysVersion(dir), KeyMaterialError);
  await assert.rejects(rotateSigningKeys(dir, { retireAfterSeconds: 60 }), KeyMaterialError);
});

test('signing keys: validation names the bad field', async (t) => {
  const dir = await tempDir(t);
  const set = await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  const broken = structuredClone(set);
  broken.keys[1]!.jwk.kid = 'other';
  await writeFile(path.join(dir, 'signing-keys.json'), JSON.stringify(broken));
  await assert.rejects(loadOrCreateSigningKeys(dir, { allowGenerate: false }), {
    name: 'KeyMaterialError',
    message: /keys\.1\.jwk\.kid/,
  });
});

test('publish ahead: new keys are published at once, sign from activeFrom; the old ones sign until then and stay published after', async (t) => {
  const dir = await tempDir(t);
  const initial = await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  const t0 = new Date();
  const result = await rotateSigningKeys(dir, { publishAheadSeconds: 60, retireAfterSeconds: 600, now: t0 });
  assert.equal(result.activeFrom, seconds(t0, 60).toISOString());
  const set = await loadOrCreateSigningKeys(dir, { allowGenerate: false });
  const es256At = (at: Date) => providerJwks(set, at).keys.find((k) => k.alg === 'ES256')!.kid;
  const oldEs = initial.keys.find((k) => k.alg === 'ES256')!.kid;
  const newEs = set.keys.find((k) => k.alg === 'ES256' && result.added.includes(k.kid))!.kid;

  const before = providerJwks(set, seconds(t0, 59)).keys.map((k) => k.kid);
  assert.equal(es256At(seconds(t0, 59)), oldEs, 'the old key signs until activeFrom');
  assert.deepEqual([...before].sort(), [...initial.keys.map((k) => k.kid), ...result.added].sort(), 'the new keys are published already');
  assert.equal(es256At(seconds(t0, 60)), newEs, 'the new key signs from activeFrom');
  assert.ok(providerJwks(set, seconds(t0, 659)).keys.some((k) => k.kid === oldEs), 'the old key is published for retireAfterSeconds after activeFrom');
  assert.ok(!providerJwks(set, seconds(t0, 660)).keys.some((k) => k.kid === oldEs), 'then dropped');
  // The schedule, for servers to rebuild at the right moments.
  assert.equal(nextKeyChange(set, t0)?.toISOString(), seconds(t0, 60).toISOString());
  assert.equal(nextKeyChange(set, seconds(t0, 60))?.toISOString(), seconds(t0, 660).toISOString());
  assert.equal(nextKeyChange(set, seconds(t0, 660)), undefined);

  // Rotating again while keys are pending: the pending ones sign in between, nothing is ever without a signer.
  const again = await rotateSigningKeys(dir, { publishAheadSeconds: 60, retireAfterSeconds: 600, now: seconds(t0, 30) });
  assert.deepEqual([...again.retired].sort(), [...result.added].sort());
  const twice = await loadOrCreateSigningKeys(dir, { allowGenerate: false });
  const es256Twice = (at: Date) => providerJwks(twice, at).keys.find((k) => k.alg === 'ES256')!.kid;
  assert.equal(es256Twice(seconds(t0, 59)), oldEs);
  assert.equal(es256Twice(seconds(t0, 60)), newEs);
  assert.equal(es256Twice(seconds(t0, 90)), twice.keys.find((k) => k.alg === 'ES256' && again.added.includes(k.kid))!.kid);
  await assert.rejects(rotateSigningKeys(dir, { publishAheadSeconds: -1, retireAfterSeconds: 1 }), RangeError);
});

test('providerJwks: after rotation new keys sign first, old ones stay until retireAfter', async (t) => {
  const dir = await tempDir(t);
  const initial = await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  const t1 = new Date();
  const result = await rotateSigningKeys(dir, { retireAfterSeconds: 600, now: t1 });
  assert.deepEqual([...result.retired].sort(), initial.keys.map((k) => k.kid).sort());
  assert.deepEqual(result.removed, []);
  assert.equal(await mode(path.join(dir, 'signing-keys.json')), 0o600);

  const rotated = await loadOrCreateSigningKeys(dir, { allowGenerate: false });
  const kidOf = (set: SigningKeySet, alg: string) => set.keys.find((k) => k.alg === alg && !k.retireAfter)?.kid;
  const oldEs = kidOf(initial, 'ES256');
  const oldRs = kidOf(initial, 'RS256');

  const during = providerJwks(rotated, seconds(t1, 599)).keys;
  assert.equal(during.length, 4);
  assert.deepEqual(during.slice(0, 2).map((k) => k.kid).sort(), [...result.added].sort(), 'active keys first');
  assert.equal(during.find((k) => k.alg === 'ES256')?.kid, kidOf(rotated, 'ES256'));
  assert.equal(during.find((k) => k.alg === 'RS256')?.kid, kidOf(rotated, 'RS256'));
  assert.ok(during.some((k) => k.kid === oldEs) && during.some((k) => k.kid === oldRs), 'retired keys published');

  const after = providerJwks(rotated, seconds(t1, 600)).keys;
  assert.deepEqual(after.map((k) => k.kid).sort(), [...result.added].sort());
});

test('rotateSigningKeys twice: retires then removes, keeps the dev flag', async (t) => {
  const dir = await tempDir(t);
  const file = path.join(dir, 'signing-keys.json');
  const initial = await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  // Pretend the file was provisioned for production: rotation must not flip the flag.
  await writeFile(file, JSON.stringify({ ...initial, dev: false }), { mode: 0o600 });

  const t1 = new Date('2030-01-01T00:00:00Z');
  const first = await rotateSigningKeys(dir, { retireAfterSeconds: 300, now: t1 });
  const second = await rotateSigningKeys(dir, { retireAfterSeconds: 300, now: seconds(t1, 60) });
  assert.deepEqual([...second.retired].sort(), [...first.added].sort());
  assert.deepEqual(second.removed, []);
  let set = await loadOrCreateSigningKeys(dir, { allowGenerate: false });
  assert.equal(set.dev, false);
  assert.equal(set.keys.length, 6);
  assert.deepEqual(set.keys.slice(0, 2).map((k) => k.kid), second.added, 'new keys are prepended');

  const third = await rotateSigningKeys(dir, { retireAfterSeconds: 300, now: seconds(t1, 301) });
  assert.deepEqual([...third.removed].sort(), initial.keys.map((k) => k.kid).sort());
  set = await loadOrCreateSigningKeys(dir, { allowGenerate: false });
  assert.equal(set.keys.length, 6);
  assert.equal(set.dev, false);
  const jwks = providerJwks(set, seconds(t1, 302)).keys;
  assert.equal(jwks[0]?.kid, third.added[0]);
});

test('providerJwks: refuses a set without an active ES256 key', async (t) => {
  const dir = await tempDir(t);
  const set = await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  const now = new Date();
  const allRetired = { ...set, keys: set.keys.map((k) => ({ ...k, retireAfter: seconds(now, 60).toISOString() })) };
  assert.throws(() => providerJwks(allRetired, now), KeyMaterialError);
  const onlyRs = { ...set, keys: set.keys.filter((k) => k.alg === 'RS256') };
  assert.throws(() => providerJwks(onlyRs, now), KeyMaterialError);
});

test('signingKeysVersion changes on rotation only', async (t) => {
  const dir = await tempDir(t);
  await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  const v1 = await signingKeysVersion(dir);
  await loadOrCreateSigningKeys(dir, { allowGenerate: true });
  assert.equal(await signingKeysVersion(dir), v1);
  await rotateSigningKeys(dir, { retireAfterSeconds: 60 });
  const v2 = await signingKeysVersion(dir);
  assert.notEqual(v2, v1);
  await rotateSigningKeys(dir, { retireAfterSeconds: 60 });
  assert.notEqual(await signingKeysVersion(dir), v2);
});

test('jose signs with the first provider JWK and verifies with its public part', async (t) => {
  const dir = await tempDir(t);
  const [first] = providerJwks(await loadOrCreateSigningKeys(dir, { allowGenerate: true })).keys;
  assert.ok(first?.alg && first.kid);
  assert.equal(first.alg, 'ES256');
  const jwt = await new SignJWT({ sub: 'clinician-1' })
    .setProtectedHeader({ alg: first.alg, kid: first.kid })
    .setIssuedAt()
    .setExpirationTime('5m')
    .sign(await importJWK(first, first.alg));
  const publicJwk = createPublicKey(createPrivateKey({ key: first, format: 'jwk' })).export({ format: 'jwk' }) as JWK;
  assert.equal(publicJwk.d, undefined);
  const { payload, protectedHeader } = await jwtVerify(jwt, await importJWK(publicJwk, first.alg));
  assert.equal(payload.sub, 'clinician-1');
  assert.equal(protectedHeader.kid, first.kid);
});

// ---- TLS / dev PKI ----

test('dev TLS: generated files, modes, idempotent, hostnames and CA chain', async (t) => {
  const dir = await tempDir(t);
  const tls = await loadOrCreateTls(dir, { allowGenerate: true });
  assert.equal(tls.dev, true);
  const tlsDir = path.join(dir, 'tls');
  for (const name of ['ca.key', 'server.key']) assert.equal(await mode(path.join(tlsDir, name)), 0o600, name);
  for (const name of ['ca.pem', 'server.pem', 'client-ca.pem', 'DEV-ONLY']) await stat(path.join(tlsDir, name));
  assert.equal(tls.clientCaPem, tls.caPem);
  assert.match(tls.keyPem, /^-----BEGIN PRIVATE KEY-----/);

  const ca = new X509Certificate(tls.caPem);
  const server = new X509Certificate(tls.certPem);
  assert.equal(ca.ca, true);
  assert.match(ca.subject, /CN=Clinical AuthZ DEV CA - not for production/);
  assert.equal(server.ca, false);
  assert.equal(server.checkHost('localhost'), 'localhost');
  assert.equal(server.checkIP('127.0.0.1'), '127.0.0.1');
  assert.equal(server.checkIP('::1'), '::1');
  assert.ok(server.verify(ca.publicKey));
  assert.ok(server.checkPrivateKey(createPrivateKey(tls.keyPem)));
  assert.deepEqual(server.keyUsage, ['1.3.6.1.5.5.7.3.1']);

  assert.deepEqual(await loadOrCreateTls(dir, { allowGenerate: true }), tls);
  assert.deepEqual(await loadOrCreateTls(dir, { allowGenerate: false }), tls, 'production read of the same files');
});

test('dev TLS: reissues the server certificate for new hostnames, keeping the CA', async (t) => {
  const dir = await tempDir(t);
  const before = await loadOrCreateTls(dir, { allowGenerate: true });
  const after = await loadOrCreateTls(dir, { allowGenerate: true, hostnames: ['authz.dev.local', '10.0.0.5'] });
  assert.equal(after.caPem, before.caPem);
  assert.notEqual(after.certPem, before.certPem);
  const server = new X509Certificate(after.certPem);
  assert.equal(server.checkHost('authz.dev.local'), 'authz.dev.local');
  assert.equal(server.checkIP('10.0.0.5'), '10.0.0.5');
  assert.equal(server.checkHost('localhost'), undefined);
});

test('TLS: production read requires the files and flags dev material', async (t) => {
  const dir = await tempDir(t);
  await assert.rejects(loadOrCreateTls(dir, { allowGenerate: false }), {
    name: 'KeyMaterialError',
    message: /server\.pem/,
  });
  await loadOrCreateTls(dir, { allowGenerate: true });
  // Without the marker, the dev CA's name still gives it away.
  await unlink(path.join(dir, 'tls', 'DEV-ONLY'));
  assert.equal((await loadOrCreateTls(dir, { allowGenerate: false })).dev, true);
  await unlink(path.join(dir, 'tls', 'server.key'));
  await assert.rejects(loadOrCreateTls(dir, { allowGenerate: true }), {
    name: 'KeyMaterialError',
    message: /server\.key/,
  }, 'material without the DEV-ONLY marker is never regenerated');
});

test('TLS: operator material is read as is, never regenerated, and not dev', async (t) => {
  const dir = await tempDir(t);
  const tlsDir = path.join(dir, 'tls');
  const ca = await createOperatorCa();
  const leaf = await issueTestCertificate({
    ...ca,
    commonName: 'authz.hospital.example',
    dnsNames: ['authz.hospital.example'],
  });
  await mkdir(tlsDir);
  await writeFile(path.join(tlsDir, 'server.pem'), leaf.certPem);
  await writeFile(path.join(tlsDir, 'server.key'), leaf.keyPem, { mode: 0o600 });
  await writeFile(path.join(tlsDir, 'client-ca.pem'), ca.caCertPem);

  const loaded = await loadOrCreateTls(dir, { allowGenerate: true });
  assert.equal(loaded.dev, false);
  assert.equal(loaded.caPem, loaded.clientCaPem, 'ca.pem falls back to client-ca.pem');
  assert.equal(loaded.certPem, leaf.certPem);
  await assert.rejects(stat(path.join(tlsDir, 'DEV-ONLY')), { code: 'ENOENT' });

  await writeFile(path.join(tlsDir, 'ca.pem'), ca.caCertPem);
  await assert.rejects(ensureDevClientCertificate(dir, 'ehr-app'), KeyMaterialError);

  const mismatched = await issueTestCertificate({ ...ca, commonName: 'other' });
  await writeFile(path.join(tlsDir, 'server.key'), mismatched.keyPem, { mode: 0o600 });
  await assert.rejects(loadOrCreateTls(dir, { allowGenerate: false }), {
    name: 'KeyMaterialError',
    message: /server\.key does not match/,
  });
});

/** A non-dev RSA root, as a hospital PKI might provide (also exercises RSA CA signing). */
async function createOperatorCa(): Promise<{ caCertPem: string; caKeyPem: string }> {
  const alg = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256', publicExponent: new Uint8Array([1, 0, 1]), modulusLength: 2048 };
  const keys = await globalThis.crypto.subtle.generateKey(alg, true, ['sign', 'verify']);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=Hospital Root CA, O=Example Hospital',
    keys,
    signingAlgorithm: alg,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    ],
  });
  return { caCertPem: cert.toString('pem'), caKeyPem: await exportPKCS8(keys.privateKey) };
}

test('dev client certificate: idempotent, 0600 key, clientAuth, thumbprint is x5t#S256', async (t) => {
  const dir = await tempDir(t);
  const issued = await ensureDevClientCertificate(dir, 'ehr-app');
  assert.equal(await mode(issued.keyPath), 0o600);
  assert.equal(issued.subjectDn, 'CN=ehr-app,O=Clinical AuthZ Dev');
  const again = await ensureDevClientCertificate(dir, 'ehr-app');
  assert.deepEqual(again, issued);

  const tls = await loadOrCreateTls(dir, { allowGenerate: false });
  const cert = new X509Certificate(issued.certPem);
  assert.ok(cert.verify(new X509Certificate(tls.caPem).publicKey));
  assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.2']);
  assert.equal(issued.sha256Thumbprint, createHash('sha256').update(cert.raw).digest('base64url'));

  await assert.rejects(ensureDevClientCertificate(dir, '../etc'), RangeError);
  await assert.rejects(ensureDevClientCertificate(dir, 'Upper'), RangeError);
});

interface PeerReport {
  authorized: boolean;
  authorizationError: string | null;
  cn: string | null;
}

/** Serves one request on 127.0.0.1 over mTLS and reports what the server saw of the client certificate. */
async function handshake(tls: TlsMaterial, client: { certPem: string; keyPem: string }): Promise<PeerReport> {
  const server = https.createServer(
    { cert: tls.certPem, key: tls.keyPem, ca: tls.clientCaPem, requestCert: true, rejectUnauthorized: false },
    (req, res) => {
      const socket = req.socket as TLSSocket;
      const peer = socket.getPeerCertificate();
      const report: PeerReport = {
        authorized: socket.authorized,
        authorizationError: socket.authorizationError ? String(socket.authorizationError) : null,
        cn: typeof peer.subject?.CN === 'string' ? peer.subject.CN : null,
      };
      res.end(JSON.stringify(report));
    },
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const { port } = server.address() as AddressInfo;
    return await new Promise<PeerReport>((resolve, reject) => {
      const req = https.request(
        { host: '127.0.0.1', port, path: '/', ca: tls.caPem, cert: client.certPem, key: client.keyPem, agent: false },
        (res) => {
          let body = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => (body += chunk));
          res.on('end', () => resolve(JSON.parse(body) as PeerReport));
        },
      );
      req.on('error', reject);
      req.end();
    });
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

test('mTLS handshake: dev server cert + dev client cert is authorized', async (t) => {
  const dir = await tempDir(t);
  const tls = await loadOrCreateTls(dir, { allowGenerate: true });
  const client = await ensureDevClientCertificate(dir, 'ehr-app');
  const report = await handshake(tls, client);
  assert.deepEqual(report, { authorized: true, authorizationError: null, cn: 'ehr-app' });
});

test('mTLS handshake: expired and not-yet-valid client certs are not authorized', async (t) => {
  const dir = await tempDir(t);
  const tls = await loadOrCreateTls(dir, { allowGenerate: true });
  const ca = { caCertPem: tls.caPem, caKeyPem: await readFile(path.join(dir, 'tls', 'ca.key'), 'utf8') };
  const now = Date.now();
  const expired = await issueTestCertificate({
    ...ca,
    commonName: 'expired-app',
    notBefore: new Date(now - 2 * 86_400_000),
    notAfter: new Date(now - 86_400_000),
  });
  const future = await issueTestCertificate({
    ...ca,
    commonName: 'future-app',
    notBefore: new Date(now + 86_400_000),
    notAfter: new Date(now + 2 * 86_400_000),
  });
  assert.deepEqual(await handshake(tls, expired), {
    authorized: false,
    authorizationError: 'CERT_HAS_EXPIRED',
    cn: 'expired-app',
  });
  assert.deepEqual(await handshake(tls, future), {
    authorized: false,
    authorizationError: 'CERT_NOT_YET_VALID',
    cn: 'future-app',
  });
});
