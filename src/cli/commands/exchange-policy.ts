// `exchange-policy set|list|remove`: RFC 8693 token exchange policies, one per actor client and
// audience (a resource server). No policy, no exchange. Each change and its audit event
// (`exchange_policy.set` / `exchange_policy.removed`, rule admin.cli) commit together.
import { loadConfig } from '../../config.ts';
import {
  deleteExchangePolicy, DEFAULT_EXCHANGE_DEPTH, DEFAULT_EXCHANGE_TTL_SECONDS, ExchangePolicyError, findExchangePolicy,
  listExchangePolicies, MAX_EXCHANGE_DEPTH, MAX_EXCHANGE_TTL_SECONDS, requireAudience, requireClientId, upsertExchangePolicy,
  validateExchangePolicy, type ExchangePolicy,
} from '../../exchange/policies.ts';
import {
  CLI_AUDIT, CliError, expectPositionals, parseCommandArgs, UsageError, withDatabase, type Command,
} from '../context.ts';
import { auditedChange } from './smart-input.ts';

/** Runs fn, turning ExchangePolicyError into CliError (exit 1 with its message). */
async function policyInput<T>(fn: () => T | Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw err instanceof ExchangePolicyError ? new CliError(err.message) : err;
  }
}

function required(command: string, flag: string, value: string | undefined): string {
  if (value === undefined) throw new UsageError(`${command}: ${flag} is required`);
  return value;
}

function wholeNumber(command: string, flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d{1,9}$/.test(value)) throw new UsageError(`${command}: ${flag} '${value}' is not a whole number`);
  return Number(value);
}

/** The policy's audit details (ids, scopes and limits only). */
function auditDetails(policy: ExchangePolicy) {
  return {
    subject_clients: policy.subjectClientIds, subject_roles: policy.subjectRoles, scopes: policy.scope.split(' '),
    max_ttl_seconds: policy.maxTtlSeconds, max_depth: policy.maxDepth, allow_break_glass: policy.allowBreakGlass,
  };
}

const SET_OPTIONS = {
  actor: { type: 'string' },
  audience: { type: 'string' },
  scope: { type: 'string' },
  'subject-client': { type: 'string', multiple: true },
  'subject-role': { type: 'string', multiple: true },
  'max-ttl': { type: 'string' },
  'max-depth': { type: 'string' },
  'allow-break-glass': { type: 'boolean' },
} as const;

export const exchangePolicySetCommand: Command = {
  name: 'exchange-policy set',
  synopsis: '--actor CLIENT_ID --audience URL --scope "SCOPES" [--subject-client ID]... [--subject-role ROLE]... '
    + '[--max-ttl SECONDS] [--max-depth N] [--allow-break-glass]',
  description: [
    'Set (create or replace, whole: omitted options get their defaults) the RFC 8693 token exchange policy of an',
    'actor client for one audience: whose tokens it may exchange (tokens issued to a --subject-client, or of users',
    'with a --subject-role; at least one), the SMART scope ceiling, lifetime and delegation depth. The actor, the',
    'subject clients and the audience (a resource server identifier) must be registered.',
  ],
  options: [
    ['--actor CLIENT_ID', 'the client that exchanges tokens, e.g. the AI orchestrator (required)'],
    ['--audience URL', 'the resource server the issued tokens are for (required)'],
    ['--scope "SCOPES"', 'SMART resource scope ceiling for this audience, e.g. "patient/Observation.rs" (required)'],
    ['--subject-client ID', 'it may exchange tokens issued to this client (repeatable)'],
    ['--subject-role ROLE', 'it may exchange tokens of users with this role (repeatable)'],
    ['--max-ttl SECONDS', `longest lifetime of an issued token, 1-${MAX_EXCHANGE_TTL_SECONDS} (default ${DEFAULT_EXCHANGE_TTL_SECONDS})`],
    ['--max-depth N', `most actors a delegation chain may hold, 1-${MAX_EXCHANGE_DEPTH} (default ${DEFAULT_EXCHANGE_DEPTH})`],
    ['--allow-break-glass', 'it may exchange break-glass tokens (default: no)'],
  ],
  output: '{"actorClientId","audience","subjectClientIds":[...],"subjectRoles":[...],"scope","maxTtlSeconds","maxDepth",'
    + '"allowBreakGlass","created":true|false}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, SET_OPTIONS);
    expectPositionals(this.name, positionals, []);
    const actorClientId = required(this.name, '--actor', values.actor);
    const audience = required(this.name, '--audience', values.audience);
    const scope = required(this.name, '--scope', values.scope);
    const maxTtlSeconds = wholeNumber(this.name, '--max-ttl', values['max-ttl']);
    const maxDepth = wholeNumber(this.name, '--max-depth', values['max-depth']);
    const input = {
      actorClientId, audience, scope, maxTtlSeconds, maxDepth,
      subjectClientIds: values['subject-client'] ?? [],
      subjectRoles: values['subject-role'] ?? [],
      allowBreakGlass: values['allow-break-glass'] ?? false,
    };
    // Checked before the database is opened.
    await policyInput(() => validateExchangePolicy(input));
    return policyInput(() => auditedChange(async (tx, audit) => {
      const created = (await findExchangePolicy(tx, actorClientId, audience)) === undefined;
      const policy = await upsertExchangePolicy(tx, input, { checkReferences: true });
      await audit.record({
        type: 'exchange_policy.set', outcome: 'success', rule: CLI_AUDIT.rule,
        target: { clientId: policy.actorClientId, audience: policy.audience },
        details: { ...CLI_AUDIT.details, created, ...auditDetails(policy) },
      }, tx);
      return { ...policy, created };
    }));
  },
};

export const exchangePolicyListCommand: Command = {
  name: 'exchange-policy list',
  synopsis: '[--actor CLIENT_ID]',
  description: ['List the token exchange policies, all or those of one actor client, by actor then audience.'],
  options: [['--actor CLIENT_ID', 'only this actor\'s policies']],
  output: '{"policies":[{"actorClientId","audience","subjectClientIds","subjectRoles","scope","maxTtlSeconds","maxDepth","allowBreakGlass"}]}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { actor: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    const actor = values.actor === undefined ? undefined : await policyInput(() => requireClientId(values.actor, '--actor'));
    return withDatabase(loadConfig(), async (db) => ({ policies: await listExchangePolicies(db, actor) }));
  },
};

export const exchangePolicyRemoveCommand: Command = {
  name: 'exchange-policy remove',
  synopsis: '--actor CLIENT_ID --audience URL',
  description: ['Remove the token exchange policy of an actor client for an audience (it may then exchange nothing for it).',
    'Fails when there is none.'],
  options: [
    ['--actor CLIENT_ID', 'the actor client (required)'],
    ['--audience URL', 'the audience (required)'],
  ],
  output: '{"actorClientId":"...","audience":"...","removed":true}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { actor: { type: 'string' }, audience: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    const actorClientId = await policyInput(() => requireClientId(required(this.name, '--actor', values.actor), '--actor'));
    const audience = await policyInput(() => requireAudience(required(this.name, '--audience', values.audience)));
    return auditedChange(async (tx, audit) => {
      const policy = await findExchangePolicy(tx, actorClientId, audience);
      if (!policy || !(await deleteExchangePolicy(tx, actorClientId, audience))) {
        throw new CliError(`no exchange policy for actor ${actorClientId} and audience ${audience}`);
      }
      await audit.record({
        type: 'exchange_policy.removed', outcome: 'success', rule: CLI_AUDIT.rule,
        target: { clientId: actorClientId, audience },
        details: { ...CLI_AUDIT.details, ...auditDetails(policy) },
      }, tx);
      return { actorClientId, audience, removed: true };
    });
  },
};
