// The resource-server library (src/resource) against a stand-in issuer served over real HTTPS: JWKS
// from discovery, RFC 9068 checks, RFC 8705 binding, SMART scope decisions, introspection over HTTPS.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { after, before, describe, it } from 'node:test';

import { SignJWT } from 'jose';

import { startTestIssuer, type TestIssuer } from '../examples/fhir-server/test-issuer.ts';
import type { IssuedClientCertificate } from '../src/keystore/pki.ts';
import {
  bearerToken,
  createResourceVerifier,
  ResourceAccessError,
  type ResourceVerifier,
  type ResourceVerifierOptions,
  type VerifiedToken,
} from '../src/resource/index.ts';

const AUD = 'https://fhir.example/r4';
const LAB = 'patient/Observation.rs?category=laboratory';

let issuer: TestIssuer;
let app: IssuedClientCertificate;
let other: IssuedClientCertificate;
let appDer: Buffer;
let otherDer: Buffer;
let verifier: ResourceVerifier;

const now = () => Math.floor(Date.now() / 1000);
const der = (pem: string) => new X509Certificate(pem).raw;
const b64 = (value: unknown) => Buffer.from(JSON.stringify(value)).toString('base64url');

function claims(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    aud: AUD,
    sub: 'user-1',
    client_id: 'orchestrator',
    scope: `openid ${LAB} patient/Patient.r tools/run`,
    patient: 'p1',
    fhirUser: 'Practitioner/dr-1',
    acr: 'urn:clinical-authz:acr:mfa',
    amr: ['pwd', 'hwk'],
    auth_time: now() - 60,
    act: { sub: 'orchestrator' },
    cnf: { 'x5t#S256': app.sha256Thumbprint },
    ...over,
  };
}

function verifierWith(options: Partial<ResourceVerifierOptions> = {}): ResourceVerifier {
  return createResourceVerifier({ issuer: issuer.issuer, audience: AUD, fetch: issuer.fetch, ...options });
}

/** `cert`: null for a connection without a client certificate. */
function authenticate(v: ResourceVerifier, token: string, cert: Buffer | null = appDer): Promise<VerifiedToken> {
  return v.authenticate({ authorization: `Bearer ${token}`, clientCertificateDer: cert ?? undefined });
}

/** Asserts a ResourceAccessError with this status, error and (optionally) exact challenge for realm "fhir". */
async function refused(
  action: Promise<unknown> | (() => unknown),
  status: number,
  error: string | undefined,
  challenge?: string,
): Promise<ResourceAccessError> {
  let caught: unknown;
  try {
    await (typeof action === 'function' ? action() : action);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught instanceof ResourceAccessError, `expected a ResourceAccessError, got ${String(caught)}`);
  assert.equal(caught.status, status, caught.message);
  assert.equal(caught.error, error);
  if (challenge !== undefined) assert.equal(caught.wwwAuthenticate('fhir'), challenge);
  return caught;
}

const invalidToken = (description: string) =>
  `Bearer realm="fhir", error="invalid_token", error_description="${description}"`;

before(async () => {
  issuer = await startTestIssuer();
  app = await issuer.clientCertificate('app');
  other = await issuer.clientCertificate('other');
  appDer = der(app.certPem);
  otherDer = der(other.certPem);
  // An unknown kid refetches at once, so tokens of a rotated key verify (see the cooldown test).
  verifier = verifierWith({ jwksCooldownSeconds: 0 });
});

after(async () => {
  await issuer?.stop();
});

describe('authenticate: JWT access tokens', () => {
  it('accepts a valid, certificate-bound token and maps its claims; keys come from discovery, cached', async () => {
    const before = { ...issuer.hits };
    const token = await issuer.sign(claims());
    const verified = await authenticate(verifier, token);
    assert.equal(verified.format, 'jwt');
    assert.equal(verified.subject, 'user-1');
    assert.equal(verified.clientId, 'orchestrator');
    assert.equal(verified.patient, 'p1');
    assert.equal(verified.fhirUser, 'Practitioner/dr-1');
    assert.equal(verified.acr, 'urn:clinical-authz:acr:mfa');
    assert.deepEqual(verified.amr, ['pwd', 'hwk']);
    assert.deepEqual(verified.actor, { sub: 'orchestrator' });
    assert.deepEqual(verified.audience, [AUD]);
    assert.equal(verified.certThumbprint, app.sha256Thumbprint);
    assert.equal(verified.scope, `openid ${LAB} patient/Patient.r tools/run`);
    // SMART scopes parsed (named and resource); the custom `tools/run` stays only in `scope`.
    assert.deepEqual(verified.scopes.map((s) => s.text), ['openid', LAB, 'patient/Patient.r']);
    assert.ok(verified.expiresAt > now());
    assert.ok(!JSON.stringify(verified).includes(token), 'the token itself is not kept');

    await authenticate(verifier, await issuer.sign(claims()));
    assert.equal(issuer.hits.discovery - before.discovery, 1);
    assert.equal(issuer.hits.jwks - before.jwks, 1);
  });

  it('takes the scheme case-insensitively and normalises Patient/x in the patient claim', async () => {
    const token = await issuer.sign(claims({ patient: 'Patient/p1' }));
    const verified = await verifier.authenticate({ authorization: `bEaReR ${token}`, clientCertificateDer: appDer });
    assert.equal(verified.patient, 'p1');
  });

  it('a request without a token gets a bare challenge and no error code (RFC 6750 §3.1)', async () => {
    for (const authorization of [undefined, '', []]) {
      const err = await refused(verifier.authenticate({ authorization, clientCertificateDer: appDer }), 401, undefined, 'Bearer realm="fhir"');
      assert.equal(err.challenges, true);
    }
  });

  it('a malformed Authorization header is 400 invalid_request', async () => {
    const token = await issuer.sign(claims());
    const cases: Array<[string | string[], string]> = [
      [`Bearer ${token} ${token}`, 'exactly one bearer token is allowed'],
      [`Bearer ${token},${token}`, 'exactly one bearer token is allowed'],
      [[`Bearer ${token}`, `Bearer ${token}`], 'more than one Authorization header'],
      [`Basic ${Buffer.from('a:b').toString('base64')}`, 'the Authorization scheme must be Bearer'],
      [`DPoP ${token}`, 'the Authorization scheme must be Bearer'],
      ['Bearer', 'the Bearer credentials are missing'],
      ['Bearer a"b', 'the bearer token has characters outside the b64token syntax'],
    ];
    for (const [authorization, description] of cases) {
      await refused(
        verifier.authenticate({ authorization, clientCertificateDer: appDer }),
        400,
        'invalid_request',
        `Bearer realm="fhir", error="invalid_request", error_description="${description}"`,
      );
    }
  });

  it('refuses expired tokens, within the clock tolerance only', async () => {
    const expired = await issuer.sign(claims({ iat: now() - 400, exp: now() - 60 }));
    await refused(authenticate(verifier, expired), 401, 'invalid_token', invalidToken('token expired'));
    await authenticate(verifier, await issuer.sign(claims({ iat: now() - 400, exp: now() - 2 })));
    const future = await issuer.sign(claims({ iat: now() + 120, exp: now() + 400 }));
    await refused(authenticate(verifier, future), 401, 'invalid_token', invalidToken('token issued in the future'));
  });

  it('refuses another audience or issuer; accepts an audience list that includes ours', async () => {
    await refused(
      authenticate(verifier, await issuer.sign(claims({ aud: 'https://tools.example/api' }))),
      401, 'invalid_token', invalidToken('token audience is not this resource server'),
    );
    await authenticate(verifier, await issuer.sign(claims({ aud: ['https://tools.example/api', AUD] })));
    await refused(
      authenticate(verifier, await issuer.sign(claims({ iss: 'https://evil.example' }))),
      401, 'invalid_token', invalidToken('token issuer is not trusted'),
    );
  });

  it('requires typ at+jwt (RFC 9068): an ID token or plain JWT is refused', async () => {
    for (const typ of ['JWT', 'id_token+jwt']) {
      await refused(
        authenticate(verifier, await issuer.sign(claims(), { typ })),
        401, 'invalid_token', invalidToken('token type is not at+jwt'),
      );
    }
    await authenticate(verifier, await issuer.sign(claims(), { typ: 'application/at+jwt' }));
  });

  it('requires client_id, jti, exp and iat', async () => {
    for (const claim of ['client_id', 'jti', 'exp', 'iat']) {
      await refused(
        authenticate(verifier, await issuer.sign(claims({ [claim]: undefined }))),
        401, 'invalid_token', invalidToken(`invalid or missing ${claim} claim`),
      );
    }
  });

  it('refuses alg none and HS256 keyed with the public key', async () => {
    const payload = { iss: issuer.issuer, iat: now(), exp: now() + 300, jti: 'x', ...claims() };
    const none = `${b64({ alg: 'none', typ: 'at+jwt' })}.${b64(payload)}.`;
    await refused(authenticate(verifier, none), 401, 'invalid_token', invalidToken('token signing algorithm not allowed'));
    const key = issuer.currentKey();
    const hs256 = await new SignJWT(payload)
      .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: key.kid })
      .sign(new TextEncoder().encode(JSON.stringify(key.publicJwk)));
    await refused(authenticate(verifier, hs256), 401, 'invalid_token', invalidToken('token signing algorithm not allowed'));
  });

  it('refuses a tampered payload', async () => {
    const [header, , signature] = (await issuer.sign(claims())).split('.');
    const widened = b64({ iss: issuer.issuer, iat: now(), exp: now() + 300, jti: 'x', ...claims({ scope: 'patient/*.cruds' }) });
    await refused(
      authenticate(verifier, `${header}.${widened}.${signature}`),
      401, 'invalid_token', invalidToken('token signature is invalid'),
    );
  });

  it('refuses a key that is not published, without refetching the JWKS within the cooldown', async () => {
    const v = verifierWith(); // default cooldown: 30 s
    await authenticate(v, await issuer.sign(claims())); // keys loaded
    const jwksHits = issuer.hits.jwks;
    const rogue = await issuer.sign(claims(), { key: await issuer.unpublishedKey() });
    await refused(authenticate(v, rogue), 401, 'invalid_token', invalidToken('token signing key is unknown'));
    await refused(authenticate(v, rogue), 401, 'invalid_token');
    assert.equal(issuer.hits.jwks, jwksHits);
    // With no cooldown each unknown kid refetches, and still refuses.
    await refused(authenticate(verifier, rogue), 401, 'invalid_token', invalidToken('token signing key is unknown'));
  });

  it('picks up a rotated key without a restart (an unknown kid refetches the JWKS)', async () => {
    const v = verifierWith({ jwksCooldownSeconds: 0 });
    const oldToken = await issuer.sign(claims());
    await authenticate(v, oldToken);
    const jwksHits = issuer.hits.jwks;
    const rotated = await issuer.rotateKey();
    const newToken = await issuer.sign(claims());
    assert.notEqual(rotated.kid, undefined);
    await authenticate(v, newToken);
    assert.equal(issuer.hits.jwks, jwksHits + 1);
    await authenticate(v, oldToken); // the old key stays published
  });

  it('fails closed with 503 when the keys cannot be fetched', async () => {
    issuer.failing.jwks = true;
    try {
      const v = verifierWith();
      const err = await refused(authenticate(v, await issuer.sign(claims())), 503, 'temporarily_unavailable');
      assert.equal(err.challenges, false);
      assert.equal(err.retryAfter, 5);
    } finally {
      issuer.failing.jwks = false;
    }
    const unreachable = createResourceVerifier({ issuer: 'https://127.0.0.1:1', audience: AUD, fetch: issuer.fetch });
    await refused(authenticate(unreachable, await issuer.sign(claims())), 503, 'temporarily_unavailable');
    // Malformed tokens and forbidden algorithms are refused before any key fetch: 401, not 503.
    await refused(authenticate(unreachable, 'a.b.c'), 401, 'invalid_token', invalidToken('malformed token'));
    await refused(authenticate(unreachable, `${b64({ alg: 'none' })}.${b64({})}.`), 401, 'invalid_token', invalidToken('token signing algorithm not allowed'));
  });

  it('refuses a discovery document naming another issuer', async () => {
    const v = createResourceVerifier({ issuer: `${issuer.issuer}/`, audience: AUD, fetch: issuer.fetch });
    await refused(authenticate(v, await issuer.sign(claims({ iss: `${issuer.issuer}/` }))), 503, 'temporarily_unavailable');
  });
});

describe('authenticate: certificate binding (RFC 8705 §3)', () => {
  it('refuses a token presented with another certificate', async () => {
    await refused(
      authenticate(verifier, await issuer.sign(claims()), otherDer),
      401, 'invalid_token', invalidToken('certificate binding mismatch'),
    );
  });

  it('refuses a bound token presented without a certificate', async () => {
    await refused(
      authenticate(verifier, await issuer.sign(claims()), null),
      401, 'invalid_token', invalidToken('certificate-bound token presented without a client certificate'),
    );
  });

  it('refuses an unbound token unless binding is optional', async () => {
    const unbound = await issuer.sign(claims({ cnf: undefined }));
    await refused(authenticate(verifier, unbound), 401, 'invalid_token', invalidToken('token is not bound to a client certificate'));
    const lenient = verifierWith({ requireCertificateBinding: false });
    const verified = await authenticate(lenient, unbound, null);
    assert.equal(verified.certThumbprint, undefined);
    // Optional binding never waives a binding the token does carry.
    await refused(authenticate(lenient, await issuer.sign(claims()), otherDer), 401, 'invalid_token');
  });

  it('refuses confirmation methods it cannot check (DPoP jkt) and malformed thumbprints', async () => {
    await refused(
      authenticate(verifier, await issuer.sign(claims({ cnf: { jkt: 'a'.repeat(43) } }))),
      401, 'invalid_token', invalidToken('unsupported token confirmation method'),
    );
    await refused(
      authenticate(verifier, await issuer.sign(claims({ cnf: { 'x5t#S256': 'short' } }))),
      401, 'invalid_token', invalidToken('malformed certificate thumbprint in token'),
    );
  });
});

describe('authenticate: opaque tokens (introspection over HTTPS)', () => {
  const active = (over: Record<string, unknown> = {}) => ({
    active: true,
    token_type: 'Bearer',
    iss: issuer.issuer,
    aud: AUD,
    client_id: 'app',
    sub: 'user-1',
    scope: LAB,
    patient: 'p1',
    exp: now() + 300,
    cnf: { 'x5t#S256': app.sha256Thumbprint },
    ...over,
  });
  const withIntrospection = (over: Partial<ResourceVerifierOptions['introspection']> = {}) =>
    verifierWith({ introspection: { ...issuer.introspection, fetch: issuer.fetch, ...over } });

  it('accepts an active token and caches the answer', async () => {
    const v = withIntrospection();
    const token = issuer.opaqueToken(active());
    const hits = issuer.hits.introspection;
    const verified = await authenticate(v, token);
    assert.equal(verified.format, 'opaque');
    assert.equal(verified.clientId, 'app');
    assert.equal(verified.patient, 'p1');
    assert.equal(verified.certThumbprint, app.sha256Thumbprint);
    assert.deepEqual(verified.scopes.map((s) => s.text), [LAB]);
    await authenticate(v, token);
    assert.equal(issuer.hits.introspection, hits + 1, 'second request served from the cache');
    // The cache holds claims, not decisions: the binding is checked on every request.
    await refused(authenticate(v, token, otherDer), 401, 'invalid_token', invalidToken('certificate binding mismatch'));
  });

  it('refuses inactive, foreign-audience and non-bearer tokens', async () => {
    const v = withIntrospection();
    await refused(authenticate(v, 'unknown-opaque-token'), 401, 'invalid_token', invalidToken('token is not active'));
    await refused(authenticate(v, issuer.opaqueToken(active({ aud: 'https://tools.example/api' }))), 401, 'invalid_token', invalidToken('token audience is not this resource server'));
    await refused(authenticate(v, issuer.opaqueToken(active({ aud: undefined }))), 401, 'invalid_token');
    await refused(authenticate(v, issuer.opaqueToken(active({ token_type: 'DPoP' }))), 401, 'invalid_token', invalidToken('token is not a bearer token'));
    await refused(authenticate(v, issuer.opaqueToken(active({ iss: 'https://evil.example' }))), 401, 'invalid_token');
    await refused(authenticate(v, issuer.opaqueToken(active({ exp: undefined }))), 401, 'invalid_token', invalidToken('malformed or missing exp claim'));
    await refused(authenticate(v, issuer.opaqueToken(active({ client_id: undefined }))), 401, 'invalid_token', invalidToken('malformed or missing client_id claim'));
    await authenticate(v, issuer.opaqueToken(active({ aud: ['https://tools.example/api', AUD] })));
  });

  it('does not cache past the token expiry; refuses expired answers', async () => {
    const v = withIntrospection();
    // Expiring now (still within the clock tolerance): accepted, but every request asks again.
    const token = issuer.opaqueToken(active({ exp: now() }));
    const hits = issuer.hits.introspection;
    await authenticate(v, token);
    await authenticate(v, token);
    assert.equal(issuer.hits.introspection, hits + 2);
    await refused(authenticate(v, issuer.opaqueToken(active({ exp: now() - 60 }))), 401, 'invalid_token', invalidToken('token expired'));
  });

  it('fails closed (503) when the endpoint fails, is unreachable or refuses our credentials', async () => {
    issuer.failing.introspection = true;
    try {
      await refused(authenticate(withIntrospection(), issuer.opaqueToken(active())), 503, 'temporarily_unavailable');
    } finally {
      issuer.failing.introspection = false;
    }
    await refused(
      authenticate(withIntrospection({ endpoint: 'https://127.0.0.1:1/introspect' }), issuer.opaqueToken(active())),
      503, 'temporarily_unavailable',
    );
    await refused(
      authenticate(withIntrospection({ clientSecret: 'wrong' }), issuer.opaqueToken(active())),
      503, 'temporarily_unavailable',
    );
  });

  it('refuses opaque tokens when no introspection is configured', async () => {
    await refused(authenticate(verifier, issuer.opaqueToken(active())), 401, 'invalid_token', invalidToken('unsupported token format'));
  });
});

describe('authorize: SMART scopes and patient context', () => {
  const lab = { category: ['laboratory', 'http://terminology.hl7.org/CodeSystem/observation-category|laboratory'] };
  const vitals = { category: ['vital-signs'] };
  const insufficient = (description: string, scope: string) =>
    `Bearer realm="fhir", error="insufficient_scope", error_description="${description}", scope="${scope}"`;
  let token: VerifiedToken;

  before(async () => {
    token = await authenticate(verifier, await issuer.sign(claims()));
  });

  it('allows what a scope allows and names the scope', () => {
    assert.deepEqual(
      verifier.authorize(token, { resourceType: 'Observation', interaction: 'r', params: lab, patientId: 'p1' }),
      { scope: LAB, context: 'patient' },
    );
    assert.deepEqual(
      verifier.authorize(token, { resourceType: 'Patient', interaction: 'r', patientId: 'Patient/p1' }),
      { scope: 'patient/Patient.r', context: 'patient' },
    );
  });

  it('403 insufficient_scope with the minimal scope needed', async () => {
    await refused(
      () => verifier.authorize(token, { resourceType: 'MedicationRequest', interaction: 'r', patientId: 'p1' }),
      403, 'insufficient_scope',
      insufficient('the token does not allow read on MedicationRequest', 'patient/MedicationRequest.r'),
    );
    await refused(
      () => verifier.authorize(token, { resourceType: 'Observation', interaction: 'r', params: vitals, patientId: 'p1' }),
      403, 'insufficient_scope',
      insufficient('the token does not allow read on Observation', 'patient/Observation.r'),
    );
    await refused(
      () => verifier.authorize(token, { resourceType: 'Patient', interaction: 'u', patientId: 'p1' }),
      403, 'insufficient_scope',
      insufficient('the token does not allow update on Patient', 'patient/Patient.u'),
    );
  });

  it('patient/ scopes allow only the token\'s patient', async () => {
    await refused(
      () => verifier.authorize(token, { resourceType: 'Observation', interaction: 'r', params: lab, patientId: 'Patient/p2' }),
      403, 'insufficient_scope',
      insufficient('the record is outside the token\'s patient context', 'patient/Observation.r'),
    );
    await refused(() => verifier.authorize(token, { resourceType: 'Observation', interaction: 'r', params: lab }), 403, 'insufficient_scope');
    const noPatient = await authenticate(verifier, await issuer.sign(claims({ patient: undefined })));
    await refused(
      () => verifier.authorize(noPatient, { resourceType: 'Observation', interaction: 'r', params: lab, patientId: 'p1' }),
      403, 'insufficient_scope',
      insufficient('patient/ scopes need a patient in the token', 'patient/Observation.r'),
    );
  });

  it('user/ and system/ scopes need no patient', async () => {
    const user = await authenticate(verifier, await issuer.sign(claims({ scope: 'user/Observation.rs', patient: undefined })));
    assert.deepEqual(
      verifier.authorize(user, { resourceType: 'Observation', interaction: 'r', params: vitals, patientId: 'p2' }),
      { scope: 'user/Observation.rs', context: 'user' },
    );
    const system = await authenticate(verifier, await issuer.sign(claims({ scope: 'system/*.rs', sub: 'svc', client_id: 'svc', patient: undefined })));
    assert.deepEqual(
      verifier.authorize(system, { resourceType: 'MedicationRequest', interaction: 's' }),
      { scope: 'system/*.rs', context: 'system' },
    );
    await refused(
      () => verifier.authorize(system, { resourceType: 'MedicationRequest', interaction: 'c' }),
      403, 'insufficient_scope',
      insufficient('the token does not allow create on MedicationRequest', 'system/MedicationRequest.c'),
    );
  });

  it('searches: a category-restricted scope filters results; a contradicting search is 403', async () => {
    const all = verifier.authorizeSearch(token, { resourceType: 'Observation', params: { patient: 'p1' }, patientId: 'p1' });
    assert.deepEqual(all.scopes, [LAB]);
    assert.equal(all.patient, 'p1');
    assert.equal(all.permits({ patientId: 'p1', params: lab }), true);
    assert.equal(all.permits({ patientId: 'p1', params: vitals }), false);
    assert.equal(all.permits({ patientId: 'p2', params: lab }), false);

    const labs = verifier.authorizeSearch(token, { resourceType: 'Observation', params: { category: 'laboratory' } });
    assert.equal(labs.patient, 'p1', 'no patient parameter: limited to the token\'s patient');
    assert.equal(labs.permits({ patientId: 'p1', params: lab }), true);

    await refused(
      () => verifier.authorizeSearch(token, { resourceType: 'Observation', params: { category: 'vital-signs' } }),
      403, 'insufficient_scope',
      insufficient('the token does not allow search on Observation', 'patient/Observation.s'),
    );
    await refused(
      () => verifier.authorizeSearch(token, { resourceType: 'Observation', params: { patient: 'p2' }, patientId: 'p2' }),
      403, 'insufficient_scope',
      insufficient('the record is outside the token\'s patient context', 'patient/Observation.s'),
    );
    await refused(
      () => verifier.authorizeSearch(token, { resourceType: 'MedicationRequest', params: {} }),
      403, 'insufficient_scope',
      insufficient('the token does not allow search on MedicationRequest', 'patient/MedicationRequest.s'),
    );
  });
});

describe('step-up and challenges', () => {
  it('requireAuthentication answers RFC 9470 insufficient_user_authentication', async () => {
    const token = await authenticate(verifier, await issuer.sign(claims({ acr: 'urn:clinical-authz:acr:pwd', auth_time: now() - 3600 })));
    await refused(
      () => verifier.requireAuthentication(token, { acrValues: ['urn:clinical-authz:acr:mfa'] }),
      401, 'insufficient_user_authentication',
      'Bearer realm="fhir", error="insufficient_user_authentication", error_description="a stronger authentication level is required", acr_values="urn:clinical-authz:acr:mfa"',
    );
    await refused(
      () => verifier.requireAuthentication(token, { maxAgeSeconds: 300 }),
      401, 'insufficient_user_authentication',
      'Bearer realm="fhir", error="insufficient_user_authentication", error_description="more recent authentication is required", max_age="300"',
    );
    verifier.requireAuthentication(token, { acrValues: ['urn:clinical-authz:acr:pwd'], maxAgeSeconds: 7200 });
  });

  it('challenge parameters are quoted safely and never carry the token', async () => {
    const err = new ResourceAccessError(401, 'invalid_token', 'a "quoted" \\ value\r\nX-Injected: 1');
    assert.equal(err.wwwAuthenticate('my "realm"'), 'Bearer realm="my \\"realm\\"", error="invalid_token", error_description="a \\"quoted\\" \\\\ valueX-Injected: 1"');
    const token = await issuer.sign(claims({ aud: 'https://elsewhere.example' }));
    const refusal = await refused(authenticate(verifier, token), 401, 'invalid_token');
    assert.ok(!refusal.message.includes(token) && !refusal.wwwAuthenticate().includes(token));
    assert.equal(refusal.wwwAuthenticate(), 'Bearer error="invalid_token", error_description="token audience is not this resource server"');
  });

  it('bearerToken extracts exactly one b64token', () => {
    assert.equal(bearerToken('Bearer abc.DEF-_~+/=='), 'abc.DEF-_~+/==');
    assert.equal(bearerToken(['bearer xyz']), 'xyz');
  });
});
