// `role set`: the SMART scope ceiling of a user role. A user is granted at most the union of the
// ceilings of their roles; a role without one permits no resource scope.
import { normaliseRoleScope, requireRoleName, setRoleScopes } from '../../smart/roles.ts';
import {
  CLI_AUDIT, expectPositionals, parseCommandArgs, UsageError, type Command,
} from '../context.ts';
import { auditedChange, smartInput } from './smart-input.ts';

export const roleSetCommand: Command = {
  name: 'role set',
  synopsis: '--name ROLE --scope "SCOPES"',
  description: [
    'Set (create or replace) the SMART scope ceiling of a user role: space-separated SMART resource scopes,',
    'e.g. "patient/Observation.rs patient/Patient.r user/Practitioner.r". v1 scopes (patient/*.read) are',
    'accepted and stored in v2 form. An empty list permits nothing.',
  ],
  options: [
    ['--name ROLE', 'the role, as given to users with `user add --role` (required)'],
    ['--scope "SCOPES"', 'the ceiling (required)'],
  ],
  output: '{"role":"...","scope":"normalised scopes"}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { name: { type: 'string' }, scope: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    if (values.name === undefined) throw new UsageError(`${this.name}: --name is required`);
    if (values.scope === undefined) throw new UsageError(`${this.name}: --scope is required`);
    const role = smartInput(() => requireRoleName(values.name!));
    const tokens = smartInput(() => normaliseRoleScope(values.scope!));
    return auditedChange(async (tx, audit) => {
      await setRoleScopes(tx, role, tokens.join(' '));
      await audit.record({
        type: 'role.scopes_set', outcome: 'success', rule: CLI_AUDIT.rule,
        details: { ...CLI_AUDIT.details, role, scopes: tokens },
      }, tx);
      return { role, scope: tokens.join(' ') };
    });
  },
};
