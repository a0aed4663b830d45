// `passkey list` and `passkey reset` as an admin runs them: a real CLI process on its own database.
// The reset removes every passkey of the user, in one transaction with its audit record.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';

import { findUserByUsername } from '../src/accounts/users.ts';
import { addCredential } from '../src/mfa/credentials.ts';
import { cliDatabase, cliEnv, failure, result, runCli, tempDir } from './support/cli.ts';

test('passkey list and reset: no key material shown, every passkey removed, audited; usage and unknown user', async (t) => {
  const dir = await tempDir(t, 'cli-passkey-test-');
  const { url, withDb } = await cliDatabase(t, dir);
  const env = cliEnv(dir, url);
  const run = (args: string[]) => runCli(env, args);
  const seedFile = path.join(dir, 'seed.json');
  await writeFile(seedFile, JSON.stringify({ users: [{ username: 'dr.lost', password: 'lost-device-password-1' }] }));
  result(await run(['seed', seedFile]));

  await withDb(async (db) => {
    const user = (await findUserByUsername(db, 'dr.lost'))!;
    for (const id of ['cred-aaaaaaaaaaaaaaaaaaaaaa', 'cred-bbbbbbbbbbbbbbbbbbbbbb']) {
      await addCredential(db, {
        id, userId: user.id, publicKey: new Uint8Array([1, 2, 3]), signCount: 3, transports: ['internal'],
        deviceType: 'singleDevice', backedUp: false, aaguid: undefined, name: 'Phone',
      });
    }
  });
  const listed = result(await run(['passkey', 'list', '--username', 'dr.lost'])) as { passkeys: Record<string, unknown>[] };
  assert.deepEqual(listed.passkeys.map((p) => p.id), ['cred-aaaaaaaaaaaaaaaaaaaaaa', 'cred-bbbbbbbbbbbbbbbbbbbbbb']);
  assert.ok(listed.passkeys.every((p) => !('publicKey' in p)), 'no key material');

  // A usage error answers before any database is touched, so it may run alongside.
  const [reset, usage] = await Promise.all([run(['passkey', 'reset', '--username', 'DR.LOST']), run(['passkey', 'reset'])]);
  assert.deepEqual(result(reset!), { username: 'dr.lost', removed: 2 });
  failure(usage!, 2, /passkey reset: --username is required/);
  failure(await run(['passkey', 'reset', '--username', 'nobody']), 1, /no such user/);

  await withDb(async (db) => {
    const { rows } = await db.query<{ n: string | number }>('SELECT count(*) AS n FROM webauthn_credentials');
    assert.equal(Number(rows[0]!.n), 0);
    const audit = await db.query<{ type: string; rule: string; details: Record<string, unknown> }>(
      "SELECT type, rule, details FROM audit_events WHERE type = 'webauthn.reset'",
    );
    assert.equal(audit.rows.length, 1);
    assert.equal(audit.rows[0]!.rule, 'admin.cli');
    assert.equal(audit.rows[0]!.details.removed, 2);
  });
});
