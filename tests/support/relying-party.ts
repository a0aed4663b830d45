// openid-client as the relying party, trusting the test server's dev CA, and a sign-in through the
// real login and consent pages.
import * as oidc from 'openid-client';
import { fetch as undiciFetch } from 'undici';

import { Browser } from './login-flow.ts';
import { APP, CLINICIAN, FHIR, type TestServer } from './test-server.ts';

export async function relyingParty(ts: TestServer, clientId = APP.client_id, secret = APP.client_secret): Promise<oidc.Configuration> {
  const fetchWithCa = ((url: string, options: Record<string, unknown>) =>
    undiciFetch(url, { ...options, dispatcher: ts.dispatcher } as never)) as unknown as oidc.CustomFetch;
  // RFC 8705 §5: the token, introspection and revocation calls go to the mTLS aliases with the client certificate.
  const config = await oidc.discovery(new URL(ts.issuer), clientId, { use_mtls_endpoint_aliases: true }, oidc.ClientSecretBasic(secret), {
    [oidc.customFetch]: fetchWithCa,
  });
  config[oidc.customFetch] = fetchWithCa;
  return config;
}

/** Sends the clinician through login and consent with PKCE; returns what redeeming the code needs. */
export async function signIn(ts: TestServer, config: oidc.Configuration, params: Record<string, string>, browser = new Browser(ts)) {
  const verifier = oidc.randomPKCECodeVerifier();
  const state = oidc.randomState();
  const url = oidc.buildAuthorizationUrl(config, {
    redirect_uri: APP.redirect_uri,
    resource: FHIR,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    ...params,
  });
  const callback = await browser.authorize(url, CLINICIAN.username, CLINICIAN.password);
  return { url, callback, checks: { pkceCodeVerifier: verifier, expectedState: state } };
}
