// Admin CLI: `npm run -s cli -- <command>`. Same configuration (environment) as the server, so it acts
// on the same database and key material. stdout carries only the command's JSON result; errors are
// one line on stderr. Exit codes: 0 success, 1 failure, 2 usage error.
import { auditExportCommand } from './commands/audit-export.ts';
import { auditVerifyCommand } from './commands/audit-verify.ts';
import {
  breakGlassDisableCommand, breakGlassEnableCommand, breakGlassListCommand, breakGlassReviewCommand, breakGlassRevokeCommand,
} from './commands/break-glass.ts';
import { careTeamAddCommand, careTeamEndCommand, careTeamListCommand } from './commands/care-team.ts';
import { clientAddCommand } from './commands/client-add.ts';
import { exchangePolicyListCommand, exchangePolicyRemoveCommand, exchangePolicySetCommand } from './commands/exchange-policy.ts';
import { iatCreateCommand } from './commands/iat.ts';
import { keysRotateCommand } from './commands/keys-rotate.ts';
import { launchCreateCommand } from './commands/launch-create.ts';
import { migrateCommand } from './commands/migrate.ts';
import { passkeyListCommand, passkeyResetCommand } from './commands/passkey.ts';
import { patientAddCommand } from './commands/patient-add.ts';
import { roleSetCommand } from './commands/role-set.ts';
import { seedCommand } from './commands/seed.ts';
import { userAddCommand } from './commands/user-add.ts';
import { closeOpenDatabase, UsageError, type Command } from './context.ts';

const PROGRAM = 'clinical-authz';
const COMMANDS: readonly Command[] = [
  migrateCommand, seedCommand, userAddCommand, clientAddCommand, keysRotateCommand, auditVerifyCommand, auditExportCommand,
  patientAddCommand, careTeamAddCommand, careTeamEndCommand, careTeamListCommand, launchCreateCommand, roleSetCommand,
  exchangePolicySetCommand, exchangePolicyListCommand, exchangePolicyRemoveCommand, passkeyListCommand, passkeyResetCommand,
  breakGlassListCommand, breakGlassReviewCommand, breakGlassDisableCommand, breakGlassEnableCommand, breakGlassRevokeCommand,
  iatCreateCommand,
];

// Libraries (oidc-provider notices) may write to the console: keep stdout for the JSON result.
for (const method of ['log', 'info', 'debug'] as const) {
  console[method] = (...args: unknown[]) => console.error(...args);
}

function describeCommand(command: Command): string[] {
  const lines = [`  ${[command.name, command.synopsis].filter(Boolean).join(' ')}`];
  for (const text of command.description) lines.push(`      ${text}`);
  if (command.options?.length) {
    const width = Math.max(...command.options.map(([flag]) => flag.length));
    for (const [flag, text] of command.options) lines.push(`      ${flag.padEnd(width)}  ${text}`);
  }
  lines.push(`      Prints ${command.output}`);
  return lines;
}

/** The full usage text, or that of the given commands only (`help user`, `user add --help`). */
function usage(only?: readonly Command[]): string {
  const commands = only ?? COMMANDS;
  const lines = [
    `Usage: npm run -s cli -- ${only?.length === 1 ? only[0]!.name : '<command>'} [options]`,
    '       (-s keeps npm\'s own banner off stdout)',
  ];
  if (!only) {
    lines.push(
      '',
      'Administers the authorization server with the server\'s configuration from the environment:',
      'DATABASE_URL (else the embedded database under DATA_DIR), KEYS_DIR, NODE_ENV, ... .',
      'Stop a server using the embedded database before running commands that use the database.',
      'A successful command prints one JSON object on stdout; errors are one line on stderr.',
      'Exit status: 0 success, 1 failure, 2 usage error.',
    );
  }
  lines.push('', only ? 'Command:' : 'Commands:');
  for (const command of commands) lines.push('', ...describeCommand(command));
  if (!only) {
    lines.push('', '  help [COMMAND]', '      Show this help, or the help of one command (also: --help, -h, COMMAND --help).');
  }
  return `${lines.join('\n')}\n`;
}

function findCommand(words: string[]): { command: Command; rest: string[] } | undefined {
  for (const command of COMMANDS) {
    const name = command.name.split(' ');
    if (name.every((word, i) => words[i] === word)) return { command, rest: words.slice(name.length) };
  }
  return undefined;
}

function unknownCommand(words: string[]): UsageError {
  const group = COMMANDS.filter((c) => c.name.split(' ')[0] === words[0] && c.name.includes(' '));
  if (group.length && (words[1] === undefined || words[1].startsWith('-'))) {
    return new UsageError(`${words[0]}: missing subcommand (${group.map((c) => c.name.split(' ')[1]).join(', ')})`);
  }
  const name = group.length ? `${words[0]} ${words[1]}` : words[0];
  return new UsageError(`unknown command '${name}'`);
}

/** True when -h/--help appears among the options (not after a `--` terminator). */
function wantsHelp(args: string[]): boolean {
  const end = args.indexOf('--');
  return (end === -1 ? args : args.slice(0, end)).some((a) => a === '--help' || a === '-h');
}

/** Runs the CLI; resolves to the exit code. */
async function runCli(argv: string[]): Promise<number> {
  const [first, ...others] = argv;
  if (first === undefined) {
    process.stderr.write(usage());
    return 2;
  }
  if (first === 'help' || first === '--help' || first === '-h') {
    if (others.length === 0) {
      process.stdout.write(usage());
      return 0;
    }
    // `help user` shows every `user ...` command, `help user add` just that one.
    const matching = COMMANDS.filter((c) => others.every((word, i) => c.name.split(' ')[i] === word));
    if (matching.length === 0) throw new UsageError(`unknown command '${others.join(' ')}'`);
    process.stdout.write(usage(matching));
    return 0;
  }
  const found = findCommand(argv);
  if (!found) throw unknownCommand(argv);
  if (wantsHelp(found.rest)) {
    process.stdout.write(usage([found.command]));
    return 0;
  }
  const result = await found.command.run(found.rest);
  // undefined: the command wrote its output to stdout itself (audit export).
  if (result !== undefined) process.stdout.write(`${JSON.stringify(result)}\n`);
  return 0;
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  // Errors the code raises on purpose carry a message for the operator; anything else is unexpected.
  const known = ['UsageError', 'CliError', 'ConfigError', 'KeyMaterialError', 'SeedError', 'ClientRegistrationError',
    'UserExistsError', 'StartupError', 'MigrationError', 'DatabaseInUseError'];
  const message = err.message.replace(/\s*\n\s*/g, ' ').trim();
  if (err.name === 'DatabaseUnavailableError') {
    return `database unavailable: ${(err.cause as Error | undefined)?.message ?? message}`;
  }
  if (err.name === 'InvalidInputError' || err.name === 'AuditWriteError') {
    return `${message}: ${String((err as { error_description?: unknown }).error_description)}`;
  }
  return known.includes(err.name) ? message : `unexpected error: ${message || err.name}`;
}

function onSignal(signal: NodeJS.Signals, code: number) {
  process.once(signal, () => {
    process.stderr.write(`${PROGRAM}: interrupted by ${signal}\n`);
    // Close the database first: the embedded one must not be left half-written.
    closeOpenDatabase().finally(() => process.exit(code));
  });
}

onSignal('SIGINT', 130);
onSignal('SIGTERM', 143);
runCli(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err: unknown) => {
    const usageHint = err instanceof UsageError ? ' (see: npm run -s cli -- help)' : '';
    process.stderr.write(`${PROGRAM}: ${describeError(err)}${usageHint}\n`);
    process.exitCode = err instanceof UsageError ? 2 : 1;
  },
);
