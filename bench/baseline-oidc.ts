// Baseline: bare oidc-provider (in-memory adapter, ES256) with nothing of ours in front of it: no
// database, no audit, no rate limit, no policies. Same TLS setup as the server's mTLS listener (same
// certificate, client CA, requestCert without rejecting), same client authentication (tls_client_auth)
// and certificate-bound tokens. Resource FHIR gets JWT access tokens, OPAQUE_API opaque ones.
import { X509Certificate } from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';

import { exportJWK, generateKeyPair } from 'jose';
import Provider, { type KoaContextWithOIDC } from 'oidc-provider';

import { FHIR, OPAQUE_API, SYSTEM_SCOPE, WORKLOAD, type TlsSetup } from './lib/fixtures.ts';
import { serveAsChild } from './lib/ipc.ts';

const tls = JSON.parse(process.env.BENCH_TLS ?? 'null') as TlsSetup | null;
if (!tls) throw new Error('baseline-oidc needs BENCH_TLS');

const { privateKey } = await generateKeyPair('ES256', { extractable: true });
const signingKey = { ...await exportJWK(privateKey), alg: 'ES256', use: 'sig', kid: 'bench-es256' };

const peer = (ctx: KoaContextWithOIDC) => {
  const raw = (ctx.socket as TLSSocket).getPeerCertificate?.()?.raw;
  return raw ? new X509Certificate(raw) : undefined;
};

const provider = new Provider('https://localhost', {
  clients: [{
    client_id: WORKLOAD,
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: `CN=${WORKLOAD}`,
    tls_client_certificate_bound_access_tokens: true,
    id_token_signed_response_alg: 'ES256',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
  }],
  jwks: { keys: [signingKey] } as never,
  clientAuthMethods: ['tls_client_auth'],
  cookies: { keys: ['bench-cookie-key-0123456789'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      getCertificate: (ctx) => peer(ctx),
      certificateAuthorized: (ctx) => (ctx.socket as TLSSocket).authorized === true,
      certificateSubjectMatches: (ctx, property, expected) => {
        const cert = peer(ctx);
        return property === 'tls_client_auth_subject_dn' && cert !== undefined && cert.subject.split('\n').reverse().join(',') === expected;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => FHIR,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => (indicator === OPAQUE_API
        ? { scope: SYSTEM_SCOPE, audience: OPAQUE_API, accessTokenFormat: 'opaque' }
        : { scope: SYSTEM_SCOPE, audience: FHIR, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } }),
    },
  },
});

const server = https.createServer({
  cert: tls.certPem, key: tls.keyPem, ca: tls.clientCaPem, requestCert: true, rejectUnauthorized: false, minVersion: 'TLSv1.2',
}, provider.callback());
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address() as AddressInfo;

serveAsChild({ baseUrl: `https://localhost:${port}`, pid: process.pid }, () => new Promise<void>((resolve) => {
  server.close(() => resolve());
  server.closeAllConnections();
}));
