// `audit verify` and `audit export` as operators run them: a real CLI process on a database holding
// events written with the keys of its KEYS_DIR (a fresh PostgreSQL database when DATABASE_URL is set,
// else PGlite under DATA_DIR). The FHIR export is validated against the R4 structure definitions.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import type { AuditEventInput, AuditRequestContext } from '../src/audit/event.ts';
import { toFhirAuditEvent, type FhirAuditEvent } from '../src/audit/export-fhir.ts';
import { readAuditEvents, toExportedEvent, type ExportedAuditEvent } from '../src/audit/export-jsonl.ts';
import { deriveAuditKeys, type AuditKeys } from '../src/audit/keys.ts';
import { AuditLog, type StoredAuditRow } from '../src/audit/log.ts';
import type { Db } from '../src/db/index.ts';
import { loadOrCreateSecrets } from '../src/keystore/secrets.ts';
import { assertOneErrorLine, cliDatabase, cliEnv, failure, result, runCli, tempDir, type Run } from './support/cli.ts';
import { assertValidFhir } from './support/fhir-validation.ts';

const RAW_PATIENT = 'Patient/12345';
const OTHER_PATIENT = 'Patient/67890';
const IP = '198.51.100.7';
const FHIR_SERVER = 'https://fhir.example/r4';

interface AuditWorkspace {
  dir: string;
  keys: AuditKeys;
  run(args: string[]): Promise<Run>;
  /** The workspace's database; PGlite is opened for fn only (never while a CLI process runs). */
  withDb<T>(fn: (db: Db) => Promise<T>): Promise<T>;
  /** Records events with the keys of KEYS_DIR, as the server would. */
  record(events: [AuditEventInput, AuditRequestContext?][]): Promise<void>;
  rows(): Promise<StoredAuditRow[]>;
}

async function auditWorkspace(t: TestContext, options: { secrets?: boolean; database?: boolean } = {}): Promise<AuditWorkspace> {
  const dir = await tempDir(t, 'audit-cli-test-');
  const secrets = options.secrets === false ? undefined : await loadOrCreateSecrets(dir, { allowGenerate: true });
  const keys = deriveAuditKeys(secrets?.auditKey ?? randomBytes(32).toString('base64url'));
  let url: string | undefined;
  let withDb: AuditWorkspace['withDb'];
  if (options.database === false) {
    withDb = () => Promise.reject(new Error('this workspace has no database'));
  } else {
    ({ url, withDb } = await cliDatabase(t, dir));
  }
  const env = cliEnv(dir, url);
  return {
    dir,
    keys,
    run: (args) => runCli(env, args),
    withDb,
    record: (events) => withDb(async (db) => {
      const audit = new AuditLog(db, keys, undefined);
      for (const [event, context] of events) await audit.record(event, undefined, context);
    }),
    rows: () => withDb(async (db) => (await db.query<StoredAuditRow>('SELECT * FROM audit_events ORDER BY seq')).rows),
  };
}

async function asTamperer(db: Db, sql: string): Promise<void> {
  await db.query('ALTER TABLE audit_events DISABLE TRIGGER USER');
  try {
    await db.query(sql);
  } finally {
    await db.query('ALTER TABLE audit_events ENABLE TRIGGER USER');
  }
}

const EXPORT_KEYS = ['seq', 'id', 'occurredAt', 'type', 'outcome', 'severity', 'actorUser', 'actorClient', 'actorCertThumbprint',
  'targetClient', 'targetAudience', 'patientPseudonym', 'rule', 'requestId', 'sourceIp', 'details', 'prevHash', 'hash'];

function jsonLines(run: Run): Record<string, unknown>[] {
  assert.equal(run.code, 0, `exit code 0 expected; stderr: ${run.stderr}`);
  assert.equal(run.stderr, '');
  if (run.stdout === '') return [];
  assert.ok(run.stdout.endsWith('\n'), 'every line ends with a newline');
  return run.stdout.slice(0, -1).split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
}

interface AuditBundle {
  resourceType: string;
  type: string;
  entry?: { fullUrl: string; resource: FhirAuditEvent }[];
}

function bundleOf(run: Run): AuditBundle {
  assert.equal(run.code, 0, `exit code 0 expected; stderr: ${run.stderr}`);
  assert.equal(run.stderr, '');
  return JSON.parse(run.stdout) as AuditBundle;
}

// Five events, a pause (the boundary between "early" and "late"), five more.
const EARLY: [AuditEventInput, AuditRequestContext?][] = [
  [{ type: 'login.success', outcome: 'success', rule: 'password', actor: { userId: 'u-1', clientId: 'ward-app' }, details: { acr: 'urn:clinical-authz:acr:pwd', amr: ['pwd'] } },
    { requestId: 'req-login', sourceIp: IP }],
  [{ type: 'login.failed', outcome: 'failure', rule: 'password', actor: { clientId: 'ward-app' }, details: { reason: 'bad_password' } },
    { requestId: 'req-login-2', sourceIp: IP }],
  [{ type: 'token.issued', outcome: 'success', rule: 'oidc.grant', actor: { userId: 'u-1', clientId: 'ward-app', certThumbprint: 'thumb-abc' },
    target: { audience: FHIR_SERVER, patientId: RAW_PATIENT }, details: { scope: 'launch/patient patient/Observation.rs', lifetime: 300, access_token: 'secret-token-value' } },
  { requestId: 'req-token', sourceIp: IP }],
  [{ type: 'breakglass.started', outcome: 'success', severity: 'high', rule: 'breakglass.emergency', actor: { userId: 'u-1', clientId: 'ward-app' },
    target: { patientId: RAW_PATIENT }, details: { purpose_of_use: 'ETREAT' } }, { requestId: 'req-bg', sourceIp: IP }],
  [{ type: 'breakglass.ended', outcome: 'success', severity: 'high', rule: 'breakglass.emergency', actor: { userId: 'u-1' },
    target: { patientId: RAW_PATIENT }, details: { purpose_of_use: 'BTG' } }],
];
const LATE: [AuditEventInput, AuditRequestContext?][] = [
  [{ type: 'introspection.inactive', outcome: 'failure', rule: 'oauth.introspection', actor: { clientId: 'fhir-server' } }],
  [{ type: 'rate_limit.exceeded', outcome: 'denied', rule: 'rate_limit.client', actor: { clientId: 'batch-svc' }, details: { points: 1200 } },
    { requestId: 'req-rl', sourceIp: '2001:db8::7' }],
  [{ type: 'token.replayed', outcome: 'denied', severity: 'high', rule: 'oidc.single_use', actor: { clientId: 'ward-app' }, target: { patientId: OTHER_PATIENT } }],
  [{ type: 'admin.user_created', outcome: 'success', severity: 'warning', rule: 'admin.cli', details: { via: 'cli', username: 'dr.new' } }],
  [{ type: 'session.ended', outcome: 'success', rule: 'oidc.end_session', actor: { userId: 'u-1' }, details: { purpose_of_use: 'TREAT' } }],
];

// DCM type, DCM subtype (if any), action and outcome of each event above.
const EXPECTED_FHIR: Record<string, [type: string, subtype: string | undefined, action: string, outcome: string]> = {
  'login.success': ['110114', '110122', 'E', '0'],
  'login.failed': ['110113', undefined, 'E', '4'],
  'token.issued': ['110114', undefined, 'C', '0'],
  'breakglass.started': ['110113', '110127', 'E', '0'],
  'breakglass.ended': ['110113', '110138', 'E', '0'],
  'introspection.inactive': ['110112', undefined, 'E', '4'],
  'rate_limit.exceeded': ['110113', undefined, 'E', '4'],
  'token.replayed': ['110113', undefined, 'E', '8'],
  'admin.user_created': ['110113', '110137', 'C', '0'],
  'session.ended': ['110114', '110123', 'E', '0'],
};

describe('audit CLI', { concurrency: true }, () => {
  test('verify passes on an untouched log, exports JSON lines and a valid FHIR Bundle, names a tampered record', async (t) => {
    const ws = await auditWorkspace(t);
    const before = new Date(Date.now() - 60_000).toISOString();
    await ws.record(EARLY);
    await sleep(50);
    const boundary = new Date().toISOString();
    await sleep(50);
    await ws.record(LATE);
    const rows = await ws.rows();
    assert.equal(rows.length, 10);

    // verify: untouched
    const verified = result(await ws.run(['audit', 'verify']));
    assert.deepEqual(verified, { ok: true, count: 10, headSeq: 10, headHash: rows[9]!.hash });

    // export: JSON lines, every stored column, in chain order
    const jsonlRun = await ws.run(['audit', 'export', '--since', before]);
    const all = jsonLines(jsonlRun);
    assert.equal(all.length, 10);
    all.forEach((line, i) => {
      assert.deepEqual(Object.keys(line), EXPORT_KEYS);
      assert.deepEqual(line, JSON.parse(JSON.stringify(toExportedEvent(rows[i]!))));
      assert.equal(line.seq, i + 1);
      assert.equal(line.hash, rows[i]!.hash);
      assert.equal(line.prevHash, i === 0 ? 'genesis' : rows[i - 1]!.hash);
    });
    const token = all.find((l) => l.type === 'token.issued')!;
    assert.equal(token.patientPseudonym, new AuditLog(undefined as never, ws.keys, undefined).pseudonym('patient', RAW_PATIENT));
    assert.deepEqual(token.details, { scope: 'launch/patient patient/Observation.rs', lifetime: 300 }, 'details as stored');
    assert.equal(token.actorCertThumbprint, 'thumb-abc');
    assert.equal(token.requestId, 'req-token');
    assert.equal(token.sourceIp, IP);

    // export: time range [since, until)
    const late = jsonLines(await ws.run(['audit', 'export', '--since', boundary]));
    assert.deepEqual(late.map((l) => l.type), LATE.map(([e]) => e.type));
    const early = jsonLines(await ws.run(['audit', 'export', '--since', before, '--until', boundary, '--format', 'jsonl']));
    assert.deepEqual(early.map((l) => l.type), EARLY.map(([e]) => e.type));
    assert.deepEqual(jsonLines(await ws.run(['audit', 'export', '--since', new Date(Date.now() + 60_000).toISOString()])), []);

    // export: FHIR R4 Bundle of AuditEvent
    const fhirRun = await ws.run(['audit', 'export', '--since', before, '--format', 'fhir']);
    const bundle = bundleOf(fhirRun);
    assertValidFhir(bundle);
    assert.equal(bundle.resourceType, 'Bundle');
    assert.equal(bundle.type, 'collection');
    assert.equal(bundle.entry?.length, 10);
    for (const [i, entry] of bundle.entry!.entries()) {
      const event = entry.resource;
      assertValidFhir(event);
      assert.equal(event.resourceType, 'AuditEvent');
      assert.equal(entry.fullUrl, `urn:uuid:${rows[i]!.id}`);
      assert.equal(event.id, rows[i]!.id);
      const ours = event.subtype?.find((s) => s.system === 'urn:clinical-authz:audit-event-type')?.code;
      assert.equal(ours, rows[i]!.type, 'our event type is a subtype');
      const [type, subtype, action, outcome] = EXPECTED_FHIR[ours!]!;
      assert.deepEqual([event.type.system, event.type.code], ['http://dicom.nema.org/resources/ontology/DCM', type], `${ours}: type`);
      assert.equal(event.subtype?.find((s) => s.system === 'http://dicom.nema.org/resources/ontology/DCM')?.code, subtype, `${ours}: DCM subtype`);
      assert.equal(event.action, action, `${ours}: action`);
      assert.equal(event.outcome, outcome, `${ours}: outcome`);
      assert.equal(event.outcomeDesc, rows[i]!.rule, 'outcomeDesc is the rule');
      assert.equal(event.recorded, new Date(rows[i]!.occurred_at).toISOString());
      assert.equal(event.source.observer.display, 'clinical-authz');
      assert.equal(event.agent.filter((a) => a.requestor).length, 1, 'one requestor');
    }
    const fhir = (type: string) => bundle.entry!.map((e) => e.resource).find((r) => r.subtype?.some((s) => s.code === type))!;
    const tokenEvent = fhir('token.issued');
    const [user, client] = tokenEvent.agent;
    assert.deepEqual(user!.who?.identifier?.value, 'u-1');
    assert.equal(user!.requestor, true);
    assert.deepEqual(user!.network, { address: IP, type: '2' });
    assert.equal(client!.who?.identifier?.value, 'ward-app');
    assert.equal(client!.requestor, false);
    assert.equal(client!.extension?.[0]?.valueIdentifier?.value, 'thumb-abc', 'the certificate thumbprint identifies the client too');
    const entityValue = (event: FhirAuditEvent, system: string) => event.entity?.find((e) => e.what?.identifier?.system === system)?.what?.identifier?.value;
    assert.equal(entityValue(tokenEvent, 'urn:clinical-authz:patient-pseudonym'), token.patientPseudonym);
    assert.equal(entityValue(tokenEvent, 'urn:clinical-authz:audience'), FHIR_SERVER);
    assert.equal(entityValue(tokenEvent, 'urn:clinical-authz:request-id'), 'req-token');
    const purpose = (event: FhirAuditEvent) => event.purposeOfEvent?.flatMap((p) => p.coding ?? []).map((c) => `${c.system}|${c.code}`);
    assert.deepEqual(purpose(fhir('breakglass.started')), ['http://terminology.hl7.org/CodeSystem/v3-ActReason|ETREAT']);
    assert.deepEqual(fhir('breakglass.started').agent[0]!.purposeOfUse?.[0]?.coding?.[0]?.code, 'ETREAT');
    assert.deepEqual(purpose(fhir('breakglass.ended')), ['http://terminology.hl7.org/CodeSystem/v3-ActReason|BTG']);
    assert.deepEqual(purpose(fhir('session.ended')), ['http://terminology.hl7.org/CodeSystem/v3-ActReason|TREAT']);
    assert.equal(purpose(tokenEvent), undefined);
    // The validator is strict: R4 has purposeOfEvent, not a top-level purposeOfUse; a recorded time needs a zone.
    assert.throws(() => assertValidFhir({ ...tokenEvent, purposeOfUse: fhir('breakglass.started').purposeOfEvent }), /purposeOfUse/);
    assert.throws(() => assertValidFhir({ ...tokenEvent, recorded: '2025-01-31T08:00:00' }), /recorded/);
    assert.deepEqual(fhir('rate_limit.exceeded').agent[0]!.network, { address: '2001:db8::7', type: '2' });
    assert.equal(fhir('admin.user_created').agent[0]!.who?.display, 'admin CLI');

    // the raw patient ids and the secret detail are in neither export
    for (const run of [jsonlRun, fhirRun]) {
      for (const raw of [RAW_PATIENT, OTHER_PATIENT, '12345', '67890', 'secret-token-value']) {
        assert.ok(!run.stdout.includes(raw), `${raw} is not exported`);
      }
    }

    // --out: the same export in a file readable by its owner only; stdout carries a summary
    const jsonlFile = path.join(ws.dir, 'export.jsonl');
    const fhirFile = path.join(ws.dir, 'export.fhir.json');
    assert.deepEqual(result(await ws.run(['audit', 'export', '--since', before, '--out', jsonlFile])), { out: jsonlFile, format: 'jsonl', count: 10 });
    assert.deepEqual(
      result(await ws.run(['audit', 'export', '--since', before, '--format', 'fhir', '--out', fhirFile])),
      { out: fhirFile, format: 'fhir', count: 10 },
    );
    assert.deepEqual((await readFile(jsonlFile, 'utf8')).trimEnd().split('\n').map((l) => JSON.parse(l) as unknown), all);
    const fileBundle = JSON.parse(await readFile(fhirFile, 'utf8')) as typeof bundle;
    assert.deepEqual(fileBundle.entry, bundle.entry);
    assert.equal((await stat(jsonlFile)).mode & 0o777, 0o600);
    assert.equal((await stat(fhirFile)).mode & 0o777, 0o600);

    // tampering: the record is named on stdout, the message on stderr, exit status 1
    await ws.withDb((db) => asTamperer(db, "UPDATE audit_events SET outcome = 'success', rule = 'password' WHERE seq = 2"));
    const tampered = await ws.run(['audit', 'verify']);
    assert.equal(tampered.code, 1, tampered.stderr);
    assert.match(tampered.stdout, /^\{.*\}\n$/);
    const named = JSON.parse(tampered.stdout) as Record<string, unknown>;
    assert.deepEqual(Object.keys(named), ['ok', 'seq', 'id', 'problem', 'message']);
    assert.deepEqual({ ...named, message: undefined }, { ok: false, seq: 2, id: rows[1]!.id, problem: 'altered', message: undefined });
    assertOneErrorLine(tampered, /record seq 2 \(id [0-9a-f-]+\)/);
    assert.ok(tampered.stderr.includes(named.message as string), 'the message on stderr too');

    await ws.withDb((db) => asTamperer(db, 'DELETE FROM audit_events WHERE seq = 2'));
    const deleted = await ws.run(['audit', 'verify']);
    assert.equal(deleted.code, 1);
    assert.deepEqual({ ...JSON.parse(deleted.stdout), message: undefined }, { ok: false, seq: 3, id: rows[2]!.id, problem: 'gap', message: undefined });
  });

  test('usage errors: missing or invalid --since, --until, --format (exit 2)', async (t) => {
    const ws = await auditWorkspace(t, { database: false });
    // None of these opens the database: they may run side by side, even on PGlite.
    const runs = await Promise.all([
      ws.run(['audit', 'export']),
      ws.run(['audit', 'export', '--since', 'yesterday']),
      ws.run(['audit', 'export', '--since', '2025-02-30']),
      ws.run(['audit', 'export', '--since', '2025-01-31T08:00:00']),
      ws.run(['audit', 'export', '--since', '2025-01-31T25:00:00Z']),
      ws.run(['audit', 'export', '--since']),
      ws.run(['audit', 'export', '--since', '2025-01-31', '--until', 'soon']),
      ws.run(['audit', 'export', '--since', '2025-01-31', '--until', '2025-01-30']),
      ws.run(['audit', 'export', '--since', '2025-01-31', '--format', 'xml']),
      ws.run(['audit', 'verify', 'now']),
      ws.run(['audit']),
    ]);
    const expected: RegExp[] = [
      /audit export: --since is required/,
      /audit export: --since 'yesterday' is not an ISO 8601 date/,
      /--since '2025-02-30' is not an ISO 8601/,
      /--since '2025-01-31T08:00:00' is not an ISO 8601 date or date-time with zone/,
      /--since '2025-01-31T25:00:00Z' is not/,
      /audit export: option '--since <value>' argument missing/,
      /--until 'soon' is not an ISO 8601/,
      /--until must be later than --since/,
      /--format must be jsonl or fhir/,
      /audit verify: unexpected argument 'now'/,
      /audit: missing subcommand \(verify, export\)/,
    ];
    runs.forEach((run, i) => failure(run, 2, expected[i]!));
  });

  test('an empty log verifies and exports nothing (a Bundle without entries)', async (t) => {
    const ws = await auditWorkspace(t);
    assert.deepEqual(result(await ws.run(['audit', 'verify'])), { ok: true, count: 0, headSeq: null, headHash: 'genesis' });
    assert.deepEqual(jsonLines(await ws.run(['audit', 'export', '--since', '2000-01-01'])), []);
    const bundle = bundleOf(await ws.run(['audit', 'export', '--since', '2000-01-01T00:00:00+02:00', '--format', 'fhir']));
    assertValidFhir(bundle);
    assert.equal(bundle.entry, undefined);
  });

  test('verify refuses to run without the audit secret (and does not generate one)', async (t) => {
    const ws = await auditWorkspace(t, { secrets: false, database: false });
    failure(await ws.run(['audit', 'verify']), 1, /missing .*secrets\.json/);
    await assert.rejects(stat(path.join(ws.dir, 'secrets.json')), { code: 'ENOENT' });
  });

  test('the export reader pages through the log and stops at the head it started with', async (t) => {
    const ws = await auditWorkspace(t);
    const event: AuditEventInput = { type: 'token.issued', outcome: 'success', rule: 'oidc.grant', actor: { clientId: 'ward-app' } };
    await ws.record(Array.from({ length: 23 }, () => [event] as [AuditEventInput]));
    await ws.withDb(async (db) => {
      const audit = new AuditLog(db, ws.keys, undefined);
      const seen: ExportedAuditEvent[] = [];
      for await (const exported of readAuditEvents(db, { since: new Date(Date.now() - 60_000) }, 5)) {
        seen.push(exported);
        if (seen.length === 7) await audit.record(event); // appended during the export: not part of it
      }
      assert.deepEqual(seen.map((e) => e.seq), Array.from({ length: 23 }, (_, i) => i + 1));
      const limited: number[] = [];
      for await (const exported of readAuditEvents(db, { since: new Date(0), until: new Date(Date.now() + 60_000) }, 4)) limited.push(exported.seq);
      assert.equal(limited.length, 24);
      // Every mapped event is a valid AuditEvent on its own.
      for (const e of seen.slice(0, 3)) assertValidFhir(toFhirAuditEvent(e));
    });
  });
});
