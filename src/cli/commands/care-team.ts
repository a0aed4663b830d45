// `care-team add|end|list`: who may see which patient, and when. Memberships are windows
// [valid_from, valid_to); ending one sets valid_to, so the history stays. Audit events carry the patient
// only as its pseudonym.
import { findUserByUsername, normaliseUsername, USERNAME_PATTERN, type User } from '../../accounts/users.ts';
import { loadConfig } from '../../config.ts';
import type { Queryable } from '../../db/index.ts';
import { addCareTeamMember, currentCareTeamPatients, endCareTeamMembership } from '../../smart/care-team.ts';
import { requirePatientId } from '../../smart/patients.ts';
import {
  CLI_AUDIT, CliError, expectPositionals, parseCommandArgs, UsageError, withDatabase,
  type Command,
} from '../context.ts';
import { instantOption } from '../instant.ts';
import { auditedChange, smartInput } from './smart-input.ts';

/** The username given with --user, checked before the database is opened. */
export function usernameOption(command: string, value: string | undefined, required: boolean): string | undefined {
  if (value === undefined) {
    if (required) throw new UsageError(`${command}: --user is required`);
    return undefined;
  }
  const username = normaliseUsername(value);
  if (!USERNAME_PATTERN.test(username)) throw new CliError('invalid --user: a username is 2-63 characters of a-z 0-9 . _ @ -');
  return username;
}

/** The user with that username, or CliError. */
export async function requireUser(db: Queryable, username: string): Promise<User> {
  const user = await findUserByUsername(db, username);
  if (!user) throw new CliError(`unknown user ${username}`);
  return user;
}

function requiredPatient(command: string, value: string | undefined): string {
  if (value === undefined) throw new UsageError(`${command}: --patient is required`);
  return smartInput(() => requirePatientId(value, '--patient'));
}

const iso = (value: Date | string | null) => (value === null ? null : new Date(value).toISOString());

export const careTeamAddCommand: Command = {
  name: 'care-team add',
  synopsis: '--user USERNAME --patient ID [--from ISO8601] [--to ISO8601]',
  description: [
    'Put a user on a patient\'s care team from --from (default: now) until --to (default: open-ended). Adding a',
    'membership that is already in place changes nothing; the same --from again sets its end to --to.',
  ],
  options: [
    ['--user USERNAME', 'the user (required)'],
    ['--patient ID', 'FHIR Patient id or Patient/ID of a patient recorded with `patient add` (required)'],
    ['--from ISO8601', 'start, inclusive: 2025-01-31 (UTC midnight) or 2025-01-31T08:00:00+01:00'],
    ['--to ISO8601', 'end, exclusive (after --from, or after now)'],
  ],
  output: '{"userId":"...","patientId":"...","added":true|false,"memberships":[{"validFrom":"...","validTo":"..."|null}]}'
    + ' (memberships: those of this user and patient that have not ended)',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, {
      user: { type: 'string' }, patient: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' },
    } as const);
    expectPositionals(this.name, positionals, []);
    const username = usernameOption(this.name, values.user, true)!;
    const patientId = requiredPatient(this.name, values.patient);
    const validFrom = instantOption(this.name, '--from', values.from);
    const validTo = instantOption(this.name, '--to', values.to);
    if (validFrom && validTo && validTo <= validFrom) throw new CliError('invalid care-team window: --to must be after --from');
    return auditedChange(async (tx, audit) => {
      const user = await requireUser(tx, username);
      const added = await addCareTeamMember(tx, { userId: user.id, patientId, ...(validFrom && { validFrom }), validTo: validTo ?? null });
      const { rows: [clock] } = await tx.query<{ now: Date }>('SELECT now() AS now');
      const { rows } = await tx.query<{ valid_from: Date; valid_to: Date | null }>(
        `SELECT valid_from, valid_to FROM care_team
          WHERE user_id = $1 AND patient_id = $2 AND (valid_to IS NULL OR valid_to > now()) ORDER BY valid_from`,
        [user.id, patientId],
      );
      if (added) {
        await audit.record({
          type: 'care_team.added', outcome: 'success', rule: CLI_AUDIT.rule,
          target: { patientId },
          details: { ...CLI_AUDIT.details, user_id: user.id, valid_from: iso(validFrom ?? clock!.now), valid_to: validTo?.toISOString() ?? null },
        }, tx);
      }
      return {
        userId: user.id, patientId, added,
        memberships: rows.map((r) => ({ validFrom: iso(r.valid_from), validTo: iso(r.valid_to) })),
      };
    });
  },
};

export const careTeamEndCommand: Command = {
  name: 'care-team end',
  synopsis: '--user USERNAME --patient ID',
  description: [
    'End the user\'s current membership of the patient\'s care team now (memberships that start later stay).',
    'Fails when the user is not on it.',
  ],
  options: [
    ['--user USERNAME', 'the user (required)'],
    ['--patient ID', 'FHIR Patient id or Patient/ID (required)'],
  ],
  output: '{"userId":"...","patientId":"...","ended":N}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { user: { type: 'string' }, patient: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    const username = usernameOption(this.name, values.user, true)!;
    const patientId = requiredPatient(this.name, values.patient);
    return auditedChange(async (tx, audit) => {
      const user = await requireUser(tx, username);
      const ended = await endCareTeamMembership(tx, user.id, patientId);
      if (ended === 0) throw new CliError(`user ${username} is not on that patient's care team`);
      await audit.record({
        type: 'care_team.ended', outcome: 'success', rule: CLI_AUDIT.rule,
        target: { patientId }, details: { ...CLI_AUDIT.details, user_id: user.id, ended },
      }, tx);
      return { userId: user.id, patientId, ended };
    });
  },
};

export const careTeamListCommand: Command = {
  name: 'care-team list',
  synopsis: '--user USERNAME',
  description: ['List the patients whose care team the user is on now, by display name.'],
  options: [['--user USERNAME', 'the user (required)']],
  output: '{"userId":"...","username":"...","patients":[{"patientId":"...","displayName":"..."}]}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, { user: { type: 'string' } } as const);
    expectPositionals(this.name, positionals, []);
    const username = usernameOption(this.name, values.user, true)!;
    const config = loadConfig();
    return withDatabase(config, async (db) => {
      const user = await requireUser(db, username);
      const patients = await currentCareTeamPatients(db, user.id);
      return { userId: user.id, username: user.username, patients };
    });
  },
};
