// `user add`: creates a clinician account. The password comes from standard input only, never
// from the command line (where it would be visible in ps and shell history), and is never printed.
import { createUser, NewUserSchema, UserExistsError } from '../../accounts/users.ts';
import { MAX_PASSWORD_LENGTH } from '../../accounts/passwords.ts';
import { loadConfig } from '../../config.ts';
import {
  CLI_AUDIT, CliError, createAuditLog, expectPositionals, loadKeyMaterial, parseCommandArgs, UsageError, withDatabase,
  type Command,
} from '../context.ts';

const OPTIONS = {
  username: { type: 'string' },
  'password-stdin': { type: 'boolean' },
  'display-name': { type: 'string' },
  'fhir-user': { type: 'string' },
  role: { type: 'string', multiple: true },
} as const;

// Input field -> the option it came from, for error messages.
const FIELD_LABELS: Record<string, string> = {
  username: '--username',
  password: 'password',
  displayName: '--display-name',
  fhirUser: '--fhir-user',
  roles: '--role',
};

export const userAddCommand: Command = {
  name: 'user add',
  synopsis: '--username NAME --password-stdin [--display-name TEXT] [--fhir-user REF] [--role ROLE]...',
  description: [
    'Create a user. The password is read from standard input (a single line; the trailing newline is removed),',
    'e.g. `printf %s "$PASSWORD" | npm run -s cli -- user add --username dr.smith --password-stdin`;',
    'on a terminal it is prompted for without echo. It is stored as an argon2id hash and never printed.',
  ],
  options: [
    ['--username NAME', 'login name: 2-63 characters of a-z 0-9 . _ @ - (stored in lower case)'],
    ['--password-stdin', 'read the password from standard input (required; at least 12 characters)'],
    ['--display-name TEXT', 'name shown to the user and released in the profile scope'],
    ['--fhir-user REF', 'FHIR reference of the user, e.g. Practitioner/123 (the fhirUser claim)'],
    ['--role ROLE', 'a role (a-z 0-9 _ -); repeat the option for several roles'],
  ],
  output: '{"id":"...","username":"..."}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, OPTIONS);
    expectPositionals(this.name, positionals, []);
    if (values.username === undefined) throw new UsageError(`${this.name}: --username is required`);
    if (!values['password-stdin']) {
      throw new UsageError(`${this.name}: --password-stdin is required (the password is read from standard input, never from the command line)`);
    }
    const config = loadConfig();
    const password = await readPassword();

    const parsed = NewUserSchema.safeParse({
      username: values.username,
      password,
      displayName: values['display-name'],
      fhirUser: values['fhir-user'],
      roles: values.role ?? [],
    });
    if (!parsed.success) {
      // zod messages never include the input value, so the password cannot leak through them.
      const detail = parsed.error.issues.map((i) => {
        const field = String(i.path[0] ?? 'user');
        return `invalid ${FIELD_LABELS[field] ?? field}: ${i.message}`;
      });
      throw new CliError(detail.join('; '));
    }

    const material = await loadKeyMaterial(config);
    const user = await withDatabase(config, async (db) => {
      const audit = await createAuditLog(db, material);
      try {
        return await db.transaction(async (tx) => {
          const created = await createUser(tx, parsed.data);
          await audit.record({
            type: 'admin.user_created', outcome: 'success', rule: CLI_AUDIT.rule,
            details: { ...CLI_AUDIT.details, user_id: created.id, roles: created.roles },
          }, tx);
          return created;
        });
      } catch (err) {
        if (err instanceof UserExistsError) throw new CliError(err.message);
        throw err;
      }
    });
    return { id: user.id, username: user.username };
  },
};

/** One line from standard input, without its line ending; prompted for without echo on a terminal. */
async function readPassword(): Promise<string> {
  const raw = process.stdin.isTTY ? await readHiddenLine('Password: ') : await readAll(MAX_PASSWORD_LENGTH * 4 + 2);
  const password = raw.replace(/\r?\n$/, '');
  if (password === '') throw new CliError('no password on standard input');
  if (/[\r\n]/.test(password)) throw new CliError('the password must be a single line');
  return password;
}

async function readAll(limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const buf = typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer);
    size += buf.length;
    if (size > limit) throw new CliError('the password on standard input is too long');
    chunks.push(buf);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function readHiddenLine(prompt: string): Promise<string> {
  const stdin = process.stdin;
  process.stderr.write(prompt);
  stdin.setRawMode(true);
  stdin.setEncoding('utf8');
  return new Promise((resolve, reject) => {
    let line = '';
    const done = (err?: Error) => {
      stdin.off('data', onData);
      stdin.setRawMode(false);
      stdin.pause();
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(line);
    };
    const onData = (data: string) => {
      for (const ch of data) {
        if (ch === '\r' || ch === '\n' || ch === '\u0004') return done();
        if (ch === '\u0003') return done(new CliError('cancelled'));
        if (ch === '\u007f' || ch === '\b') line = [...line].slice(0, -1).join('');
        else if (ch >= ' ') line += ch;
      }
    };
    stdin.on('data', onData);
    stdin.resume();
  });
}
