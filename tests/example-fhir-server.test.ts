// The example FHIR server (examples/fhir-server) over real mutual TLS, with tokens from a stand-in
// issuer: certificate binding, SMART scope and patient decisions, category filtering, FHIR R4 shapes.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';

import { Agent, fetch } from 'undici';

import { startExampleFhirServer, type AccessEvent, type RunningExampleFhirServer } from '../examples/fhir-server/server.ts';
import { startTestIssuer, type TestIssuer } from '../examples/fhir-server/test-issuer.ts';
import type { IssuedClientCertificate } from '../src/keystore/pki.ts';
import { assertValidFhir } from './support/fhir-validation.ts';

const AUD = 'https://fhir.example/r4';
const OBS_CATEGORY = 'http://terminology.hl7.org/CodeSystem/observation-category';
const LAB_ONLY = 'patient/Observation.rs?category=laboratory';

let issuer: TestIssuer;
let fhir: RunningExampleFhirServer;
let app: IssuedClientCertificate;
const agents: Record<'app' | 'other' | 'none', Agent> = {} as never;
const events: AccessEvent[] = [];

interface Reply {
  status: number;
  challenge: string | null;
  body: Record<string, unknown> & { entry?: Array<{ resource: { id: string; resourceType: string } }>; total?: number };
}

async function get(path: string, options: { token?: string; as?: keyof typeof agents; authorization?: string } = {}): Promise<Reply> {
  const headers: Record<string, string> = { accept: 'application/fhir+json' };
  if (options.token !== undefined) headers.authorization = `Bearer ${options.token}`;
  if (options.authorization !== undefined) headers.authorization = options.authorization;
  const res = await fetch(`${fhir.url}${path}`, { headers, dispatcher: agents[options.as ?? 'app'] });
  assert.match(res.headers.get('content-type') ?? '', /^application\/fhir\+json/);
  return { status: res.status, challenge: res.headers.get('www-authenticate'), body: (await res.json()) as Reply['body'] };
}

function token(over: Record<string, unknown> = {}): Promise<string> {
  const claims: Record<string, unknown> = {
    aud: AUD,
    sub: 'user-1',
    client_id: 'orchestrator',
    scope: LAB_ONLY,
    patient: 'p1',
    cnf: { 'x5t#S256': app.sha256Thumbprint },
    ...over,
  };
  return issuer.sign(claims);
}

const ids = (reply: Reply) => (reply.body.entry ?? []).map((e) => e.resource.id);

function assertOutcome(reply: Reply, code: string): void {
  assert.equal(reply.body.resourceType, 'OperationOutcome');
  assert.equal((reply.body.issue as Array<{ code: string }>)[0]?.code, code);
  assertValidFhir(reply.body);
}

before(async () => {
  issuer = await startTestIssuer();
  app = await issuer.clientCertificate('app');
  const other = await issuer.clientCertificate('other');
  agents.app = new Agent({ connect: { ca: issuer.caPem, cert: app.certPem, key: app.keyPem } });
  agents.other = new Agent({ connect: { ca: issuer.caPem, cert: other.certPem, key: other.keyPem } });
  agents.none = new Agent({ connect: { ca: issuer.caPem } });
  fhir = await startExampleFhirServer({
    issuer: issuer.issuer,
    audience: AUD,
    tls: { ...issuer.serverTls, caPem: issuer.caPem },
    fetch: issuer.fetch,
    onAccess: (event) => events.push(event),
  });
});

after(async () => {
  await fhir?.stop();
  await Promise.all(Object.values(agents).map((a) => a.close()));
  await issuer?.stop();
});

describe('example FHIR server', () => {
  it('serves /metadata without a token or certificate', async () => {
    const reply = await get('/metadata', { as: 'none' });
    assert.equal(reply.status, 200);
    assert.equal(reply.body.resourceType, 'CapabilityStatement');
    assertValidFhir(reply.body);
  });

  it('its data is valid FHIR R4', async () => {
    const data = JSON.parse(await readFile(new URL('../examples/fhir-server/data.json', import.meta.url), 'utf8'));
    assertValidFhir(data);
    for (const { resource } of data.entry) assertValidFhir(resource);
  });

  it('answers a certificate-bound token over mTLS with the allowed results only', async () => {
    const reply = await get('/Observation?patient=p1', { token: await token() });
    assert.equal(reply.status, 200);
    assert.equal(reply.challenge, null);
    assert.equal(reply.body.resourceType, 'Bundle');
    assert.equal(reply.body.type, 'searchset');
    // p1 has two laboratory and two vital-signs observations: the scope only lets the laboratory ones through.
    assert.deepEqual(ids(reply), ['obs-1', 'obs-2']);
    assert.equal(reply.body.total, 2);
    assertValidFhir(reply.body);
    const event = events.at(-1)!;
    assert.deepEqual(event, { method: 'GET', path: '/Observation', status: 200, clientId: 'orchestrator', subject: 'user-1', scope: LAB_ONLY });
  });

  it('filters by category in either spelling, and 403s a category the token may not see', async () => {
    const t = await token();
    assert.deepEqual(ids(await get('/Observation?patient=p1&category=laboratory', { token: t })), ['obs-1', 'obs-2']);
    assert.deepEqual(
      ids(await get(`/Observation?patient=Patient/p1&category=${encodeURIComponent(`${OBS_CATEGORY}|laboratory`)}`, { token: t })),
      ['obs-1', 'obs-2'],
    );
    const vitals = await get('/Observation?patient=p1&category=vital-signs', { token: t });
    assert.equal(vitals.status, 403);
    assert.equal(vitals.challenge, 'Bearer realm="fhir", error="insufficient_scope", error_description="the token does not allow search on Observation", scope="patient/Observation.s"');
    assertOutcome(vitals, 'forbidden');
  });

  it('without a patient parameter, a patient/ token searches its own patient only', async () => {
    const reply = await get('/Observation?category=laboratory', { token: await token() });
    assert.equal(reply.status, 200);
    assert.deepEqual(ids(reply), ['obs-1', 'obs-2']);
  });

  it('reads: allowed category, other category, other patient', async () => {
    const t = await token();
    const lab = await get('/Observation/obs-1', { token: t });
    assert.equal(lab.status, 200);
    assert.equal(lab.body.id, 'obs-1');
    const vital = await get('/Observation/obs-3', { token: t });
    assert.equal(vital.status, 403);
    assert.equal(vital.challenge, 'Bearer realm="fhir", error="insufficient_scope", error_description="the token does not allow read on Observation", scope="patient/Observation.r"');
    const otherPatient = await get('/Observation/obs-5', { token: t });
    assert.equal(otherPatient.status, 403);
    assert.equal(otherPatient.challenge, 'Bearer realm="fhir", error="insufficient_scope", error_description="the record is outside the token\'s patient context", scope="patient/Observation.r"');
    const missing = await get('/Observation/nope', { token: t });
    assert.equal(missing.status, 404);
    assertOutcome(missing, 'not-found');
  });

  it('403 insufficient_scope for MedicationRequest with only Observation scopes', async () => {
    const t = await token();
    const search = await get('/MedicationRequest?patient=p1', { token: t });
    assert.equal(search.status, 403);
    assert.equal(search.challenge, 'Bearer realm="fhir", error="insufficient_scope", error_description="the token does not allow search on MedicationRequest", scope="patient/MedicationRequest.s"');
    assertOutcome(search, 'forbidden');
    const read = await get('/MedicationRequest/mr-1', { token: t });
    assert.equal(read.status, 403);
    assert.equal(read.challenge, 'Bearer realm="fhir", error="insufficient_scope", error_description="the token does not allow read on MedicationRequest", scope="patient/MedicationRequest.r"');
    // No scope for the type: 403 whether or not the id exists (no existence oracle).
    assert.equal((await get('/MedicationRequest/unknown', { token: t })).status, 403);
  });

  it('401 when the token is presented with another valid certificate', async () => {
    const reply = await get('/Observation?patient=p1', { token: await token(), as: 'other' });
    assert.equal(reply.status, 401);
    assert.equal(reply.challenge, 'Bearer realm="fhir", error="invalid_token", error_description="certificate binding mismatch"');
    assertOutcome(reply, 'login');
  });

  it('401 without a client certificate', async () => {
    const reply = await get('/Observation?patient=p1', { token: await token(), as: 'none' });
    assert.equal(reply.status, 401);
    assert.equal(reply.challenge, 'Bearer realm="fhir", error="invalid_token", error_description="certificate-bound token presented without a client certificate"');
  });

  it('401 without a token (bare challenge), 400 for a malformed header, 401 for another audience', async () => {
    const none = await get('/Patient/p1');
    assert.equal(none.status, 401);
    assert.equal(none.challenge, 'Bearer realm="fhir"');
    assertOutcome(none, 'login');
    const t = await token();
    const twice = await get('/Patient/p1', { authorization: `Bearer ${t} ${t}` });
    assert.equal(twice.status, 400);
    assert.equal(twice.challenge, 'Bearer realm="fhir", error="invalid_request", error_description="exactly one bearer token is allowed"');
    assertOutcome(twice, 'invalid');
    const foreign = await get('/Patient/p1', { token: await token({ aud: 'https://tools.example/api' }) });
    assert.equal(foreign.status, 401);
    assert.equal(foreign.challenge, 'Bearer realm="fhir", error="invalid_token", error_description="token audience is not this resource server"');
    // Unknown paths are not an oracle for unauthenticated callers either.
    assert.equal((await get('/Nothing/here')).status, 401);
  });

  it('a broader patient token reads its patient and medication requests, not another patient', async () => {
    const t = await token({ scope: 'patient/Observation.rs patient/MedicationRequest.rs patient/Patient.rs' });
    const patient = await get('/Patient/p1', { token: t });
    assert.equal(patient.status, 200);
    assert.equal(patient.body.resourceType, 'Patient');
    assert.equal((await get('/Patient/p2', { token: t })).status, 403);
    assert.deepEqual(ids(await get('/Patient', { token: t })), ['p1']);
    assert.deepEqual(ids(await get('/MedicationRequest?patient=p1', { token: t })), ['mr-1']);
    assert.deepEqual(ids(await get('/Observation?patient=p1', { token: t })), ['obs-1', 'obs-2', 'obs-3', 'obs-4']);
    assert.equal((await get('/MedicationRequest?patient=p2', { token: t })).status, 403);
  });

  it('a user/ token searches across patients; results still honour its category filter', async () => {
    const t = await token({ scope: 'user/Observation.rs?category=vital-signs', patient: undefined });
    const reply = await get('/Observation', { token: t });
    assert.equal(reply.status, 200);
    assert.deepEqual(ids(reply), ['obs-3', 'obs-4', 'obs-6']);
    assert.deepEqual(ids(await get('/Observation?subject=Patient/p2', { token: t })), ['obs-6']);
  });

  it('400 for unsupported search parameters; writes: 403 without a write scope, else 405 (read-only data)', async () => {
    const t = await token();
    const reply = await get('/Observation?patient=p1&code=4548-4', { token: t });
    assert.equal(reply.status, 400);
    assertOutcome(reply, 'not-supported');
    const write = async (method: string, path: string, bearer: string) => {
      const res = await fetch(`${fhir.url}${path}`, { method, dispatcher: agents.app, headers: { authorization: `Bearer ${bearer}` } });
      await res.body?.cancel();
      return { status: res.status, challenge: res.headers.get('www-authenticate') ?? '' };
    };
    for (const [method, path] of [['POST', '/Observation'], ['PUT', '/Observation/obs-1'], ['DELETE', '/Observation/obs-1']] as const) {
      const refused = await write(method, path, t);
      assert.equal(refused.status, 403, `${method} with a read-only token`);
      assert.match(refused.challenge, /error="insufficient_scope"/);
    }
    const writer = await token({ scope: 'patient/Observation.cruds' });
    assert.equal((await write('POST', '/Observation', writer)).status, 405);
    assert.equal((await write('OPTIONS', '/Observation', writer)).status, 405);
  });

  it('never puts a token or a patient id into its access events', async () => {
    const t = await token();
    await get('/Observation?patient=p1', { token: t, as: 'other' });
    await get('/Patient/p2', { token: t });
    assert.ok(!JSON.stringify(events).includes(t));
    assert.ok(events.every((e) => !e.path.includes('?')));
    assert.equal(events.at(-1)?.path, '/Patient/:id');
    assert.ok(!JSON.stringify(events).includes('p2'));
  });
});
