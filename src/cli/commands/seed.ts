// `seed FILE`: validates a seed file (users, resource servers, clients) and applies it.
import { loadConfig } from '../../config.ts';
import { applySeed, readSeedFile } from '../../seed/seed.ts';
import {
  createAuditLog, createProviderContext, expectPositionals, loadKeyMaterial, parseCommandArgs, withDatabase, type Command,
} from '../context.ts';

export const seedCommand: Command = {
  name: 'seed',
  synopsis: 'FILE',
  description: [
    'Validate the JSON seed file FILE ({"users":[...],"resourceServers":[...],"clients":[...]}) and apply it:',
    'users that already exist are left unchanged; resource servers and clients are created or replaced.',
    'Client secrets in the file are stored as digests only.',
  ],
  output: '{"users":[usernames created],"resourceServers":[identifiers],"clients":[client_ids]}',
  async run(args) {
    const { positionals } = parseCommandArgs(this.name, args, {});
    const [file] = expectPositionals(this.name, positionals, ['FILE']);
    const config = loadConfig();
    // Validate before touching the database: a bad file changes nothing.
    const seed = await readSeedFile(file!);
    const material = await loadKeyMaterial(config);
    return withDatabase(config, async (db) => {
      const { provider, clientSecretKey } = await createProviderContext(config, db, material);
      return applySeed(db, provider, clientSecretKey, seed, await createAuditLog(db, material));
    });
  },
};
