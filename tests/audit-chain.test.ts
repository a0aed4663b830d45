// The audit log's tamper evidence, directly on the database: the keyed hash chain verifies on an
// untouched log; the table refuses UPDATE, DELETE and TRUNCATE; with the triggers disabled (as a
// superuser or the table owner could) every kind of tampering is named by seq; concurrent writers
// (two pools, two processes) leave one contiguous chain; patient ids are stored only as pseudonyms.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { chainHash, type ChainedRecord } from '../src/audit/chain.ts';
import type { AuditEventInput } from '../src/audit/event.ts';
import { deriveAuditKeys, type AuditKeys } from '../src/audit/keys.ts';
import { AuditLog, rowToRecord, type StoredAuditRow } from '../src/audit/log.ts';
import { verifyAuditChain, type VerifyResult } from '../src/audit/verify.ts';
import type { Db } from '../src/db/index.ts';
import { migrate } from '../src/db/migrate.ts';
import { createTestDb, type TestDb } from './support/test-db.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const POSTGRES = Boolean(process.env.DATABASE_URL);

const opened: TestDb[] = [];
after(() => Promise.all(opened.map((t) => t.drop())));

const newKeys = (): AuditKeys => deriveAuditKeys(randomBytes(32).toString('base64url'));

/** A varied event: users, clients, audiences, patients, rules, details, request contexts. */
function sampleEvent(i: number): AuditEventInput {
  const kinds: AuditEventInput[] = [
    { type: 'login.success', outcome: 'success', rule: 'password', actor: { userId: `user-${i}`, clientId: 'ward-app' }, details: { acr: 'urn:mace:incommon:iap:silver', amr: ['pwd'] } },
    { type: 'token.issued', outcome: 'success', rule: 'oidc.grant', actor: { userId: `user-${i}`, clientId: 'ward-app', certThumbprint: 'x5t-thumb' }, target: { audience: 'https://fhir.example/r4', patientId: `Patient/${1000 + (i % 3)}` }, details: { scope: 'patient/Observation.rs', lifetime: 300, format: 'jwt' } },
    { type: 'token.request_refused', outcome: 'denied', rule: 'oauth.invalid_grant', actor: { clientId: 'ward-app' }, details: { error: 'invalid_grant', grant_type: 'authorization_code' } },
    { type: 'rate_limit.exceeded', outcome: 'denied', severity: 'warning', rule: 'rate_limit.client', actor: { clientId: 'batch-svc' }, details: { points: 1200, window: 60 } },
    { type: 'breakglass.started', outcome: 'success', severity: 'high', rule: 'breakglass', actor: { userId: `user-${i}` }, target: { patientId: 'Patient/999' }, details: { purpose_of_use: 'ETREAT', flag: true, nothing: null } },
  ];
  return kinds[i % kinds.length]!;
}

async function freshDb(): Promise<TestDb> {
  const testDb = await createTestDb();
  opened.push(testDb);
  await migrate(testDb.db);
  return testDb;
}

/** A fresh database holding a chain of `count` events. */
async function freshChain(count: number) {
  const testDb = await freshDb();
  const keys = newKeys();
  const audit = new AuditLog(testDb.db, keys, undefined);
  for (let i = 0; i < count; i += 1) {
    await audit.record(sampleEvent(i), undefined, i % 2 ? { requestId: `req-${i}`, sourceIp: '10.0.0.7' } : undefined);
  }
  return { db: testDb.db, keys, audit, verify: () => verifyAuditChain(testDb.db, keys.chain) };
}

async function rowAt(db: Db, seq: number): Promise<StoredAuditRow> {
  const { rows } = await db.query<StoredAuditRow>('SELECT * FROM audit_events WHERE seq = $1', [seq]);
  assert.equal(rows.length, 1, `row ${seq} exists`);
  return rows[0]!;
}

/** Runs statements with the append-only triggers disabled, as a superuser or the table owner could. */
async function asTamperer(db: Db, ...statements: [sql: string, params?: unknown[]][]): Promise<void> {
  await db.query('ALTER TABLE audit_events DISABLE TRIGGER USER');
  try {
    for (const [sql, params] of statements) await db.query(sql, params);
  } finally {
    await db.query('ALTER TABLE audit_events ENABLE TRIGGER USER');
  }
}

function assertNames(result: VerifyResult, seq: number, id: string, problem: string, verified = seq - 1): void {
  assert.equal(result.ok, false, 'verification fails');
  if (result.ok) return;
  assert.equal(result.seq, seq, `names seq ${seq}: ${result.message}`);
  assert.equal(result.id, id);
  assert.equal(result.problem, problem, result.message);
  assert.equal(result.count, verified, 'every record before it verified');
  assert.match(result.message, new RegExp(`seq ${seq}\\b`));
}

const INSERT = `INSERT INTO audit_events (seq, id, occurred_at, type, outcome, severity, actor_user, actor_client,
  actor_cert_thumbprint, target_client, target_audience, patient_pseudonym, rule, request_id, source_ip, details, prev_hash, hash)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb, $17, $18)`;

function insertParams(r: ChainedRecord, hash: string): unknown[] {
  return [r.seq, r.id, r.occurredAt, r.type, r.outcome, r.severity, r.actorUser, r.actorClient, r.actorCertThumbprint,
    r.targetClient, r.targetAudience, r.patientPseudonym, r.rule, r.requestId, r.sourceIp, JSON.stringify(r.details), r.prevHash, hash];
}

/** A plausible record appended after `head`, as a forger with write access would make it. */
function forgedAfter(head: StoredAuditRow): ChainedRecord {
  return {
    seq: Number(head.seq) + 1, id: randomUUID(), occurredAt: new Date().toISOString(), type: 'login.success',
    outcome: 'success', severity: 'info', actorUser: 'intruder', actorClient: 'ward-app', actorCertThumbprint: null,
    targetClient: null, targetAudience: null, patientPseudonym: null, rule: 'password', requestId: null, sourceIp: null,
    details: {}, prevHash: head.hash,
  };
}

describe('audit hash chain', () => {
  test('30 events verify; the table refuses UPDATE, DELETE and TRUNCATE', async () => {
    const { db, verify } = await freshChain(30);
    const result = await verify();
    const last = await rowAt(db, 30);
    assert.deepEqual(result, { ok: true, count: 30, headSeq: 30, headHash: last.hash });
    const first = await rowAt(db, 1);
    assert.equal(first.prev_hash, 'genesis');
    assert.equal((await rowAt(db, 2)).prev_hash, first.hash, 'each record commits to the one before it');

    await assert.rejects(db.query("UPDATE audit_events SET rule = 'forged' WHERE seq = 5"), /audit_events is append-only \(UPDATE refused\)/);
    await assert.rejects(db.query('DELETE FROM audit_events WHERE seq = 5'), /audit_events is append-only \(DELETE refused\)/);
    await assert.rejects(db.query('DELETE FROM audit_events'), /audit_events is append-only \(DELETE refused\)/);
    await assert.rejects(db.query('TRUNCATE audit_events'), /audit_events is append-only \(TRUNCATE refused\)/);
    await assert.rejects(db.query('TRUNCATE audit_events'), { code: '42501' }, 'insufficient_privilege');
    const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM audit_events');
    assert.equal(rows[0]!.n, 30, 'nothing was removed');
    assert.deepEqual(await verify(), result, 'still intact');
  });

  test('a changed field names its record (altered); restoring it verifies again', async () => {
    const { db, verify } = await freshChain(30);
    const target = await rowAt(db, 12);
    const changes: [column: string, value: unknown, cast?: string][] = [
      ['rule', 'forged.rule'],
      ['outcome', 'error'],
      ['actor_user', 'someone-else'],
      ['patient_pseudonym', 'not-the-pseudonym'],
      ['source_ip', '192.0.2.66'],
      ['occurred_at', new Date(Date.parse(new Date(target.occurred_at).toISOString()) + 1).toISOString(), 'timestamptz'],
      ['details', JSON.stringify({ ...target.details, scope: 'system/*.*' }), 'jsonb'],
      ['prev_hash', 'genesis'],
      ['hash', 'AAAA'],
    ];
    for (const [column, value, cast] of changes) {
      const original = column === 'details' ? JSON.stringify(target.details) : column === 'occurred_at'
        ? new Date(target.occurred_at).toISOString() : target[column];
      const set = `UPDATE audit_events SET ${column} = $1${cast ? `::${cast}` : ''} WHERE seq = 12`;
      await asTamperer(db, [set, [value]]);
      assertNames(await verify(), 12, target.id, 'altered');
      await asTamperer(db, [set, [original]]);
      assert.equal((await verify()).ok, true, `restoring ${column} verifies again`);
    }
  });

  test('a deleted row names the record after it (gap)', async () => {
    const { db, verify } = await freshChain(30);
    const next = await rowAt(db, 18);
    await asTamperer(db, ['DELETE FROM audit_events WHERE seq = 17']);
    assertNames(await verify(), 18, next.id, 'gap', 16);
  assert.match((await verify() as { message: string }).message, /record\(s\) 17\.\.17 were deleted/);
  });

  test('two rows swapped (content exchanged between seq values) name the first of them', async () => {
    const { db, verify } = await freshChain(30);
    const [ten, eleven] = [await rowAt(db, 10), await rowAt(db, 11)];
    await asTamperer(db,
      ['UPDATE audit_events SET seq = 1000 WHERE seq = 10'],
      ['UPDATE audit_events SET seq = 10 WHERE seq = 11'],
      ['UPDATE audit_events SET seq = 11 WHERE seq = 1000'],
    );
    assert.equal((await rowAt(db, 10)).id, eleven.id, 'the content of 11 now sits at seq 10');
    assert.equal((await rowAt(db, 11)).id, ten.id);
    assertNames(await verify(), 10, eleven.id, 'altered');
  });

  test('a forged row appended with a made-up hash is named', async () => {
    const { db, verify } = await freshChain(30);
    const forged = forgedAfter(await rowAt(db, 30));
    await asTamperer(db, [INSERT, insertParams(forged, randomBytes(32).toString('base64url'))]);
    assertNames(await verify(), 31, forged.id, 'altered');
  });

  test('a forged row whose hash was computed with a wrong key is named; the right key would verify', async () => {
    const { db, keys, verify } = await freshChain(30);
    const forged = forgedAfter(await rowAt(db, 30));
    await asTamperer(db, [INSERT, insertParams(forged, chainHash(newKeys().chain, forged))]);
    assertNames(await verify(), 31, forged.id, 'altered');
    // Control: only the key makes the difference.
    await asTamperer(db, ['DELETE FROM audit_events WHERE seq = 31'], [INSERT, insertParams(forged, chainHash(keys.chain, forged))]);
    assert.deepEqual({ ...(await verify()), headHash: undefined }, { ok: true, count: 31, headSeq: 31, headHash: undefined });
  });

  test('a row re-linked into the middle (inserted, later rows renumbered) is named', async () => {
    const { db, verify } = await freshChain(10);
    const original = await rowAt(db, 5);
    // Shift 5..10 up by one (from the top, so seq stays unique) and put a forged row at 5.
    const shifts: [string][] = [];
    for (let seq = 10; seq >= 5; seq -= 1) shifts.push([`UPDATE audit_events SET seq = ${seq + 1} WHERE seq = ${seq}`]);
    const forged = forgedAfter(await rowAt(db, 4));
    await asTamperer(db, ...shifts, [INSERT, insertParams(forged, randomBytes(32).toString('base64url'))]);
    assertNames(await verify(), 5, forged.id, 'altered');
    assert.equal((await rowAt(db, 6)).id, original.id);
  });

  test('an empty log verifies', async () => {
    const testDb = await freshDb();
    assert.deepEqual(await verifyAuditChain(testDb.db, newKeys().chain), { ok: true, count: 0, headSeq: null, headHash: 'genesis' });
  });
});

describe('concurrent writers', () => {
  const PER_WRITER = 200;
  const BATCH = 10;

  async function assertContiguous(db: Db, keys: AuditKeys, total: number, writers: string[]) {
    const result = await verifyAuditChain(db, keys.chain);
    assert.equal(result.ok, true, result.ok ? '' : result.message);
    assert.equal(result.ok && result.count, total);
    const { rows } = await db.query<{ seq: number; writer: string }>("SELECT seq, details->>'writer' AS writer FROM audit_events ORDER BY seq");
    assert.deepEqual(rows.map((r) => Number(r.seq)), Array.from({ length: total }, (_, i) => i + 1), 'seq 1..N without gaps');
    for (const writer of writers) assert.equal(rows.filter((r) => r.writer === writer).length, PER_WRITER, `${writer} wrote all its events`);
    const switches = rows.filter((r, i) => i > 0 && r.writer !== rows[i - 1]!.writer).length;
    assert.ok(switches > 1, `writers interleaved (${switches} switches)`);
  }

  const event = (writer: string, i: number): AuditEventInput => ({
    type: 'token.issued', outcome: 'success', rule: 'oidc.grant', actor: { clientId: writer }, details: { writer, n: i },
  });

  test(`two ${POSTGRES ? 'connection pools' : 'audit logs on one PGlite'} writing ${PER_WRITER} events each at once leave one chain`, async () => {
    const testDb = await freshDb();
    const keys = newKeys();
    const dbA = testDb.db;
    const dbB = POSTGRES ? testDb.openAnother()! : testDb.db;
    const a = new AuditLog(dbA, keys, undefined);
    const b = new AuditLog(dbB, keys, undefined);
    for (let start = 0; start < PER_WRITER; start += BATCH) {
      const batch: Promise<unknown>[] = [];
      for (let i = start; i < start + BATCH; i += 1) batch.push(a.record(event('writer-a', i)), b.record(event('writer-b', i)));
      await Promise.all(batch);
    }
    await assertContiguous(testDb.db, keys, 2 * PER_WRITER, ['writer-a', 'writer-b']);
  });

  test('two processes writing at once leave one chain (PostgreSQL)', { skip: !POSTGRES && 'PGlite is single-process' }, async () => {
    const testDb = await freshDb();
    const secret = randomBytes(32).toString('base64url');
    const keys = deriveAuditKeys(secret);
    // Each child: its own pool; it says "ready" once connected and starts writing on "go", so that
    // neither finishes before the other has started.
    const script = `
      const { createPostgresDb } = await import(${JSON.stringify(new URL('../src/db/postgres.ts', import.meta.url).href)});
      const { AuditLog } = await import(${JSON.stringify(new URL('../src/audit/log.ts', import.meta.url).href)});
      const { deriveAuditKeys } = await import(${JSON.stringify(new URL('../src/audit/keys.ts', import.meta.url).href)});
      const { once } = await import('node:events');
      const [url, secret, writer] = process.argv.slice(-3);
      const db = createPostgresDb(url, 5);
      const audit = new AuditLog(db, deriveAuditKeys(secret), undefined);
      await Promise.all(Array.from({ length: 5 }, () => db.query('SELECT 1')));
      process.stdout.write('ready\\n');
      await once(process.stdin, 'data');
      for (let start = 0; start < ${PER_WRITER}; start += ${BATCH}) {
        const batch = [];
        for (let i = start; i < start + ${BATCH}; i += 1) {
          batch.push(audit.record({ type: 'token.issued', outcome: 'success', rule: 'oidc.grant', actor: { clientId: writer }, details: { writer, n: i } }));
        }
        await Promise.all(batch);
      }
      await db.close();
      process.stdin.destroy();
    `;
    const start = (writer: string) => {
      const proc = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, '--', testDb.url!, secret, writer],
        { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
      let stderr = '';
      proc.stderr.setEncoding('utf8').on('data', (d: string) => { stderr += d; });
      const ready = new Promise<void>((resolve, reject) => {
        proc.stdout.setEncoding('utf8').on('data', (d: string) => { if (d.includes('ready')) resolve(); });
        proc.on('close', (code) => reject(new Error(`${writer} exited ${code} before it was ready: ${stderr}`)));
      });
      const done = new Promise<void>((resolve, reject) => {
        proc.on('error', reject);
        proc.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${writer} exited ${code}: ${stderr}`))));
      });
      return { proc, ready, done };
    };
    const children = [start('process-a'), start('process-b')];
    await Promise.all(children.map((c) => c.ready));
    for (const { proc } of children) proc.stdin.write('go\n');
    await Promise.all(children.map((c) => c.done));
    await assertContiguous(testDb.db, keys, 2 * PER_WRITER, ['process-a', 'process-b']);
  });
});

describe('what the log stores', () => {
  test('a patient id is stored only as its keyed pseudonym; secret detail keys are dropped', async () => {
    const testDb = await freshDb();
    const keys = newKeys();
    const audit = new AuditLog(testDb.db, keys, undefined);
    const read = { type: 'token.issued', outcome: 'success', rule: 'oidc.grant', actor: { userId: 'u1', clientId: 'ward-app' } } as const;
    const first = await audit.record({ ...read, target: { patientId: 'Patient/12345' } });
    const again = await audit.record({ ...read, target: { patientId: 'Patient/12345' } });
    const other = await audit.record({ ...read, target: { patientId: 'Patient/67890' } });
    const secrets = await audit.record({
      ...read,
      details: {
        access_token: 'eyJhbGciOiJFUzI1NiJ9.secret-access-token', refresh_token: 'secret-refresh-token', password: 'hunter2-password-value',
        client_secret: 'secret-client-secret', code: 'secret-auth-code', Authorization: 'Basic c2VjcmV0', scope: 'openid', lifetime: 300,
      },
    });

    const stored = async (seq: number) => rowToRecord(await rowAt(testDb.db, seq));
    const [s1, s2, s3, s4] = [await stored(first.seq), await stored(again.seq), await stored(other.seq), await stored(secrets.seq)];
    assert.ok(s1.patientPseudonym && s1.patientPseudonym.length >= 40, 'a pseudonym is stored');
    assert.equal(s1.patientPseudonym, s2.patientPseudonym, 'the same patient, the same pseudonym');
    assert.notEqual(s3.patientPseudonym, s1.patientPseudonym, 'another patient, another pseudonym');
    assert.equal(s1.patientPseudonym, audit.pseudonym('patient', 'Patient/12345'));
    assert.notEqual(new AuditLog(testDb.db, newKeys(), undefined).pseudonym('patient', 'Patient/12345'), s1.patientPseudonym, 'keyed');
    assert.deepEqual(s4.details, { scope: 'openid', lifetime: 300 }, 'token, password, secret, code and authorization keys are dropped');

    const { rows } = await testDb.db.query<{ t: string }>('SELECT t::text AS t FROM audit_events t');
    assert.equal(rows.length, 4);
    for (const { t } of rows) {
      for (const raw of ['Patient/12345', 'Patient/67890', 'secret-access-token', 'secret-refresh-token', 'hunter2', 'secret-client-secret',
        'secret-auth-code', 'c2VjcmV0']) {
        assert.ok(!t.includes(raw), `${raw} is nowhere in the table`);
      }
    }
    assert.equal((await verifyAuditChain(testDb.db, keys.chain)).ok, true);
  });

  test('text PostgreSQL would change (lone surrogates, NUL) is stored as hashed, so the chain still verifies', async () => {
    const testDb = await freshDb();
    const keys = newKeys();
    const audit = new AuditLog(testDb.db, keys, undefined);
    await audit.record({ type: 'login.failed', outcome: 'failure', actor: { clientId: 'app\uD800x' }, rule: 'nul\u0000rule', details: { reason: 'a\uDC00b' } });
    await audit.record({ type: 'login.failed', outcome: 'failure' });
    const result = await verifyAuditChain(testDb.db, keys.chain);
    assert.equal(result.ok, true, JSON.stringify(result));
  });

  test('secrets under other spellings and token-shaped values are dropped; patient ids correlate however written', async () => {
    const testDb = await freshDb();
    const audit = new AuditLog(testDb.db, newKeys(), undefined);
    const stored = await audit.record({
      type: 'token.issued',
      outcome: 'success',
      target: { patientId: '12345' },
      details: { accessToken: 'x', id_token_hint: 'y', 'client-secret': 'z', nested: 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.sig', scope: 'openid', token_type: 'access_token' },
    });
    assert.deepEqual(stored.details, { scope: 'openid', token_type: 'access_token' });
    assert.equal(stored.patientPseudonym, audit.pseudonym('patient', 'Patient/12345'));
    assert.equal(stored.patientPseudonym, audit.pseudonym('patient', 'https://fhir.example.org/r4/Patient/12345'));
  });

  test('a malformed event is refused on its own and does not fail the events committed with it', async () => {
    const testDb = await freshDb();
    const keys = newKeys();
    const audit = new AuditLog(testDb.db, keys, undefined);
    const results = await Promise.allSettled([
      audit.record({ type: 'login.success', outcome: 'success' }),
      audit.record({ type: 'Not A Type', outcome: 'success' }),
      audit.record({ type: 'login.failed', outcome: 'failure' }),
    ]);
    assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
    assert.equal((await verifyAuditChain(testDb.db, keys.chain)).ok, true);
  });

  test('an action\'s own row commits with its record in the group commit; one failing row fails only its own action', async () => {
    const testDb = await freshDb();
    const keys = newKeys();
    const audit = new AuditLog(testDb.db, keys, undefined);
    await testDb.db.exec('CREATE TABLE test_actions (id text PRIMARY KEY, n integer NOT NULL)');
    await testDb.db.query("INSERT INTO test_actions (id, n) VALUES ('taken', 0)");
    const combine = (rows: ReadonlyArray<readonly unknown[]>) => ({
      sql: `INSERT INTO test_actions (id, n) VALUES ${rows.map((_, i) => `($${2 * i + 1}, $${2 * i + 2})`).join(', ')}`,
      params: rows.flat(),
    });
    const ids = ['a1', 'a2', 'taken', 'a4', 'a5'];
    const results = await Promise.allSettled(ids.map((id, n) => audit.record(
      { type: 'test.action', outcome: 'success', details: { action: id } }, undefined, undefined, { kind: 'test_actions', values: [id, n + 1], combine },
    )));
    assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled']);
    const rows = (await testDb.db.query<{ id: string }>('SELECT id FROM test_actions ORDER BY id')).rows.map((r) => r.id);
    assert.deepEqual(rows, ['a1', 'a2', 'a4', 'a5', 'taken']);
    const recorded = (await testDb.db.query<{ action: string }>("SELECT details->>'action' AS action FROM audit_events ORDER BY seq")).rows.map((r) => r.action);
    assert.deepEqual(recorded.sort(), ['a1', 'a2', 'a4', 'a5'], 'no record for the action whose row failed, a record for every row written');
    assert.equal((await verifyAuditChain(testDb.db, keys.chain)).ok, true);
  });
});
