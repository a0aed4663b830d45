// `audit verify`: walks the audit hash chain and names the first record that was altered, deleted,
// inserted or reordered. Read-only; it needs the audit secret of KEYS_DIR and never generates one.
import { loadConfig } from '../../config.ts';
import { CliError, expectPositionals, parseCommandArgs, withDatabase, type Command } from '../context.ts';

export const auditVerifyCommand: Command = {
  name: 'audit verify',
  synopsis: '',
  description: [
    'Check the audit log\'s keyed hash chain (key from KEYS_DIR/secrets.json) from the first record to the last,',
    'in one consistent snapshot. A broken chain prints {"ok":false,"seq":N,"id":"...","problem":"altered|gap|broken_link",',
    '"message":"..."} naming the first bad record, repeats the message on stderr and exits with status 1.',
    'Records removed from the very end leave a valid shorter chain: keep the printed headSeq/headHash elsewhere',
    'and compare them with the next run.',
  ],
  output: '{"ok":true,"count":N,"headSeq":N,"headHash":"..."} (headSeq null for an empty log)',
  async run(args) {
    const { positionals } = parseCommandArgs(this.name, args, {});
    expectPositionals(this.name, positionals, []);
    const config = loadConfig();
    const [{ loadOrCreateSecrets }, { deriveAuditKeys }, { verifyAuditChain }] = await Promise.all([
      import('../../keystore/secrets.ts'), import('../../audit/keys.ts'), import('../../audit/verify.ts'),
    ]);
    // Never generate: a fresh secret would make every record look altered.
    const secrets = await loadOrCreateSecrets(config.keysDir, { allowGenerate: false });
    const { chain } = deriveAuditKeys(secrets.auditKey);
    const result = await withDatabase(config, (db) => db.transaction(async (tx) => {
      // One snapshot: records appended meanwhile neither count nor confuse the walk.
      await tx.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY');
      return verifyAuditChain(tx, chain);
    }));
    if (result.ok) return { ok: true, count: result.count, headSeq: result.headSeq, headHash: result.headHash };
    const { seq, id, problem, message } = result;
    process.stdout.write(`${JSON.stringify({ ok: false, seq, id, problem, message })}\n`);
    throw new CliError(message);
  },
};
