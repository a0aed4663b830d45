// `launch create`: an EHR launch value (the SMART `launch` parameter) for a patient, as an EHR would
// mint it. Printed once; only its SHA-256 is stored, and the audit event carries neither the value nor
// the raw patient id (the patient only as its pseudonym).
import { createLaunch, MAX_LAUNCH_TTL_SECONDS } from '../../smart/launch-contexts.ts';
import { requireEncounterId, requirePatientId } from '../../smart/patients.ts';
import {
  CLI_AUDIT, CliError, expectPositionals, parseCommandArgs, UsageError, type Command,
} from '../context.ts';
import { requireUser, usernameOption } from './care-team.ts';
import { auditedChange, smartInput } from './smart-input.ts';

const OPTIONS = {
  patient: { type: 'string' },
  encounter: { type: 'string' },
  client: { type: 'string' },
  user: { type: 'string' },
  ttl: { type: 'string' },
} as const;

export const DEFAULT_LAUNCH_TTL_SECONDS = 300;

export const launchCreateCommand: Command = {
  name: 'launch create',
  synopsis: '--patient ID [--encounter ID] [--client CLIENT_ID] [--user USERNAME] [--ttl SECONDS]',
  description: [
    'Create an EHR launch value: the app passes it as `launch` with the `launch` scope and gets this patient',
    '(and encounter) as its context. Shown only this once; only its SHA-256 is stored.',
  ],
  options: [
    ['--patient ID', 'FHIR Patient id or Patient/ID of a recorded patient (required)'],
    ['--encounter ID', 'FHIR Encounter id or Encounter/ID'],
    ['--client CLIENT_ID', 'only this client may use the launch'],
    ['--user USERNAME', 'only this user may use the launch'],
    ['--ttl SECONDS', `lifetime, 1-${MAX_LAUNCH_TTL_SECONDS} (default ${DEFAULT_LAUNCH_TTL_SECONDS})`],
  ],
  output: '{"launch":"...","expiresAt":"ISO 8601"}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, OPTIONS);
    expectPositionals(this.name, positionals, []);
    if (values.patient === undefined) throw new UsageError(`${this.name}: --patient is required`);
    const patientId = smartInput(() => requirePatientId(values.patient!, '--patient'));
    const encounterId = values.encounter === undefined ? undefined : smartInput(() => requireEncounterId(values.encounter!));
    const username = usernameOption(this.name, values.user, false);
    let ttlSeconds = DEFAULT_LAUNCH_TTL_SECONDS;
    if (values.ttl !== undefined) {
      if (!/^\d{1,9}$/.test(values.ttl)) throw new UsageError(`${this.name}: --ttl '${values.ttl}' is not a whole number of seconds`);
      ttlSeconds = Number(values.ttl);
      if (ttlSeconds < 1 || ttlSeconds > MAX_LAUNCH_TTL_SECONDS) {
        throw new CliError(`invalid --ttl: from 1 to ${MAX_LAUNCH_TTL_SECONDS} seconds`);
      }
    }
    if (values.client !== undefined && !/^[\x21-\x7e]{1,256}$/.test(values.client)) throw new CliError('invalid --client');
    const clientId = values.client;
    return auditedChange(async (tx, audit) => {
      const user = username === undefined ? undefined : await requireUser(tx, username);
      const created = await createLaunch(tx, {
        patientId, ttlSeconds,
        ...(encounterId !== undefined && { encounterId }),
        ...(clientId !== undefined && { clientId }),
        ...(user && { userId: user.id }),
      });
      await audit.record({
        type: 'launch.created', outcome: 'success', rule: CLI_AUDIT.rule,
        target: { patientId, clientId },
        details: {
          ...CLI_AUDIT.details, user_id: user?.id, ttl_seconds: ttlSeconds, encounter: encounterId !== undefined,
          expires_at: created.expiresAt.toISOString(),
        },
      }, tx);
      return { launch: created.launch, expiresAt: created.expiresAt.toISOString() };
    });
  },
};
