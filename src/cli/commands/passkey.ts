// `passkey list` / `passkey reset`: an admin sees a user's passkeys (no key material) and removes them
// all, e.g. when a device is lost. After a reset the user enrols again after a recent password sign-in.
import { findUserByUsername, normaliseUsername } from '../../accounts/users.ts';
import type { Queryable } from '../../db/index.ts';
import { listCredentials, removeAllCredentials } from '../../mfa/credentials.ts';
import { CLI_AUDIT, CliError, expectPositionals, parseCommandArgs, UsageError, type Command } from '../context.ts';
import { auditedChange } from './smart-input.ts';

function requireUsername(username: string | undefined, command: string): string {
  if (username === undefined) throw new UsageError(`${command}: --username is required`);
  return username;
}

async function requireUser(db: Queryable, username: string, command: string) {
  const user = await findUserByUsername(db, normaliseUsername(username));
  if (!user) throw new CliError(`${command}: no such user`);
  return user;
}

export const passkeyListCommand: Command = {
  name: 'passkey list',
  synopsis: '--username NAME',
  description: ['List a user\'s registered passkeys (ids, names, kinds, dates; never key material).'],
  options: [['--username NAME', 'the user (required)']],
  output: '{"username":"...","passkeys":[{"id","name","deviceType","backedUp","createdAt","lastUsedAt"}]}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { username: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    const username = requireUsername(values.username, this.name);
    return auditedChange(async (tx) => {
      const user = await requireUser(tx, username, this.name);
      const passkeys = await listCredentials(tx, user.id);
      return {
        username: user.username,
        passkeys: passkeys.map((p) => ({
          id: p.id, name: p.name, deviceType: p.deviceType, backedUp: p.backedUp,
          createdAt: p.createdAt.toISOString(), lastUsedAt: p.lastUsedAt?.toISOString() ?? null,
        })),
      };
    });
  },
};

export const passkeyResetCommand: Command = {
  name: 'passkey reset',
  synopsis: '--username NAME',
  description: [
    'Remove every passkey of a user (lost or compromised device). Audited. The user enrols again on the',
    'account page after a recent password sign-in; until then, requests that need a passkey are refused.',
  ],
  options: [['--username NAME', 'the user (required)']],
  output: '{"username":"...","removed":N}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { username: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    const username = requireUsername(values.username, this.name);
    return auditedChange(async (tx, audit) => {
      const user = await requireUser(tx, username, this.name);
      const removed = await removeAllCredentials(tx, user.id);
      await audit.record({
        type: 'webauthn.reset', outcome: 'success', severity: 'warning', rule: CLI_AUDIT.rule,
        target: {}, actor: { userId: user.id }, details: { ...CLI_AUDIT.details, removed },
      }, tx);
      return { username: user.username, removed };
    });
  },
};
