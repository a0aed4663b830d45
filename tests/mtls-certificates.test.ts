import 'reflect-metadata'; // must precede @peculiar/x509
import assert from 'node:assert/strict';
import { X509Certificate, createHash, type JsonWebKey, type webcrypto } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test, type TestContext } from 'node:test';
import * as x509 from '@peculiar/x509';
import { exportPKCS8 } from 'jose';
import Koa from 'koa';
import { Agent, request } from 'undici';

import { currentRequestContext, runWithRequestContext } from '../src/audit/request-context.ts';
import { isTrustedPeer, proxyList } from '../src/http/trusted-proxies.ts';
import { ensureDevClientCertificate, issueTestCertificate } from '../src/keystore/pki.ts';
import {
  CertificateVerdicts,
  MalformedCertificateHeader,
  authorizeCertificate,
  certificateFromDer,
  certificateProblem,
  clientCertificates,
  isValidSubjectDn,
  loadTrustAnchors,
  matchesJwks,
  parseNginxEscapedPem,
  parseRfc9440,
  presentedCertificate,
  subjectMatches,
  verifyChain,
  x5tS256,
  type ClientCertificateOptions,
  type PresentedCertificate,
} from '../src/mtls/index.ts';

x509.cryptoProvider.set(globalThis.crypto);

const DAY = 86_400_000;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
type CryptoKey = webcrypto.CryptoKey;

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const EKU_CLIENT = x509.ExtendedKeyUsage.clientAuth;
const EKU_SERVER = x509.ExtendedKeyUsage.serverAuth;

// ---- a throwaway PKI ----

interface Ca {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
  pem: string;
  keyPem: string;
}

interface Leaf {
  pem: string;
  keyPem: string;
  node: X509Certificate;
}

async function keys(): Promise<CryptoKeyPair> {
  return globalThis.crypto.subtle.generateKey(EC, true, ['sign', 'verify']);
}

async function caExtensions(publicKey: CryptoKey, pathLength?: number): Promise<x509.Extension[]> {
  return [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(publicKey),
  ];
}

async function asCa(cert: x509.X509Certificate, pair: CryptoKeyPair): Promise<Ca> {
  return { cert, keys: pair, pem: cert.toString('pem'), keyPem: await exportPKCS8(pair.privateKey) };
}

async function makeRoot(name: string, opts: { pathLength?: number } = {}): Promise<Ca> {
  const pair = await keys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${name}`,
    keys: pair,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 365 * DAY),
    signingAlgorithm: SIGN,
    extensions: await caExtensions(pair.publicKey, opts.pathLength),
  });
  return asCa(cert, pair);
}

interface IssueOptions {
  subject: string | x509.JsonName;
  ca?: boolean;
  pathLength?: number;
  eku?: string[] | null;
  keyUsage?: number | null;
  san?: x509.JsonGeneralNames;
  notBefore?: Date;
  notAfter?: Date;
  /** Sign with this key instead of the issuer's (forged signature). */
  signingKey?: CryptoKey;
}

async function issue(issuer: Ca, opts: IssueOptions): Promise<{ cert: x509.X509Certificate; keys: CryptoKeyPair }> {
  const pair = await keys();
  const extensions: x509.Extension[] = opts.ca
    ? await caExtensions(pair.publicKey, opts.pathLength)
    : [new x509.BasicConstraintsExtension(false, undefined, true)];
  if (!opts.ca && opts.keyUsage !== null) {
    extensions.push(new x509.KeyUsagesExtension(opts.keyUsage ?? x509.KeyUsageFlags.digitalSignature, true));
  }
  if (!opts.ca && opts.eku !== null) extensions.push(new x509.ExtendedKeyUsageExtension(opts.eku ?? [EKU_CLIENT]));
  if (opts.san) extensions.push(new x509.SubjectAlternativeNameExtension(opts.san));
  const ski = issuer.cert.getExtension(x509.SubjectKeyIdentifierExtension);
  if (ski) extensions.push(new x509.AuthorityKeyIdentifierExtension(ski.keyId));
  const cert = await x509.X509CertificateGenerator.create({
    subject: opts.subject,
    issuer: issuer.cert.subjectName,
    publicKey: pair.publicKey,
    signingKey: opts.signingKey ?? issuer.keys.privateKey,
    signingAlgorithm: SIGN,
    notBefore: opts.notBefore ?? new Date(Date.now() - 60_000),
    notAfter: opts.notAfter ?? new Date(Date.now() + 30 * DAY),
    extensions,
  });
  return { cert, keys: pair };
}

async function makeIntermediate(issuer: Ca, name: string, opts: Partial<IssueOptions> = {}): Promise<Ca> {
  const { cert, keys: pair } = await issue(issuer, { ca: true, ...opts, subject: `CN=${name}` });
  return asCa(cert, pair);
}

async function makeLeaf(issuer: Ca, opts: IssueOptions): Promise<Leaf> {
  const { cert, keys: pair } = await issue(issuer, opts);
  const pem = cert.toString('pem');
  return { pem, keyPem: await exportPKCS8(pair.privateKey), node: new X509Certificate(pem) };
}

/** A leaf issued by the project's own helper (pki.ts), as the dev PKI does it. */
async function pkiLeaf(ca: Ca, opts: Partial<Parameters<typeof issueTestCertificate>[0]> = {}): Promise<Leaf> {
  const { certPem, keyPem } = await issueTestCertificate({ caCertPem: ca.pem, caKeyPem: ca.keyPem, commonName: 'ehr-app', ...opts });
  return { pem: certPem, keyPem, node: new X509Certificate(certPem) };
}

function node(cert: x509.X509Certificate | Ca): X509Certificate {
  return new X509Certificate('pem' in cert ? cert.pem : cert.toString('pem'));
}

function presentedOf(leaf: Leaf, chain: Array<Ca | Leaf> = []): Pick<PresentedCertificate, 'leaf' | 'chain'> {
  return { leaf: leaf.node, chain: chain.map((c) => ('node' in c ? c.node : node(c))) };
}

const sf = (cert: { raw: Buffer } | Buffer) => `:${(Buffer.isBuffer(cert) ? cert : cert.raw).toString('base64')}:`;

let pkiPromise: Promise<{ root: Ca; other: Ca }> | undefined;
function pki() {
  pkiPromise ??= (async () => ({ root: await makeRoot('Test Root CA'), other: await makeRoot('Other Root CA') }))();
  return pkiPromise;
}

// ---- thumbprint ----

test('x5tS256 is base64url(SHA-256(DER)) without padding', async () => {
  assert.equal(x5tS256(Buffer.from('abc')), 'ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0');
  const { root } = await pki();
  const leaf = await pkiLeaf(root);
  assert.equal(x5tS256(leaf.node.raw), createHash('sha256').update(leaf.node.raw).digest('base64url'));
});

// ---- chain validation ----

test('verifyChain: a leaf issued by a bundle CA is accepted; the bundle may hold several CAs', async () => {
  const { root, other } = await pki();
  const leaf = await pkiLeaf(root);
  assert.deepEqual(verifyChain(presentedOf(leaf), loadTrustAnchors(root.pem)), { ok: true });
  assert.deepEqual(verifyChain(presentedOf(leaf), loadTrustAnchors(`${other.pem}\n${root.pem}`)), { ok: true });
  assert.equal(loadTrustAnchors(`${other.pem}\n${root.pem}`).certificates.length, 2);
  assert.throws(() => loadTrustAnchors('not a bundle'));
});

test('verifyChain: expired and not-yet-valid leaves, and the `now` argument', async () => {
  const { root } = await pki();
  const anchors = loadTrustAnchors(root.pem);
  const now = Date.now();
  const expired = await pkiLeaf(root, { notBefore: new Date(now - 2 * DAY), notAfter: new Date(now - DAY) });
  const future = await pkiLeaf(root, { notBefore: new Date(now + DAY), notAfter: new Date(now + 2 * DAY) });
  assert.deepEqual(verifyChain(presentedOf(expired), anchors), { ok: false, reason: 'expired' });
  assert.deepEqual(verifyChain(presentedOf(future), anchors), { ok: false, reason: 'not_yet_valid' });
  const valid = await pkiLeaf(root);
  assert.deepEqual(verifyChain(presentedOf(valid), anchors, new Date(now + 400 * DAY)), { ok: false, reason: 'expired' });
  assert.deepEqual(verifyChain(presentedOf(valid), anchors, new Date(now - 2 * DAY)), { ok: false, reason: 'not_yet_valid' });
});

test('verifyChain: a leaf of another CA is untrusted_issuer; a forged signature is bad_signature', async () => {
  const { root, other } = await pki();
  const anchors = loadTrustAnchors(root.pem);
  assert.deepEqual(verifyChain(presentedOf(await pkiLeaf(other)), anchors), { ok: false, reason: 'untrusted_issuer' });
  // Issuer name and authority key id of the real CA, signed by another key.
  const forged = await makeLeaf(root, { subject: 'CN=forged', signingKey: other.keys.privateKey });
  assert.deepEqual(verifyChain(presentedOf(forged), anchors), { ok: false, reason: 'bad_signature' });
  // Sending the other CA along in the chain does not make it an anchor.
  assert.deepEqual(verifyChain(presentedOf(await pkiLeaf(other), [other]), anchors), { ok: false, reason: 'untrusted_issuer' });
});

test('verifyChain: intermediate sent in the chain or present in the bundle; missing is untrusted_issuer', async () => {
  const root = await makeRoot('Hospital Root');
  const intermediate = await makeIntermediate(root, 'Hospital Workloads CA');
  const leaf = await pkiLeaf(intermediate, { commonName: 'orchestrator' });
  const rootOnly = loadTrustAnchors(root.pem);
  assert.deepEqual(verifyChain(presentedOf(leaf, [intermediate]), rootOnly), { ok: true });
  assert.deepEqual(verifyChain(presentedOf(leaf), rootOnly), { ok: false, reason: 'untrusted_issuer' });
  assert.deepEqual(verifyChain(presentedOf(leaf), loadTrustAnchors(intermediate.pem)), { ok: true });
  assert.deepEqual(verifyChain(presentedOf(leaf), loadTrustAnchors(`${root.pem}${intermediate.pem}`)), { ok: true });
  // Junk and duplicates in the chain are harmless.
  const { other } = await pki();
  assert.deepEqual(verifyChain(presentedOf(leaf, [other, intermediate, intermediate, root]), rootOnly), { ok: true });
});

test('verifyChain: intermediates must be valid CAs within the root pathLenConstraint', async () => {
  const root = await makeRoot('Root');
  const anchors = loadTrustAnchors(root.pem);

  const expiredCa = await makeIntermediate(root, 'Expired CA', { notBefore: new Date(Date.now() - 3 * DAY), notAfter: new Date(Date.now() - DAY) });
  const leafOfExpired = await makeLeaf(expiredCa, { subject: 'CN=a', notBefore: new Date(Date.now() - 2 * DAY) });
  assert.deepEqual(verifyChain(presentedOf(leafOfExpired, [expiredCa]), anchors), { ok: false, reason: 'expired' });

  // A leaf certificate (cA false, no keyUsage restriction) used to sign another certificate.
  const notCaIssued = await issue(root, { subject: 'CN=not a ca', keyUsage: null, eku: null });
  const notCa = await asCa(notCaIssued.cert, notCaIssued.keys);
  const underNotCa = await makeLeaf(notCa, { subject: 'CN=b' });
  assert.deepEqual(verifyChain(presentedOf(underNotCa, [notCa]), anchors), { ok: false, reason: 'not_a_ca' });

  const strictRoot = await makeRoot('Strict Root', { pathLength: 0 });
  const sub = await makeIntermediate(strictRoot, 'Sub CA');
  const leafOfSub = await makeLeaf(sub, { subject: 'CN=c' });
  assert.deepEqual(verifyChain(presentedOf(leafOfSub, [sub]), loadTrustAnchors(strictRoot.pem)), { ok: false, reason: 'not_a_ca' });
  // A leaf issued directly by that root is fine.
  assert.deepEqual(verifyChain(presentedOf(await makeLeaf(strictRoot, { subject: 'CN=d' })), loadTrustAnchors(strictRoot.pem)), { ok: true });
});

test('verifyChain: paths are bounded to 5 certificates', async () => {
  const root = await makeRoot('Deep Root');
  const cas = [root];
  for (let i = 1; i <= 4; i += 1) cas.push(await makeIntermediate(cas[cas.length - 1]!, `Level ${i}`));
  const anchors = loadTrustAnchors(root.pem);
  const leaf3 = await makeLeaf(cas[3]!, { subject: 'CN=three below' }); // leaf + 3 intermediates + root = 5
  assert.deepEqual(verifyChain(presentedOf(leaf3, cas.slice(1, 4).reverse()), anchors), { ok: true });
  const leaf4 = await makeLeaf(cas[4]!, { subject: 'CN=four below' }); // 6
  assert.deepEqual(verifyChain(presentedOf(leaf4, cas.slice(1).reverse()), anchors), { ok: false, reason: 'untrusted_issuer' });
});

test('verifyChain: the leaf must be for client authentication', async () => {
  const { root } = await pki();
  const anchors = loadTrustAnchors(root.pem);
  const serverOnly = await pkiLeaf(root, { extendedKeyUsage: ['serverAuth'], dnsNames: ['app.example'] });
  assert.deepEqual(serverOnly.node.keyUsage, ['1.3.6.1.5.5.7.3.1']);
  assert.deepEqual(verifyChain(presentedOf(serverOnly), anchors), { ok: false, reason: 'not_client_auth' });
  const both = await pkiLeaf(root, { extendedKeyUsage: ['serverAuth', 'clientAuth'] });
  assert.deepEqual(verifyChain(presentedOf(both), anchors), { ok: true });
  const noEku = await makeLeaf(root, { subject: 'CN=no eku', eku: null });
  assert.equal(noEku.node.keyUsage, undefined, 'node reports no EKU extension as undefined');
  assert.deepEqual(verifyChain(presentedOf(noEku), anchors), { ok: true });
  const noDigitalSignature = await makeLeaf(root, { subject: 'CN=enc only', keyUsage: x509.KeyUsageFlags.keyEncipherment });
  assert.deepEqual(verifyChain(presentedOf(noDigitalSignature), anchors), { ok: false, reason: 'not_client_auth' });
  const caAsLeaf = await makeIntermediate(root, 'A CA presented as client');
  assert.deepEqual(verifyChain({ leaf: node(caAsLeaf), chain: [] }, anchors), { ok: false, reason: 'not_client_auth' });
  const serverEku = await makeLeaf(root, { subject: 'CN=server', eku: [EKU_SERVER] });
  assert.deepEqual(verifyChain(presentedOf(serverEku), anchors), { ok: false, reason: 'not_client_auth' });
});

// ---- subject matching ----

test('subject DN: RFC 4514 compared semantically, RDN order significant', async () => {
  const { root } = await pki();
  const leaf = await makeLeaf(root, {
    subject: [{ C: ['US'] }, { O: ['Example Hospital'] }, { OU: ['Clinical AI'] }, { CN: ['Orchestrator'] }],
  });
  assert.equal(leaf.node.subject, 'C=US\nO=Example Hospital\nOU=Clinical AI\nCN=Orchestrator');
  const dn = 'tls_client_auth_subject_dn' as const;
  assert.equal(subjectMatches(leaf.node, dn, 'CN=Orchestrator,OU=Clinical AI,O=Example Hospital,C=US'), true);
  assert.equal(subjectMatches(leaf.node, dn, 'cn=orchestrator, ou=CLINICAL   AI,  o= example hospital ,c=us'), true);
  assert.equal(subjectMatches(leaf.node, dn, '2.5.4.3=Orchestrator,OU=Clinical AI,organizationName=Example Hospital,C=US'), true);
  assert.equal(subjectMatches(leaf.node, dn, 'CN=Orchestrator,OU=Clinical\\20AI,O=Example Hospital,C=US'), true);
  // Order, content and format mistakes do not match.
  assert.equal(subjectMatches(leaf.node, dn, 'C=US,O=Example Hospital,OU=Clinical AI,CN=Orchestrator'), false);
  assert.equal(subjectMatches(leaf.node, dn, 'OU=Clinical AI,CN=Orchestrator,O=Example Hospital,C=US'), false);
  assert.equal(subjectMatches(leaf.node, dn, leaf.node.subject), false, "node's newline form is not RFC 4514");
  assert.equal(subjectMatches(leaf.node, dn, 'CN=Orchestrator,OU=Clinical AI,O=Example Hospital'), false);
  assert.equal(subjectMatches(leaf.node, dn, 'CN=Orchestrator,OU=Clinical AI,O=Example Hospital,C=US,DC=org'), false);
  assert.equal(subjectMatches(leaf.node, dn, 'CN=Orchestrator2,OU=Clinical AI,O=Example Hospital,C=US'), false);
  assert.equal(subjectMatches(leaf.node, dn, 'L=Orchestrator,OU=Clinical AI,O=Example Hospital,C=US'), false);
  assert.equal(subjectMatches(leaf.node, dn, ''), false);
});

test('subject DN: escapes, multi-valued RDNs and invalid strings', async () => {
  const { root } = await pki();
  const leaf = await makeLeaf(root, {
    subject: [{ O: ['Smith, Jones & Co'] }, { CN: ['bot'], OU: ['ai'] }, { CN: ['café'] }],
  });
  const dn = 'tls_client_auth_subject_dn' as const;
  assert.equal(subjectMatches(leaf.node, dn, 'CN=café,CN=bot+OU=ai,O=Smith\\, Jones & Co'), true);
  assert.equal(subjectMatches(leaf.node, dn, 'CN=caf\\C3\\A9,OU=ai+CN=bot,O=Smith\\2C Jones & Co'), true);
  assert.equal(subjectMatches(leaf.node, dn, 'CN=café,CN=bot,OU=ai,O=Smith\\, Jones & Co'), false, '+ is not ,');
  assert.equal(subjectMatches(leaf.node, dn, 'CN=café,CN=bot+OU=ai,O=Smith, Jones & Co'), false);
  for (const bad of ['CN=a,,O=b', 'junk CN=a', 'FOO=bar', 'CN=a\\zz', 'CN=a"b', 'CN=a;O=b', 'CN=a\\0aO=b', 'O=b\nCN=a', 'CN=a,', '2.05.4.3=a', 'CN=\\C3']) {
    assert.equal(isValidSubjectDn(bad), false, bad);
  }
  assert.equal(isValidSubjectDn('CN=a, O=b'), true);
});

test('subject DN: matches the RFC 4514 string pki.ts reports for dev client certificates', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mtls-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const issued = await ensureDevClientCertificate(dir, 'ehr-app');
  const cert = new X509Certificate(issued.certPem);
  assert.equal(subjectMatches(cert, 'tls_client_auth_subject_dn', issued.subjectDn), true);
  assert.equal(x5tS256(cert.raw), issued.sha256Thumbprint);
});

test('SANs: dns case-insensitive, ip canonicalised, uri exact, email domain case-insensitive', async () => {
  const { root } = await pki();
  const leaf = await makeLeaf(root, {
    subject: 'CN=orchestrator',
    san: [
      { type: 'dns', value: 'Orchestrator.Example.org' },
      { type: 'url', value: 'spiffe://example.org/ns/ai/sa/orchestrator' },
      { type: 'ip', value: '10.0.0.5' },
      { type: 'ip', value: '2001:db8::1' },
      { type: 'email', value: 'Bot@Example.ORG' },
    ],
  });
  const c = leaf.node;
  assert.equal(subjectMatches(c, 'tls_client_auth_san_dns', 'orchestrator.example.org'), true);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_dns', 'other.example.org'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_dns', 'example.org'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_uri', 'spiffe://example.org/ns/ai/sa/orchestrator'), true);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_uri', 'spiffe://example.org/ns/ai/sa/Orchestrator'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_uri', 'spiffe://example.org/ns/ai/sa'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_ip', '10.0.0.5'), true);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_ip', '2001:0DB8:0:0:0:0:0:1'), true);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_ip', '2001:db8::2'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_ip', '10.0.0.6'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_ip', '::ffff:10.0.0.5'), false, 'a mapped address is another SAN');
  assert.equal(subjectMatches(c, 'tls_client_auth_san_ip', 'not-an-ip'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_email', 'Bot@example.org'), true);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_email', 'bot@example.org'), false, 'local part is exact');
  // Values of one SAN type never match another type.
  assert.equal(subjectMatches(c, 'tls_client_auth_san_dns', '10.0.0.5'), false);
  assert.equal(subjectMatches(c, 'tls_client_auth_san_uri', 'Bot@Example.ORG'), false);
  // No SAN extension at all.
  const plain = await pkiLeaf(root);
  assert.equal(subjectMatches(plain.node, 'tls_client_auth_san_dns', 'ehr-app'), false);
  const serverStyle = await pkiLeaf(root, { dnsNames: ['svc.example'], ipAddresses: ['::1'] });
  assert.equal(subjectMatches(serverStyle.node, 'tls_client_auth_san_ip', '0:0:0:0:0:0:0:1'), true);
});

// ---- self-signed ----

test('matchesJwks: the certificate key is a registered key; x5c, when present, is the certificate', async () => {
  const pair = await keys();
  const selfSigned = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=self-signed-bot',
    keys: pair,
    signingAlgorithm: SIGN,
    extensions: [new x509.BasicConstraintsExtension(false)],
  });
  const cert = node(selfSigned);
  const jwk = cert.publicKey.export({ format: 'jwk' });
  const otherJwk = (await pkiLeaf((await pki()).root)).node.publicKey.export({ format: 'jwk' });
  assert.equal(matchesJwks(cert, { keys: [otherJwk, jwk] }), true);
  assert.equal(matchesJwks(cert, { keys: [otherJwk] }), false);
  assert.equal(matchesJwks(cert, { keys: [] }), false);
  assert.equal(matchesJwks(cert, undefined), false);
  assert.equal(matchesJwks(cert, { keys: [{ ...jwk, x5c: [cert.raw.toString('base64')] }] }), true);
  const otherCert = await x509.X509CertificateGenerator.createSelfSigned({ name: 'CN=same key other cert', keys: pair, signingAlgorithm: SIGN });
  assert.equal(matchesJwks(cert, { keys: [{ ...jwk, x5c: [Buffer.from(otherCert.rawData).toString('base64')] }] }), false);
  assert.equal(matchesJwks(cert, { keys: [{ ...jwk, use: 'enc' }] }), false);
  assert.equal(matchesJwks(cert, { keys: [{ kty: 'oct', k: 'AAAA' } as JsonWebKey, { kty: 'EC', crv: 'P-256', x: 'bad', y: 'bad' }] }), false);
});

// ---- header formats ----

test('RFC 9440 headers: byte sequences, chain lists, and malformed values', async () => {
  const root = await makeRoot('Proxy Root');
  const intermediate = await makeIntermediate(root, 'Proxy Intermediate');
  const leaf = await pkiLeaf(intermediate);
  const parsed = parseRfc9440(sf(leaf.node));
  assert.ok(parsed.leaf.raw.equals(leaf.node.raw));
  assert.deepEqual(parsed.chain, []);

  const withChain = parseRfc9440(`  ${sf(leaf.node)}  `, `${sf(node(intermediate))}, ${sf(node(root))}`);
  assert.deepEqual(withChain.chain.map((c) => c.subject), ['CN=Proxy Intermediate', 'CN=Proxy Root']);
  assert.deepEqual(verifyChain(withChain, loadTrustAnchors(root.pem)), { ok: true });

  // Parameters are allowed by RFC 8941 and ignored; missing padding is tolerated.
  assert.ok(parseRfc9440(`${sf(leaf.node)};hint=1`).leaf.raw.equals(leaf.node.raw));
  const unpadded = `:${leaf.node.raw.toString('base64').replace(/=+$/, '')}:`;
  assert.ok(parseRfc9440(unpadded).leaf.raw.equals(leaf.node.raw));

  const b64 = leaf.node.raw.toString('base64');
  const malformed = [
    b64, // missing colons
    `:${b64}`,
    `${b64}:`,
    `:${b64.slice(0, 40)}$${b64.slice(41)}:`, // bad base64 character
    ...(/[+/]/.test(b64) ? [`:${b64.replace(/\+/g, '-').replace(/\//g, '_')}:`] : []), // base64url is not sf-binary
    `:${Buffer.from('not a certificate').toString('base64')}:`,
    `:${Buffer.concat([leaf.node.raw, Buffer.from([0])]).toString('base64')}:`, // trailing data
    `${sf(leaf.node)}, ${sf(leaf.node)}`, // two Client-Cert lines
    '::',
    `"${b64}"`,
  ];
  for (const value of malformed) {
    assert.throws(() => parseRfc9440(value), MalformedCertificateHeader, value.slice(0, 30));
  }
  assert.throws(() => parseRfc9440(sf(leaf.node), `${sf(node(intermediate))},`), MalformedCertificateHeader);
  assert.throws(() => parseRfc9440(sf(leaf.node), `${sf(node(intermediate))} ${sf(node(root))}`), MalformedCertificateHeader);
  assert.throws(() => parseRfc9440(sf(leaf.node), Array(9).fill(sf(node(root))).join(', ')), MalformedCertificateHeader);
});

test('nginx $ssl_client_escaped_cert: URL-encoded PEM', async () => {
  const root = await makeRoot('Nginx Root');
  const intermediate = await makeIntermediate(root, 'Nginx Intermediate');
  const leaf = await pkiLeaf(intermediate);
  const parsed = parseNginxEscapedPem('x-ssl-client-cert', encodeURIComponent(leaf.pem));
  assert.ok(parsed.leaf.raw.equals(leaf.node.raw));
  assert.deepEqual(parsed.chain, []);
  const bundle = parseNginxEscapedPem('x-ssl-client-cert', encodeURIComponent(`${leaf.pem}\n${intermediate.pem}`));
  assert.deepEqual(bundle.chain.map((c) => c.subject), ['CN=Nginx Intermediate']);
  for (const bad of ['%E0%A4%A', encodeURIComponent('-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'), 'hello', sf(leaf.node)]) {
    assert.throws(() => parseNginxEscapedPem('x-ssl-client-cert', bad), MalformedCertificateHeader, bad.slice(0, 30));
  }
});

test('isTrustedPeer: IPv4-mapped addresses are normalised, non-addresses are not trusted', () => {
  const list = proxyList(['127.0.0.1', '10.1.0.0/16']);
  assert.equal(isTrustedPeer(list, '127.0.0.1'), true);
  assert.equal(isTrustedPeer(list, '::ffff:127.0.0.1'), true);
  assert.equal(isTrustedPeer(list, '10.1.200.3'), true);
  assert.equal(isTrustedPeer(list, '10.2.0.1'), false);
  assert.equal(isTrustedPeer(list, ''), false);
  assert.equal(isTrustedPeer(list, 'localhost'), false);
});

// ---- the middleware over real connections ----

interface Seen {
  certificate: { source: string; thumbprint: string; subject: string; chain: string[]; pemMatches: boolean; tlsAuthorized?: boolean } | null;
  problem: string | null;
  auditThumbprint: string | null;
  remainingHeaders: string[];
}

interface Calls {
  untrusted: string[][];
  malformed: string[][];
}

function app(options: ClientCertificateOptions, calls: Calls): Koa {
  const koa = new Koa();
  koa.use(async (ctx, next) => {
    await runWithRequestContext({ requestId: 'test', sourceIp: undefined }, next);
  });
  koa.use(
    clientCertificates({
      ...options,
      onUntrustedHeader: (_ctx, names) => {
        calls.untrusted.push(names);
      },
      onMalformedHeader: (_ctx, names) => {
        calls.malformed.push(names);
      },
    }),
  );
  koa.use((ctx) => {
    const found = presentedCertificate(ctx.req);
    const seen: Seen = {
      certificate: found
        ? {
            source: found.source,
            thumbprint: found.thumbprint,
            subject: found.leaf.subject,
            chain: found.chain.map((c) => c.subject),
            pemMatches: new X509Certificate(found.pem).raw.equals(found.der) && found.der.equals(found.leaf.raw),
            ...(found.tlsAuthorized === undefined ? {} : { tlsAuthorized: found.tlsAuthorized }),
          }
        : null,
      problem: certificateProblem(ctx.req) ?? null,
      auditThumbprint: currentRequestContext()?.certThumbprint ?? null,
      remainingHeaders: ['client-cert', 'client-cert-chain', 'x-ssl-client-cert', 'x-client-cert'].filter((h) => ctx.get(h) !== ''),
    };
    ctx.body = seen;
  });
  return koa;
}

async function listen(t: TestContext, server: http.Server | https.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return (server.address() as AddressInfo).port;
}

async function plainServer(t: TestContext, options: ClientCertificateOptions) {
  const calls: Calls = { untrusted: [], malformed: [] };
  const port = await listen(t, http.createServer(app(options, calls).callback()));
  const get = async (headers: Record<string, string> = {}) => {
    const res = await request(`http://127.0.0.1:${port}/`, { headers });
    assert.equal(res.statusCode, 200);
    return (await res.body.json()) as Seen;
  };
  return { calls, get };
}

test('middleware: certificate headers from an untrusted peer are removed and reported once', async (t) => {
  const { root } = await pki();
  const leaf = await pkiLeaf(root);
  const headers = { 'client-cert': sf(leaf.node), 'client-cert-chain': sf(node(root)), 'x-ssl-client-cert': encodeURIComponent(leaf.pem) };

  const notListed = await plainServer(t, { fromHeaders: true, trustedProxies: ['10.0.0.1'] });
  const seen = await notListed.get(headers);
  assert.deepEqual(seen, { certificate: null, problem: null, auditThumbprint: null, remainingHeaders: [] });
  assert.deepEqual(notListed.calls.untrusted, [['client-cert', 'client-cert-chain', 'x-ssl-client-cert']]);

  // Headers disabled: even a listed proxy is not believed.
  const disabled = await plainServer(t, { fromHeaders: false, trustedProxies: ['127.0.0.1'] });
  assert.deepEqual((await disabled.get({ 'client-cert': sf(leaf.node) })).certificate, null);
  assert.deepEqual(disabled.calls.untrusted, [['client-cert']]);

  // No certificate headers: nothing to report.
  assert.deepEqual((await disabled.get()).certificate, null);
  assert.equal(disabled.calls.untrusted.length, 1);
});

test('middleware: a trusted proxy RFC 9440 certificate is extracted, validated and put in the audit context', async (t) => {
  const root = await makeRoot('Workload Root');
  const intermediate = await makeIntermediate(root, 'Workload CA');
  const leaf = await pkiLeaf(intermediate, { commonName: 'orchestrator' });
  const server = await plainServer(t, { fromHeaders: true, trustedProxies: ['127.0.0.0/8'] });
  const seen = await server.get({ 'client-cert': sf(leaf.node), 'client-cert-chain': sf(node(intermediate)), 'x-ssl-client-cert': 'ignored' });
  assert.deepEqual(seen, {
    certificate: {
      source: 'header',
      thumbprint: x5tS256(leaf.node.raw),
      subject: leaf.node.subject,
      chain: ['CN=Workload CA'],
      pemMatches: true,
    },
    problem: null,
    auditThumbprint: x5tS256(leaf.node.raw),
    remainingHeaders: [],
  });
  assert.deepEqual(server.calls, { untrusted: [], malformed: [] });
  assert.deepEqual(verifyChain(parseRfc9440(sf(leaf.node), sf(node(intermediate))), loadTrustAnchors(root.pem)), { ok: true });
});

test('middleware: malformed headers from a trusted proxy mean no certificate, not an error', async (t) => {
  const { root } = await pki();
  const leaf = await pkiLeaf(root);
  const server = await plainServer(t, { fromHeaders: true, trustedProxies: ['127.0.0.1'] });
  const cases: Array<Record<string, string>> = [
    { 'client-cert': leaf.node.raw.toString('base64') },
    { 'client-cert': ':bm90IGEgY2VydA==:' },
    { 'client-cert': sf(leaf.node), 'client-cert-chain': ':%%%:' },
    { 'client-cert-chain': sf(node(root)) },
  ];
  for (const headers of cases) {
    const seen = await server.get(headers);
    assert.deepEqual(seen, { certificate: null, problem: 'malformed_certificate_header', auditThumbprint: null, remainingHeaders: [] });
  }
  assert.equal(server.calls.malformed.length, 4);
  assert.deepEqual(server.calls.untrusted, []);
  // An empty Client-Cert is simply no certificate.
  assert.deepEqual(await server.get({ 'client-cert': '' }), { certificate: null, problem: null, auditThumbprint: null, remainingHeaders: [] });
});

test('middleware: nginx escaped PEM in a configured header; RFC 9440 headers are then ignored', async (t) => {
  const { root, other } = await pki();
  const leaf = await pkiLeaf(root);
  const decoy = await pkiLeaf(other, { commonName: 'decoy' });
  const server = await plainServer(t, { fromHeaders: true, trustedProxies: ['127.0.0.1'], headerFormat: 'nginx', nginxHeader: 'X-Client-Cert' });
  const seen = await server.get({ 'x-client-cert': encodeURIComponent(leaf.pem), 'client-cert': sf(decoy.node) });
  assert.equal(seen.certificate?.source, 'header');
  assert.equal(seen.certificate?.thumbprint, x5tS256(leaf.node.raw));
  assert.deepEqual(seen.remainingHeaders, []);
  const bad = await server.get({ 'x-client-cert': '%ZZ' });
  assert.equal(bad.problem, 'malformed_certificate_header');
  assert.deepEqual(await server.get({ 'x-client-cert': '' }), { certificate: null, problem: null, auditThumbprint: null, remainingHeaders: [] });
});

async function mtlsServer(t: TestContext, root: Ca, options: ClientCertificateOptions) {
  const server = await pkiLeaf(root, { commonName: 'localhost', ipAddresses: ['127.0.0.1'], extendedKeyUsage: ['serverAuth'] });
  const calls: Calls = { untrusted: [], malformed: [] };
  const port = await listen(
    t,
    https.createServer({ cert: server.pem, key: server.keyPem, ca: root.pem, requestCert: true, rejectUnauthorized: false }, app(options, calls).callback()),
  );
  const get = async (client: { cert?: string; key?: string }, headers: Record<string, string> = {}) => {
    const agent = new Agent({ connect: { ca: root.pem, ...client } });
    try {
      const res = await request(`https://127.0.0.1:${port}/`, { dispatcher: agent, headers });
      assert.equal(res.statusCode, 200);
      return (await res.body.json()) as Seen;
    } finally {
      await agent.close();
    }
  };
  return { calls, get };
}

test('middleware: certificate from a real TLS handshake; none when the client sends none', async (t) => {
  const root = await makeRoot('TLS Root');
  const server = await mtlsServer(t, root, {});
  const client = await pkiLeaf(root, { commonName: 'ehr-app' });
  const seen = await server.get({ cert: client.pem, key: client.keyPem });
  assert.equal(seen.certificate?.source, 'socket');
  assert.equal(seen.certificate?.thumbprint, x5tS256(client.node.raw));
  assert.equal(seen.certificate?.subject, 'CN=ehr-app');
  assert.equal(seen.certificate?.pemMatches, true);
  assert.equal(seen.auditThumbprint, x5tS256(client.node.raw));
  assert.deepEqual(await server.get({}), { certificate: null, problem: null, auditThumbprint: null, remainingHeaders: [] });
  // A certificate of another CA still arrives (rejectUnauthorized: false), but is not tlsAuthorized.
  const stranger = await pkiLeaf(await makeRoot('Stranger Root'), { commonName: 'stranger' });
  const seenStranger = await server.get({ cert: stranger.pem, key: stranger.keyPem });
  assert.equal(seenStranger.certificate?.subject, 'CN=stranger');
  assert.equal(seenStranger.certificate?.tlsAuthorized, false);
  assert.equal(seen.certificate?.tlsAuthorized, true);
});

test('middleware: the chain a TLS client sends is kept unless OpenSSL verified it (Node hides it then)', async (t) => {
  const root = await makeRoot('TLS Chain Root');
  const intermediate = await makeIntermediate(root, 'TLS Chain Intermediate');
  const client = await pkiLeaf(intermediate, { commonName: 'orchestrator' });
  const serverCert = await pkiLeaf(root, { commonName: 'localhost', ipAddresses: ['127.0.0.1'], extendedKeyUsage: ['serverAuth'] });
  const anchors = loadTrustAnchors(root.pem);

  const seenWith = async (ca: string | undefined): Promise<PresentedCertificate | undefined> => {
    let presented: PresentedCertificate | undefined;
    const koa = new Koa();
    koa.use(clientCertificates({}));
    koa.use((ctx) => {
      presented = presentedCertificate(ctx.req);
      ctx.body = 'ok';
    });
    const tlsOptions = { cert: serverCert.pem, key: serverCert.keyPem, requestCert: true, rejectUnauthorized: false };
    const port = await listen(t, https.createServer(ca === undefined ? tlsOptions : { ...tlsOptions, ca }, koa.callback()));
    const agent = new Agent({ connect: { ca: root.pem, cert: `${client.pem}\n${intermediate.pem}`, key: client.keyPem } });
    try {
      const res = await request(`https://127.0.0.1:${port}/`, { dispatcher: agent });
      await res.body.text();
    } finally {
      await agent.close();
    }
    return presented;
  };

  // Listener without `ca`: OpenSSL cannot verify, and Node shows the chain as sent.
  const unverified = await seenWith(undefined);
  assert.ok(unverified);
  assert.equal(unverified.source, 'socket');
  assert.equal(unverified.tlsAuthorized, false);
  assert.ok(unverified.der.equals(client.node.raw));
  assert.deepEqual(unverified.chain.map((c) => c.subject), ['CN=TLS Chain Intermediate']);
  assert.deepEqual(verifyChain(unverified, anchors), { ok: true });
  // A socket certificate OpenSSL did not accept is refused, whatever our own path check says: the
  // listener's `ca` is the bundle, and OpenSSL also enforces what we do not (name constraints, ...).
  assert.deepEqual(authorizeCertificate(unverified, anchors), { ok: false, reason: 'untrusted_issuer' });

  // Listener with the bundle as `ca` (as server.ts does): verified by OpenSSL, and Node drops the intermediates.
  const verified = await seenWith(root.pem);
  assert.ok(verified);
  assert.equal(verified.tlsAuthorized, true);
  assert.deepEqual(verified.chain, []);
  assert.deepEqual(verifyChain(verified, anchors), { ok: false, reason: 'untrusted_issuer' });
  assert.deepEqual(authorizeCertificate(verified, anchors), { ok: true });
  // The leaf's own checks still apply, and a header certificate gets no such allowance.
  assert.deepEqual(authorizeCertificate(verified, anchors, new Date(Date.now() + 400 * DAY)), { ok: false, reason: 'expired' });
  assert.deepEqual(authorizeCertificate({ ...verified, source: 'header' }, anchors), { ok: false, reason: 'untrusted_issuer' });
});

test('middleware: a socket certificate beats a trusted proxy header', async (t) => {
  const root = await makeRoot('TLS Root 2');
  const server = await mtlsServer(t, root, { fromHeaders: true, trustedProxies: ['127.0.0.1'] });
  const client = await pkiLeaf(root, { commonName: 'real-client' });
  const claimed = await pkiLeaf(root, { commonName: 'claimed-in-header' });
  const seen = await server.get({ cert: client.pem, key: client.keyPem }, { 'client-cert': sf(claimed.node) });
  assert.equal(seen.certificate?.source, 'socket');
  assert.equal(seen.certificate?.subject, 'CN=real-client');
  assert.deepEqual(seen.remainingHeaders, []);
  assert.deepEqual(server.calls, { untrusted: [], malformed: [] });

  // An untrusted TLS peer sending the header: the handshake certificate stands, the header is reported.
  const strict = await mtlsServer(t, root, { fromHeaders: true, trustedProxies: ['10.0.0.1'] });
  const seen2 = await strict.get({ cert: client.pem, key: client.keyPem }, { 'client-cert': sf(claimed.node) });
  assert.equal(seen2.certificate?.subject, 'CN=real-client');
  assert.deepEqual(strict.calls.untrusted, [['client-cert']]);
});

test('CertificateVerdicts: a positive verdict is remembered per certificate set until the first expiry; refusals never', async () => {
  const { root, other } = await pki();
  const verdicts = new CertificateVerdicts(loadTrustAnchors(root.pem), 2);
  const socket = (leaf: Leaf, chain: Array<Ca | Leaf> = []): PresentedCertificate => ({
    ...presentedOf(leaf, chain), source: 'socket', tlsAuthorized: true, thumbprint: x5tS256(leaf.node.raw), der: leaf.node.raw, pem: leaf.pem,
  });
  const now = Date.now();
  const soonGone = await pkiLeaf(root, { notBefore: new Date(now - DAY), notAfter: new Date(now + DAY) });
  assert.deepEqual(verdicts.authorize(socket(soonGone)), { ok: true });
  assert.deepEqual(verdicts.authorize(socket(soonGone)), { ok: true });
  assert.equal(verdicts.size, 1);
  // Past the leaf's notAfter the remembered verdict no longer holds: validated again, and refused.
  assert.deepEqual(verdicts.authorize(socket(soonGone), new Date(now + 2 * DAY)), { ok: false, reason: 'expired' });
  assert.equal(verdicts.size, 0);
  // A clock set back before the verdict was reached re-validates too.
  assert.deepEqual(verdicts.authorize(socket(soonGone), new Date(now)), { ok: true });
  assert.deepEqual(verdicts.authorize(socket(soonGone), new Date(now - 2 * DAY)), { ok: false, reason: 'not_yet_valid' });

  // The same leaf from a header (no OpenSSL verdict), or with a handshake OpenSSL refused, is another question.
  assert.deepEqual(verdicts.authorize({ ...socket(soonGone), source: 'header' }), { ok: true }); // root is in the bundle
  assert.deepEqual(verdicts.authorize({ ...socket(soonGone), tlsAuthorized: false }), { ok: false, reason: 'untrusted_issuer' });
  // Refusals are not remembered and do not evict.
  const stranger = await pkiLeaf(other);
  const sizeBefore = verdicts.size;
  assert.deepEqual(verdicts.authorize({ ...socket(stranger), source: 'header' }), { ok: false, reason: 'untrusted_issuer' });
  assert.deepEqual(verdicts.authorize({ ...socket(stranger), source: 'header' }), { ok: false, reason: 'untrusted_issuer' });
  assert.equal(verdicts.size, sizeBefore);

  // Capacity: the oldest entry goes first, and is simply validated again when it comes back.
  const a = await pkiLeaf(root, { commonName: 'a' });
  const b = await pkiLeaf(root, { commonName: 'b' });
  const c = await pkiLeaf(root, { commonName: 'c' });
  for (const leaf of [a, b, c, a]) assert.deepEqual(verdicts.authorize(socket(leaf)), { ok: true });
  assert.equal(verdicts.size, 2);
});

test('CertificateVerdicts: a chain sent along is part of the question, and its expiry bounds the verdict', async () => {
  const { root } = await pki();
  const now = Date.now();
  const shortLived = await makeIntermediate(root, 'Short-lived Intermediate', { notAfter: new Date(now + DAY) });
  const leaf = await pkiLeaf(shortLived, { commonName: 'via-intermediate' });
  const verdicts = new CertificateVerdicts(loadTrustAnchors(root.pem));
  const header = (chain: Array<Ca | Leaf>): PresentedCertificate => ({
    ...presentedOf(leaf, chain), source: 'header', thumbprint: x5tS256(leaf.node.raw), der: leaf.node.raw, pem: leaf.pem,
  });
  assert.deepEqual(verdicts.authorize(header([])), { ok: false, reason: 'untrusted_issuer' });
  assert.deepEqual(verdicts.authorize(header([shortLived])), { ok: true });
  assert.deepEqual(verdicts.authorize(header([])), { ok: false, reason: 'untrusted_issuer' }); // not answered from the entry with the chain
  // The leaf lives 30 days, the intermediate one: the verdict ends with the intermediate.
  assert.deepEqual(verdicts.authorize(header([shortLived]), new Date(now + 2 * DAY)), { ok: false, reason: 'expired' });
});

test('middleware: keep-alive requests on one connection share its certificate reading', async (t) => {
  const root = await makeRoot('Keep-alive Root');
  const serverCert = await pkiLeaf(root, { commonName: 'localhost', ipAddresses: ['127.0.0.1'], extendedKeyUsage: ['serverAuth'] });
  const client = await pkiLeaf(root, { commonName: 'keep-alive-client' });
  const readings: Array<PresentedCertificate | undefined> = [];
  const koa = new Koa();
  koa.use(clientCertificates({}));
  koa.use((ctx) => {
    readings.push(presentedCertificate(ctx.req));
    ctx.body = 'ok';
  });
  const port = await listen(t, https.createServer({ cert: serverCert.pem, key: serverCert.keyPem, ca: root.pem, requestCert: true, rejectUnauthorized: false }, koa.callback()));
  const agent = new Agent({ connect: { ca: root.pem, cert: client.pem, key: client.keyPem }, connections: 1 });
  const other = new Agent({ connect: { ca: root.pem, cert: client.pem, key: client.keyPem } });
  t.after(() => Promise.all([agent.close(), other.close()]));
  for (const dispatcher of [agent, agent, other]) {
    const res = await request(`https://127.0.0.1:${port}/`, { dispatcher });
    await res.body.text();
  }
  assert.equal(readings.length, 3);
  assert.ok(readings[0] && readings[0] === readings[1], 'same connection: the same reading');
  assert.ok(readings[2] && readings[2] !== readings[0], 'a new connection is read afresh');
  assert.equal(readings[2].thumbprint, readings[0].thumbprint);
});

test('certificateFromDer refuses trailing bytes and non-certificates', async () => {
  const { root } = await pki();
  const leaf = await pkiLeaf(root);
  assert.ok(certificateFromDer(leaf.node.raw).raw.equals(leaf.node.raw));
  assert.throws(() => certificateFromDer(Buffer.concat([leaf.node.raw, Buffer.from([1, 2])])));
  assert.throws(() => certificateFromDer(Buffer.from('junk')));
});
