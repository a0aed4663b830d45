// `migrate`: applies pending database migrations.
import { loadConfig } from '../../config.ts';
import { migrate } from '../../db/migrate.ts';
import { expectPositionals, parseCommandArgs, withDatabase, type Command } from '../context.ts';

export const migrateCommand: Command = {
  name: 'migrate',
  synopsis: '',
  description: ['Apply the pending database migrations (every other command also does this first).'],
  output: '{"applied":[versions applied by this run]}',
  async run(args) {
    const { positionals } = parseCommandArgs(this.name, args, {});
    expectPositionals(this.name, positionals, []);
    const config = loadConfig();
    const applied = await withDatabase(config, (db) => migrate(db), { migrate: false });
    return { applied };
  },
};
