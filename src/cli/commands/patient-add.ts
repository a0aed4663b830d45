// `patient add`: records a patient (FHIR Patient logical id and the name shown in the patient picker),
// or renames one. The audit event carries the patient only as its pseudonym, never the name.
import { requireDisplayName, requirePatientId, upsertPatient } from '../../smart/patients.ts';
import {
  CLI_AUDIT, expectPositionals, parseCommandArgs, UsageError, type Command,
} from '../context.ts';
import { auditedChange, smartInput } from './smart-input.ts';

const OPTIONS = {
  id: { type: 'string' },
  name: { type: 'string' },
} as const;

export const patientAddCommand: Command = {
  name: 'patient add',
  synopsis: '--id ID --name NAME',
  description: [
    'Record a patient by FHIR Patient id, with the name shown to clinicians in the patient picker; an existing',
    'patient is renamed. The name never reaches the audit log.',
  ],
  options: [
    ['--id ID', 'FHIR Patient logical id, 1-64 of A-Z a-z 0-9 - . (Patient/ID is accepted; stored as ID)'],
    ['--name NAME', 'display name, 1-200 characters'],
  ],
  output: '{"id":"...","created":true|false}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, OPTIONS);
    expectPositionals(this.name, positionals, []);
    if (values.id === undefined) throw new UsageError(`${this.name}: --id is required`);
    if (values.name === undefined) throw new UsageError(`${this.name}: --name is required`);
    const id = smartInput(() => requirePatientId(values.id!, '--id'));
    const displayName = smartInput(() => requireDisplayName(values.name!));
    return auditedChange(async (tx, audit) => {
      const { rows } = await tx.query('SELECT 1 FROM patients WHERE id = $1', [id]);
      const created = rows.length === 0;
      await upsertPatient(tx, { id, displayName });
      await audit.record({
        type: 'patient.added', outcome: 'success', rule: CLI_AUDIT.rule,
        target: { patientId: id }, details: { ...CLI_AUDIT.details, created },
      }, tx);
      return { id, created };
    });
  },
};
