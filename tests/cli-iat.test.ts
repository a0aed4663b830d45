// `iat create` as an admin runs it: a real CLI process on its own database. The token is printed once,
// stored for oidc-provider with its template and expiry, and audited by pseudonym only.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { cliDatabase, cliEnv, failure, result, runCli, tempDir } from './support/cli.ts';

test('iat create: usage errors, unknown template, lifetime; success stored with its template and audited without its value', async (t) => {
  const dir = await tempDir(t, 'cli-iat-test-');
  const { url, withDb } = await cliDatabase(t, dir);
  const env = cliEnv(dir, url);
  const run = (args: string[]) => runCli(env, args);

  // Refused before any database is opened, so they may run alongside.
  const [badTtl, extra, unknownOption, unknownTemplate, longTtl] = await Promise.all([
    run(['iat', 'create', '--ttl', 'soon']),
    run(['iat', 'create', 'smart-public-app']),
    run(['iat', 'create', '--scope', 'x']),
    run(['iat', 'create', '--template', 'open-door']),
    run(['iat', 'create', '--ttl', '86401']),
  ]);
  failure(badTtl!, 2, /iat create: --ttl 'soon' is not a whole number of seconds/);
  failure(extra!, 2, /iat create: unexpected argument 'smart-public-app'/);
  failure(unknownOption!, 2, /iat create: unknown option --scope/);
  failure(unknownTemplate!, 1, /unknown template 'open-door' \(known: smart-public-app, smart-confidential-app, mtls-workload\)/);
  failure(longTtl!, 1, /invalid --ttl: from 1 to 86400 seconds/);

  const before = Date.now();
  const created = result(await run(['iat', 'create', '--template', 'smart-public-app', '--ttl', '600']));
  assert.deepEqual(Object.keys(created).sort(), ['expiresAt', 'initialAccessToken', 'template']);
  assert.equal(created.template, 'smart-public-app');
  const token = String(created.initialAccessToken);
  assert.match(token, /^[A-Za-z0-9_-]{43}$/);
  const expiresAt = Date.parse(String(created.expiresAt));
  assert.ok(Math.abs(expiresAt - (before + 600_000)) < 30_000, `expiresAt ${String(created.expiresAt)}`);

  await withDb(async (db) => {
    const { rows } = await db.query<{ payload: Record<string, unknown>; expires_at: Date | string }>(
      "SELECT payload, expires_at FROM oidc_payloads WHERE model = 'InitialAccessToken' AND id = $1", [token],
    );
    assert.equal(rows.length, 1);
    assert.deepEqual(rows[0]!.payload.policies, ['smart-public-app', 'registration-baseline']);
    assert.equal(Number(rows[0]!.payload.exp) * 1000, expiresAt);
    assert.ok(Math.abs(new Date(rows[0]!.expires_at).getTime() - expiresAt) < 2_000, 'the row expires with the token');

    const audit = await db.query<{ rule: string; details: Record<string, unknown>; text: string }>(
      "SELECT rule, details, row_to_json(a)::text AS text FROM audit_events a WHERE type = 'registration.iat_created'",
    );
    assert.equal(audit.rows.length, 1);
    assert.equal(audit.rows[0]!.rule, 'admin.cli');
    assert.equal(audit.rows[0]!.details.via, 'cli');
    assert.equal(audit.rows[0]!.details.template, 'smart-public-app');
    assert.equal(audit.rows[0]!.details.ttl_seconds, 600);
    assert.match(String(audit.rows[0]!.details.token_ref), /^[A-Za-z0-9_-]{43}$/);
    assert.ok(!audit.rows[0]!.text.includes(token), 'the token value is not in the audit log');
  });
});
