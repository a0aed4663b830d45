// `keys rotate`: adds fresh signing keys, published ahead of their use, and retires the active ones. Running servers notice the
// changed key file within KEYS_RELOAD_INTERVAL seconds and reload it by themselves.
import path from 'node:path';

import { loadConfig, maxSignedTokenLifetime } from '../../config.ts';
import { fileExists } from '../../keystore/files.ts';
import { rotateSigningKeys, SIGNING_KEYS_FILE } from '../../keystore/signing-keys.ts';
import {
  CLI_AUDIT, CliError, createAuditLog, expectPositionals, loadKeyMaterial, parseCommandArgs, withDatabase, type Command,
} from '../context.ts';

export const keysRotateCommand: Command = {
  name: 'keys rotate',
  synopsis: '',
  description: [
    `Add a new ES256 and RS256 signing key to KEYS_DIR/${SIGNING_KEYS_FILE}, published at once and signing`,
    'from 2 x KEYS_RELOAD_INTERVAL later (activeFrom: by then every server has loaded it), and retire the',
    'active ones: they sign until then and stay published for the longest token lifetime plus',
    'KEYS_RELOAD_INTERVAL more; retired keys past that window are removed. Run it from one place at a time.',
  ],
  output: '{"added":[kids],"retired":[kids],"removed":[kids],"activeFrom":"<ISO time>"}',
  async run(args) {
    const { positionals } = parseCommandArgs(this.name, args, {});
    expectPositionals(this.name, positionals, []);
    const config = loadConfig();
    const file = path.join(config.keysDir, SIGNING_KEYS_FILE);
    if (!(await fileExists(file))) {
      throw new CliError(`no signing keys to rotate: ${file} does not exist (check KEYS_DIR)`);
    }
    const material = await loadKeyMaterial(config);
    return withDatabase(config, async (db) => {
      const audit = await createAuditLog(db, material);
      await db.ping(); // the rotation must be recordable before it happens
      const result = await rotateSigningKeys(config.keysDir, {
        // Every server reloads the file at least once before the new keys sign: no process (and no
        // resource server that fetched any process's JWKS since) meets a token signed by a key it lacks.
        publishAheadSeconds: 2 * config.keysReloadIntervalSeconds,
        // A server may sign with the old key until its next reload after that; those tokens must stay verifiable.
        retireAfterSeconds: maxSignedTokenLifetime(config) + config.keysReloadIntervalSeconds,
      });
      await audit.record({
        type: 'admin.keys_rotated', outcome: 'success', severity: 'warning', rule: CLI_AUDIT.rule,
        details: { ...CLI_AUDIT.details, added: result.added, retired: result.retired, removed: result.removed },
      });
      return result;
    });
  },
};
