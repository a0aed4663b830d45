// What the hash-chained, fail-closed audit write costs, as a ratio to a plain insert of the same row
// into an unchained table, measured in the same run on the same PostgreSQL (machines here are noisy).
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:audit
import { randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';

import pg from 'pg';

import { deriveAuditKeys } from '../src/audit/keys.ts';
import { AuditLog } from '../src/audit/log.ts';
import { migrate } from '../src/db/migrate.ts';
import { createPostgresDb } from '../src/db/postgres.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 16);
const adminUrl = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

const event = {
  type: 'token.issued', outcome: 'success' as const, rule: 'oidc.grant',
  actor: { userId: '6f1c1f7e-6b0b-4a8e-9d52-1a2b3c4d5e6f', clientId: 'ehr-app', certThumbprint: 'x'.repeat(43) },
  target: { audience: 'https://fhir.example.org/r4' },
  details: { token_type: 'access_token', format: 'jwt', scope: 'patient/Observation.rs', lifetime: 300, jti: 'j'.repeat(43) },
};

async function run(label: string, op: () => Promise<unknown>) {
  const latencies: number[] = [];
  const deadline = performance.now() + SECONDS * 1000;
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() < deadline) {
      const t = performance.now();
      await op();
      latencies.push(performance.now() - t);
    }
  }));
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => Number(latencies[Math.floor(latencies.length * p)]!.toFixed(2));
  const result = { label, ops: latencies.length, perSecond: Math.round(latencies.length / SECONDS), p50ms: pct(0.5), p99ms: pct(0.99) };
  console.log(JSON.stringify(result));
  return result;
}

const name = `bench_audit_${randomBytes(4).toString('hex')}`;
const admin = new pg.Client({ connectionString: adminUrl });
await admin.connect();
await admin.query(`CREATE DATABASE ${name}`);
const url = new URL(adminUrl);
url.pathname = `/${name}`;
const db = createPostgresDb(url.href, 10);
try {
  await migrate(db);
  await db.exec('CREATE TABLE plain_events (LIKE audit_events INCLUDING DEFAULTS); CREATE SEQUENCE plain_seq;');
  const audit = new AuditLog(db, deriveAuditKeys(randomBytes(32).toString('base64url')), undefined);
  const baseline = await run('plain insert (same row, no chain)', () => db.query(
    `INSERT INTO plain_events (seq, id, occurred_at, type, outcome, severity, actor_user, actor_client, actor_cert_thumbprint,
       target_audience, details, prev_hash, hash)
     VALUES (nextval('plain_seq'), gen_random_uuid(), now(), $1, $2, 'info', $3, $4, $5, $6, $7::jsonb, 'p', 'h')`,
    [event.type, event.outcome, event.actor.userId, event.actor.clientId, event.actor.certThumbprint, event.target.audience, JSON.stringify(event.details)],
  ));
  const chained = await run('audit record (keyed chain, chain lock, group commit)', () => audit.record(event));
  const report = { date: new Date().toISOString(), seconds: SECONDS, concurrency: CONCURRENCY, baseline, chained, ratio: Number((chained.perSecond / baseline.perSecond).toFixed(2)) };
  console.log(`audit write throughput = ${report.ratio}x a plain insert of the same row`);
  await fs.writeFile(new URL('./results/audit-write.json', import.meta.url), `${JSON.stringify(report, null, 2)}\n`);
} finally {
  await db.close();
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin.end();
}
