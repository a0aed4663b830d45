// An admin API test bench: the real server, an administrator with a passkey (phr token), an
// administrator without one (password-only token), a clinician (no admin role), an mTLS automation
// client and a secret-authenticated one, and `call` for JSON requests on the mTLS listener.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';

import * as oidc from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';

import { ADMIN_RESOURCE } from '../../src/admin/auth.ts';
import { findUserByUsername } from '../../src/accounts/users.ts';
import { ACR_PASSWORD } from '../../src/mfa/assurance.ts';
import { applySeed, SeedSchema } from '../../src/seed/seed.ts';
import { Browser, enrolPasskey, type PasskeyAnswerer } from './login-flow.ts';
import { devCa, issueClientCertificate, type KeyPairPem } from './pki.ts';
import { relyingParty } from './relying-party.ts';
import { SoftAuthenticator } from './soft-authenticator.ts';
import { CLINICIAN, startTestServer, type TestServer } from './test-server.ts';

export const ADMIN = { username: 'dr.admin', password: 'admin-password-123456' };
export const PASSWORD_ADMIN = { username: 'it.admin', password: 'it-admin-password-1234' };
export const ADMIN_TOOL = { client_id: 'admin-tool', client_secret: 'admin-tool-secret-0123456789-0123456789', redirect_uri: 'https://admin-tool.test/callback' };
export const OPS_BOT = 'ops-bot';
export const SECRET_BOT = { client_id: 'secret-bot', client_secret: 'secret-bot-secret-0123456789-0123456789' };

export interface AdminResponse {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
}

export interface AdminBench {
  ts: TestServer;
  /** Administrator, passkey sign-in (acr phr), admin:read admin:write. */
  adminToken: string;
  /**
   * Administrator signed in with a password only. The server never issues this (step-up rule on the
   * admin audience): minted in-process, as an older configuration might have, to test the API's own check.
   */
  passwordAdminToken: string;
  /** A clinician (no admin role) with admin scopes: never issued (role check), minted in-process likewise. */
  clinicianToken: string;
  /** ops-bot: client credentials over mTLS, bound to `opsBotCert`. */
  automationToken: string;
  opsBotCert: KeyPairPem;
  /** secret-bot: client credentials with a client secret (not an acceptable automation client; minted likewise). */
  secretBotToken: string;
  adminKey: SoftAuthenticator;
  /** A JSON request to the admin API on the mTLS listener, presenting the test client certificate (or `cert`). */
  call(method: string, path: string, options?: { token?: string | undefined; body?: unknown; headers?: Record<string, string>; cert?: KeyPairPem }): Promise<AdminResponse>;
  /** A certificate-bound admin token written straight through the provider's models (never issued by the endpoints). */
  mint(input: { clientId: string; username?: string; acr?: string; authTime?: number; act?: unknown }): Promise<string>;
  /** A fresh admin token (admin:read or admin:write) from a passkey sign-in. */
  userToken(username: string, password: string, scope: string, passkey?: PasskeyAnswerer): Promise<string>;
  stop(): Promise<void>;
}

export async function startAdminBench(): Promise<AdminBench> {
  const ts = await startTestServer();
  const ca = await devCa(ts.keysDir);
  const opsBotCert = await issueClientCertificate(ca, OPS_BOT);
  await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
    users: [
      { username: ADMIN.username, password: ADMIN.password, displayName: 'Ada Admin', roles: ['admin'] },
      { username: PASSWORD_ADMIN.username, password: PASSWORD_ADMIN.password, roles: ['admin'] },
    ],
    clients: [
      {
        client_id: ADMIN_TOOL.client_id, client_secret: ADMIN_TOOL.client_secret, client_name: 'Admin tool',
        grant_types: ['authorization_code'], redirect_uris: [ADMIN_TOOL.redirect_uri], scope: 'openid', resource_scope: 'admin:read admin:write',
      },
      {
        client_id: OPS_BOT, token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: `CN=${OPS_BOT}`,
        grant_types: ['client_credentials'], response_types: [], redirect_uris: [], resource_scope: 'admin:read admin:write',
      },
      {
        // May not hold admin scopes (the registration policy refuses them for a secret): its admin token is minted.
        ...SECRET_BOT, grant_types: ['client_credentials'], response_types: [], redirect_uris: [], resource_scope: 'system/Patient.rs',
      },
    ],
  }));
  const origin = new URL(ts.issuer).origin;
  const adminKey = new SoftAuthenticator();
  assert.equal((await enrolPasskey(ts, ADMIN.username, ADMIN.password, (o) => adminKey.register(o, { origin }))).status, 303);
  const tool = await relyingParty(ts, ADMIN_TOOL.client_id, ADMIN_TOOL.client_secret);
  const agents: Agent[] = [];
  const agentFor = (cert?: KeyPairPem) => {
    if (!cert) return ts.dispatcher;
    const agent = new Agent({ connect: { ca: ts.caPem, cert: cert.certPem, key: cert.keyPem } });
    agents.push(agent);
    return agent;
  };

  async function userToken(username: string, password: string, scope: string, passkey?: PasskeyAnswerer): Promise<string> {
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(tool, {
      redirect_uri: ADMIN_TOOL.redirect_uri, scope: `openid ${scope}`, resource: ADMIN_RESOURCE, state, prompt: 'consent',
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
    });
    const callback = await new Browser(ts).authorize(url, username, password, passkey ? { passkey } : {});
    const tokens = await oidc.authorizationCodeGrant(tool, callback, { pkceCodeVerifier: verifier, expectedState: state });
    return tokens.access_token;
  }

  async function clientCredentials(clientId: string, cert: KeyPairPem | undefined, secret?: string): Promise<string> {
    const body = new URLSearchParams({ grant_type: 'client_credentials', client_id: clientId, resource: ADMIN_RESOURCE, scope: 'admin:read admin:write' });
    const headers: Record<string, string> = { 'content-type': 'application/x-www-form-urlencoded' };
    if (secret) headers.authorization = `Basic ${Buffer.from(`${clientId}:${secret}`).toString('base64')}`;
    const res = await undiciFetch(`${ts.mtlsBaseUrl}/token`, { method: 'POST', body: body.toString(), headers, dispatcher: agentFor(cert) });
    const json = await res.json() as Record<string, unknown>;
    assert.equal(res.status, 200, JSON.stringify(json));
    return String(json.access_token);
  }

  /** A certificate-bound admin token written straight through the provider's models (not via its endpoints). */
  async function mint(input: { clientId: string; username?: string; acr?: string; authTime?: number; act?: unknown }): Promise<string> {
    const provider = ts.server.provider();
    const client = await provider.Client.find(input.clientId);
    assert.ok(client);
    const scope = 'admin:read admin:write';
    let token;
    if (input.username) {
      const user = await findUserByUsername(ts.testDb.db, input.username);
      assert.ok(user);
      const grant = new provider.Grant({ accountId: user.id, clientId: input.clientId });
      grant.addResourceScope(ADMIN_RESOURCE, scope);
      token = new provider.AccessToken({ accountId: user.id, client, grantId: await grant.save(), gty: 'authorization_code', scope,
        extra: { acr: input.acr, auth_time: input.authTime ?? Math.floor(Date.now() / 1000), ...(input.act ? { act: input.act } : {}) } });
    } else {
      token = new provider.ClientCredentials({ client, scope });
    }
    token.resourceServer = new provider.ResourceServer(ADMIN_RESOURCE, { scope, audience: ADMIN_RESOURCE, accessTokenFormat: 'opaque' } as never);
    token.setThumbprint('x5t', new X509Certificate(ts.clientCert.certPem));
    return token.save();
  }

  const passkey: PasskeyAnswerer = (options) => adminKey.authenticate(options, { origin });
  return {
    ts,
    adminToken: await userToken(ADMIN.username, ADMIN.password, 'admin:read admin:write', passkey),
    passwordAdminToken: await mint({ clientId: ADMIN_TOOL.client_id, username: PASSWORD_ADMIN.username, acr: ACR_PASSWORD }),
    clinicianToken: await mint({ clientId: ADMIN_TOOL.client_id, username: CLINICIAN.username, acr: ACR_PASSWORD }),
    automationToken: await clientCredentials(OPS_BOT, opsBotCert),
    opsBotCert,
    secretBotToken: await mint({ clientId: SECRET_BOT.client_id }),
    adminKey,
    mint,
    userToken,
    async call(method, path, options = {}) {
      const headers: Record<string, string> = { accept: 'application/json', ...options.headers };
      if (options.token) headers.authorization = `Bearer ${options.token}`;
      let body: string | undefined;
      if (options.body !== undefined) {
        body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
        headers['content-type'] ??= 'application/json';
      }
      const res = await undiciFetch(`${ts.mtlsBaseUrl}${path}`, { method, headers, body, dispatcher: agentFor(options.cert) });
      const text = await res.text();
      return { status: res.status, headers: res.headers as unknown as Headers, body: (text ? JSON.parse(text) : {}) as Record<string, unknown> };
    },
    async stop() {
      await Promise.all(agents.map((a) => a.close()));
      await ts.stop();
    },
  };
}
