// Patients known to the server (FHIR Patient logical ids) and the error the SMART data functions
// raise for bad input.
import type { Queryable } from '../db/index.ts';

/**
 * Bad input to a SMART data function (unknown user or patient, invalid id, out-of-range value).
 * The message is safe to print to an operator: it never contains a patient id, a patient's name, a
 * launch value or database internals.
 */
export class SmartDataError extends Error {
  override name = 'SmartDataError';
}

// FHIR R4 id: [A-Za-z0-9\-\.]{1,64}.
export const FHIR_ID_PATTERN = /^[A-Za-z0-9.-]{1,64}$/;
const PATIENT_REFERENCE = /^(?:Patient\/)?([A-Za-z0-9.-]{1,64})$/;
export const MAX_DISPLAY_NAME_LENGTH = 200;

/** `Patient/123` or `123` → `123`; anything else (absolute URLs, other resource types, bad syntax) → undefined. */
export function normalisePatientId(input: string): string | undefined {
  if (typeof input !== 'string') return undefined;
  return PATIENT_REFERENCE.exec(input.trim())?.[1];
}

/** normalisePatientId, or SmartDataError naming the field (never the value). */
export function requirePatientId(input: string, field = 'patient id'): string {
  const id = normalisePatientId(input);
  if (id === undefined) throw new SmartDataError(`invalid ${field}: expected a FHIR id (1-64 of A-Z a-z 0-9 - .), optionally as Patient/ID`);
  return id;
}

/** `Encounter/abc` or `abc` → `abc`, else SmartDataError. */
export function requireEncounterId(input: string): string {
  const id = /^(?:Encounter\/)?([A-Za-z0-9.-]{1,64})$/.exec(typeof input === 'string' ? input.trim() : '')?.[1];
  if (id === undefined) throw new SmartDataError('invalid encounter id: expected a FHIR id (1-64 of A-Z a-z 0-9 - .), optionally as Encounter/ID');
  return id;
}

export function requireDisplayName(input: string): string {
  const name = typeof input === 'string' ? input.trim() : '';
  if (name === '' || name.length > MAX_DISPLAY_NAME_LENGTH || /[\u0000-\u001f\u007f]/.test(name)) {
    throw new SmartDataError(`invalid patient display name: 1-${MAX_DISPLAY_NAME_LENGTH} characters, no control characters`);
  }
  return name;
}

/** Creates the patient, or updates its display name. */
export async function upsertPatient(db: Queryable, input: { id: string; displayName: string }): Promise<void> {
  const id = requirePatientId(input.id);
  const displayName = requireDisplayName(input.displayName);
  await db.query(
    `INSERT INTO patients (id, display_name) VALUES ($1, $2)
     ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name`,
    [id, displayName],
  );
}

export async function patientExists(db: Queryable, patientId: string): Promise<boolean> {
  const id = normalisePatientId(patientId);
  if (id === undefined) return false;
  const { rows } = await db.query('SELECT 1 FROM patients WHERE id = $1', [id]);
  return rows.length > 0;
}

/** SmartDataError for a foreign-key violation (a user or patient removed meanwhile); other errors unchanged. */
export function foreignKeyError(err: unknown, message: string): unknown {
  return (err as { code?: unknown } | null)?.code === '23503' ? new SmartDataError(message) : err;
}
