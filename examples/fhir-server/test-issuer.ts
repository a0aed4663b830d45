// A stand-in authorization server for trying and testing resource servers without the real one: a
// throwaway dev PKI (CA, HTTPS server certificate for 127.0.0.1/localhost, client certificates), an
// ES256 signing key set served over real HTTPS (discovery + JWKS, with rotation), RFC 9068 token
// minting, and an RFC 7662 introspection endpoint for opaque tokens. Never use it in production.
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from 'jose';
import { Agent, fetch as undiciFetch } from 'undici';

import { ensureDevClientCertificate, loadOrCreateTls, type IssuedClientCertificate } from '../../src/keystore/pki.ts';
import type { FetchLike } from '../../src/resource/index.ts';

export interface TestIssuerKey {
  kid: string;
  privateKey: CryptoKey;
  publicJwk: JWK;
}

export interface SignOptions {
  /** Header `typ`; default `at+jwt`. */
  typ?: string;
  /** Header `kid`; default the current key's. */
  kid?: string;
  /** Sign with this key instead of the current one (e.g. a key that is not published). */
  key?: TestIssuerKey;
}

export interface TestIssuer {
  /** `https://127.0.0.1:<port>` */
  issuer: string;
  jwksUri: string;
  /** The throwaway CA: it issued the issuer's TLS certificate and every client certificate. */
  caPem: string;
  /** An HTTPS server certificate for 127.0.0.1 and localhost (issued by `caPem`), for resource servers. */
  serverTls: { certPem: string; keyPem: string };
  /** fetch that trusts `caPem`. */
  fetch: FetchLike;
  introspection: { endpoint: string; clientId: string; clientSecret: string };
  /** Requests served, per endpoint. */
  hits: { discovery: number; jwks: number; introspection: number };
  /** Make an endpoint answer HTTP 500. */
  failing: { jwks: boolean; introspection: boolean };
  currentKey(): TestIssuerKey;
  /** A new signing key, published first in the JWKS (the old ones stay published) and used from now on. */
  rotateKey(): Promise<TestIssuerKey>;
  /** A key that is not published. */
  unpublishedKey(): Promise<TestIssuerKey>;
  /** Signs an access token: `iss`, `iat`, `exp` (+300 s) and `jti` are added unless given; `undefined` drops a claim. */
  sign(claims: Record<string, unknown>, options?: SignOptions): Promise<string>;
  /** Registers an opaque token whose introspection answers `response` (e.g. `{ active: true, ... }`). */
  opaqueToken(response: Record<string, unknown>): string;
  /** A client certificate issued by the throwaway CA (reused per name). */
  clientCertificate(name: string): Promise<IssuedClientCertificate>;
  stop(): Promise<void>;
}

export async function startTestIssuer(): Promise<TestIssuer> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'test-issuer-'));
  const tls = await loadOrCreateTls(dir, { allowGenerate: true, hostnames: ['localhost', '127.0.0.1'] });
  const dispatcher = new Agent({ connect: { ca: tls.caPem } });
  const fetch: FetchLike = (url, init) => undiciFetch(url, { ...init, dispatcher });

  const keys: TestIssuerKey[] = [await newKey()];
  const opaque = new Map<string, Record<string, unknown>>();
  const hits = { discovery: 0, jwks: 0, introspection: 0 };
  const failing = { jwks: false, introspection: false };
  const client = { clientId: 'fhir-resource-server', clientSecret: randomBytes(24).toString('base64url') };
  let issuer = '';

  const server = https.createServer({ cert: tls.certPem, key: tls.keyPem }, (req, res) => {
    const url = new URL(req.url ?? '/', issuer);
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && url.pathname === '/.well-known/openid-configuration') {
      hits.discovery += 1;
      return json(200, {
        issuer,
        jwks_uri: `${issuer}/jwks`,
        introspection_endpoint: `${issuer}/token/introspection`,
        token_endpoint: `${issuer}/token`,
      });
    }
    if (req.method === 'GET' && url.pathname === '/jwks') {
      hits.jwks += 1;
      if (failing.jwks) return json(500, { error: 'server_error' });
      return json(200, { keys: keys.map((k) => k.publicJwk) });
    }
    if (req.method === 'POST' && url.pathname === '/token/introspection') {
      hits.introspection += 1;
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (failing.introspection) return json(500, { error: 'server_error' });
        if (req.headers.authorization !== basic(client.clientId, client.clientSecret)) {
          return json(401, { error: 'invalid_client' });
        }
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        const token = form.get('token') ?? '';
        return json(200, opaque.get(digest(token)) ?? { active: false });
      });
      return undefined;
    }
    return json(404, { error: 'not_found' });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  issuer = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    issuer,
    jwksUri: `${issuer}/jwks`,
    caPem: tls.caPem,
    serverTls: { certPem: tls.certPem, keyPem: tls.keyPem },
    fetch,
    introspection: { endpoint: `${issuer}/token/introspection`, ...client },
    hits,
    failing,
    currentKey: () => keys[0]!,
    async rotateKey() {
      const key = await newKey();
      keys.unshift(key);
      return key;
    },
    unpublishedKey: newKey,
    async sign(claims, options = {}) {
      const now = Math.floor(Date.now() / 1000);
      const payload: Record<string, unknown> = { iss: issuer, iat: now, exp: now + 300, jti: randomBytes(12).toString('base64url'), ...claims };
      for (const [k, v] of Object.entries(payload)) if (v === undefined) delete payload[k];
      const key = options.key ?? keys[0]!;
      return new SignJWT(payload)
        .setProtectedHeader({ alg: 'ES256', typ: options.typ ?? 'at+jwt', kid: options.kid ?? key.kid })
        .sign(key.privateKey);
    },
    opaqueToken(response) {
      const token = randomBytes(32).toString('base64url');
      opaque.set(digest(token), response);
      return token;
    },
    clientCertificate: (name) => ensureDevClientCertificate(dir, name),
    async stop() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await dispatcher.close();
      await fs.rm(dir, { recursive: true, force: true });
    },
  };
}

async function newKey(): Promise<TestIssuerKey> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const kid = randomBytes(8).toString('base64url');
  return { kid, privateKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' } };
}

function digest(token: string): string {
  return createHash('sha256').update(token).digest('base64url');
}

function basic(id: string, secret: string): string {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}
