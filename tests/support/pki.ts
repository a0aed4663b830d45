// Throwaway certificate authorities and client certificates for mTLS tests (real X.509, real keys).
import 'reflect-metadata';
import { webcrypto } from 'node:crypto';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
type JsonWebKey = webcrypto.JsonWebKey;
import fs from 'node:fs/promises';
import path from 'node:path';

import * as x509 from '@peculiar/x509';
import { exportPKCS8 } from 'jose';

import { issueTestCertificate } from '../../src/keystore/pki.ts';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY = 24 * 3600 * 1000;

export interface KeyPairPem { certPem: string; keyPem: string }

async function generate(): Promise<CryptoKeyPair> {
  return webcrypto.subtle.generateKey(EC, true, ['sign', 'verify']) as Promise<CryptoKeyPair>;
}

async function importKey(keyPem: string): Promise<CryptoKey> {
  const der = Buffer.from(keyPem.replace(/-----[^-]+-----|\s/g, ''), 'base64');
  return webcrypto.subtle.importKey('pkcs8', der, EC, false, ['sign']) as Promise<CryptoKey>;
}

/** A root CA (no parent) or an intermediate CA signed by `parent`. */
export async function createCa(name: string, parent?: KeyPairPem, pathLength = 1): Promise<KeyPairPem> {
  const keys = await generate();
  const extensions = [
    new x509.BasicConstraintsExtension(true, pathLength, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  const notBefore = new Date(Date.now() - DAY);
  const notAfter = new Date(Date.now() + 365 * DAY);
  const cert = parent
    ? await x509.X509CertificateGenerator.create({
      subject: `CN=${name}`,
      issuer: new x509.X509Certificate(parent.certPem).subject,
      publicKey: keys.publicKey,
      signingKey: await importKey(parent.keyPem),
      signingAlgorithm: SIGNING,
      notBefore,
      notAfter,
      extensions: [
        ...extensions,
        await x509.AuthorityKeyIdentifierExtension.create(new x509.X509Certificate(parent.certPem)),
      ],
    })
    : await x509.X509CertificateGenerator.createSelfSigned({ name: `CN=${name}`, keys, signingAlgorithm: SIGNING, notBefore, notAfter, extensions });
  return { certPem: cert.toString('pem'), keyPem: await exportPKCS8(keys.privateKey) };
}

/** A client certificate signed by `ca` (root or intermediate). */
export function issueClientCertificate(
  ca: KeyPairPem, commonName: string, validity: { notBefore?: Date; notAfter?: Date } = {},
): Promise<KeyPairPem> {
  return issueTestCertificate({ caCertPem: ca.certPem, caKeyPem: ca.keyPem, commonName, ...validity });
}

/** A client certificate carrying a critical extension nobody understands (RFC 5280: must be rejected). */
export async function issueWithUnknownCriticalExtension(ca: KeyPairPem, commonName: string): Promise<KeyPairPem> {
  const keys = await generate();
  const caCert = new x509.X509Certificate(ca.certPem);
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${commonName}`,
    issuer: caCert.subject,
    publicKey: keys.publicKey,
    signingKey: await importKey(ca.keyPem),
    signingAlgorithm: SIGNING,
    notBefore: new Date(Date.now() - DAY),
    notAfter: new Date(Date.now() + 30 * DAY),
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
      new x509.Extension('1.3.6.1.4.1.99999.1', true, new Uint8Array([0x05, 0x00]).buffer),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await exportPKCS8(keys.privateKey) };
}

/** A self-signed client certificate (self_signed_tls_client_auth), with its public JWK carrying x5c. */
export async function selfSignedClientCertificate(
  commonName: string, validity: { notBefore?: Date; notAfter?: Date } = {},
): Promise<KeyPairPem & { jwk: JsonWebKey & { x5c: string[] } }> {
  const keys = await generate();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${commonName}`,
    keys,
    signingAlgorithm: SIGNING,
    notBefore: validity.notBefore ?? new Date(Date.now() - DAY),
    notAfter: validity.notAfter ?? new Date(Date.now() + 30 * DAY),
    extensions: [new x509.BasicConstraintsExtension(false, undefined, true)],
  });
  const jwk = await webcrypto.subtle.exportKey('jwk', keys.publicKey);
  return {
    certPem: cert.toString('pem'),
    keyPem: await exportPKCS8(keys.privateKey),
    jwk: { kty: jwk.kty, crv: jwk.crv, x: jwk.x, y: jwk.y, x5c: [cert.toString('base64')] } as JsonWebKey & { x5c: string[] },
  };
}

/** The dev CA of a test server's key directory (it signs the dev client certificates). */
export async function devCa(keysDir: string): Promise<KeyPairPem> {
  return {
    certPem: await fs.readFile(path.join(keysDir, 'tls', 'ca.pem'), 'utf8'),
    keyPem: await fs.readFile(path.join(keysDir, 'tls', 'ca.key'), 'utf8'),
  };
}

/** DER of a PEM certificate, base64 (RFC 9440 byte sequences carry it between colons). */
export function derBase64(certPem: string): string {
  return certPem.replace(/-----[^-]+-----|\s/g, '');
}
