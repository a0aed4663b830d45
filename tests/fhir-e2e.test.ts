// The whole flow against the real authorization server and the example FHIR server, over real mTLS:
// a certificate-bound token is accepted with its certificate, refused with another valid certificate
// or none, and scopes decide what is readable (DESIGN.md §2 steps 3 and 8).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as oidc from 'openid-client';
import { Agent, fetch as undiciFetch } from 'undici';

import { startExampleFhirServer, type RunningExampleFhirServer } from '../examples/fhir-server/server.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { Browser } from './support/login-flow.ts';
import { devCa, issueClientCertificate, type KeyPairPem } from './support/pki.ts';
import { relyingParty } from './support/relying-party.ts';
import {
  APP, basicAuth, CARE_TEAM_PATIENTS, CLINICIAN, FHIR, SERVICE, startTestServer, type TestServer,
} from './support/test-server.ts';

const OPAQUE_FHIR = 'https://opaque-fhir.test/r4';
const INTROSPECTOR = { client_id: 'opaque-fhir-introspector', client_secret: 'opaque-fhir-introspector-secret-0123456789' };

describe('end to end: authorization server → certificate-bound token → example FHIR server', () => {
  let ts: TestServer;
  let fhir: RunningExampleFhirServer;
  let opaqueFhir: RunningExampleFhirServer;
  let otherCert: KeyPairPem;
  const agents: Agent[] = [];

  const issuerFetch = (url: string, init?: Record<string, unknown>) => undiciFetch(url, { ...init, dispatcher: ts.dispatcher } as never);

  async function get(server: RunningExampleFhirServer, path: string, token: string | undefined, cert: KeyPairPem | 'test-client' | undefined) {
    const material = cert === 'test-client' ? { cert: ts.clientCert.certPem, key: ts.clientCert.keyPem } : cert ? { cert: cert.certPem, key: cert.keyPem } : {};
    const dispatcher = new Agent({ connect: { ca: ts.caPem, ...material } });
    agents.push(dispatcher);
    const res = await undiciFetch(`${server.url}${path}`, { headers: token ? { authorization: `Bearer ${token}` } : {}, dispatcher });
    return { status: res.status, challenge: res.headers.get('www-authenticate'), body: await res.json() as Record<string, unknown> };
  }

  async function serviceToken(resource: string): Promise<string> {
    const res = await ts.fetch(ts.endpoint('/token'), {
      method: 'POST',
      body: new URLSearchParams({ grant_type: 'client_credentials', resource, scope: 'system/Patient.rs' }).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth(SERVICE.client_id, SERVICE.client_secret) },
    });
    const body = await res.json() as { access_token: string };
    assert.equal(res.status, 200, JSON.stringify(body));
    return body.access_token;
  }

  before(async () => {
    ts = await startTestServer();
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      resourceServers: [{
        identifier: OPAQUE_FHIR, name: 'FHIR with opaque tokens', scope: 'system/Patient.rs', accessTokenFormat: 'opaque',
        introspectionClientId: INTROSPECTOR.client_id,
      }],
      clients: [
        { client_id: INTROSPECTOR.client_id, client_secret: INTROSPECTOR.client_secret, grant_types: ['client_credentials'], response_types: [], redirect_uris: [] },
        {
          client_id: SERVICE.client_id, client_secret: SERVICE.client_secret, grant_types: ['client_credentials'], response_types: [], redirect_uris: [],
          resource_scope: 'system/Patient.rs tools/run',
        },
      ],
    }));
    const tls = { certPem: ts.server.tls.certPem, keyPem: ts.server.tls.keyPem, caPem: ts.server.tls.clientCaPem };
    fhir = await startExampleFhirServer({ issuer: ts.issuer, audience: FHIR, tls, fetch: issuerFetch });
    opaqueFhir = await startExampleFhirServer({
      issuer: ts.issuer, audience: OPAQUE_FHIR, tls, fetch: issuerFetch,
      introspection: { endpoint: `${ts.issuer}/token/introspection`, clientId: INTROSPECTOR.client_id, clientSecret: INTROSPECTOR.client_secret, fetch: issuerFetch },
    });
    otherCert = await issueClientCertificate(await devCa(ts.keysDir), 'test-client');
  });
  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await fhir?.stop();
    await opaqueFhir?.stop();
    await ts?.stop();
  });

  test('a bound JWT works with its certificate; another valid certificate or none gets 401', async () => {
    const token = await serviceToken(FHIR);
    const ok = await get(fhir, '/Patient/p1', token, 'test-client');
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.body.resourceType, 'Patient');

    const stolen = await get(fhir, '/Patient/p1', token, otherCert);
    assert.equal(stolen.status, 401);
    assert.match(stolen.challenge ?? '', /^Bearer realm="[^"]+", error="invalid_token"/);
    const bare = await get(fhir, '/Patient/p1', token, undefined);
    assert.equal(bare.status, 401);
    assert.match(bare.challenge ?? '', /error="invalid_token"/);
    const none = await get(fhir, '/Patient/p1', undefined, 'test-client');
    assert.equal(none.status, 401);
    assert.equal(none.challenge, 'Bearer realm="fhir"');
  });

  test('a clinician app token (SMART launch) reads its patient\'s observations; MedicationRequest is 403 insufficient_scope', async () => {
    const app = await relyingParty(ts);
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(app, {
      redirect_uri: APP.redirect_uri, scope: 'openid launch/patient patient/Observation.rs', aud: FHIR, state,
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
    });
    const callback = await new Browser(ts).authorize(url, CLINICIAN.username, CLINICIAN.password, { patient: CARE_TEAM_PATIENTS[0]!.id });
    const tokens = await oidc.authorizationCodeGrant(app, callback, { pkceCodeVerifier: verifier, expectedState: state });
    assert.equal(tokens.patient, 'p1');

    const labs = await get(fhir, '/Observation?patient=p1&category=laboratory', tokens.access_token, 'test-client');
    assert.equal(labs.status, 200, JSON.stringify(labs.body));
    assert.equal(labs.body.resourceType, 'Bundle');
    assert.ok((labs.body.total as number) >= 1);
    const otherPatient = await get(fhir, '/Observation?patient=p2', tokens.access_token, 'test-client');
    assert.equal(otherPatient.status, 403, 'patient/ scopes cover the patient in context only');
    const meds = await get(fhir, '/MedicationRequest?patient=p1', tokens.access_token, 'test-client');
    assert.equal(meds.status, 403);
    assert.match(meds.challenge ?? '', /error="insufficient_scope"/);
    assert.match(meds.challenge ?? '', /scope="patient\/MedicationRequest\.s"/);
  });

  test('an opaque token goes through introspection by the resource server\'s own client', async () => {
    const token = await serviceToken(OPAQUE_FHIR);
    assert.equal(token.split('.').length, 1, 'opaque');
    const ok = await get(opaqueFhir, '/Patient/p2', token, 'test-client');
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const stolen = await get(opaqueFhir, '/Patient/p2', token, otherCert);
    assert.equal(stolen.status, 401);

    // Another client may not introspect it (zero trust): it learns only "inactive".
    const res = await ts.fetch(ts.endpoint('/token/introspection'), {
      method: 'POST',
      body: new URLSearchParams({ token }).toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded', authorization: basicAuth(APP.client_id, APP.client_secret) },
    });
    assert.deepEqual(await res.json(), { active: false });
  });
});
