// Care teams: which user may see which patient, and during which window. A user is on a patient's care
// team at instant t when a row has valid_from <= t < coalesce(valid_to, infinity). Rows are never
// deleted by these functions: ending a membership sets valid_to, so the history stays.
import type { Queryable } from '../db/index.ts';
import { foreignKeyError, normalisePatientId, requirePatientId, SmartDataError } from './patients.ts';

export interface CareTeamPatient {
  patientId: string;
  displayName: string;
}

function validInstant(value: Date | null | undefined, field: string): void {
  if (value instanceof Date && Number.isNaN(value.getTime())) throw new SmartDataError(`invalid ${field}: not a valid date`);
  if (value !== undefined && value !== null && !(value instanceof Date)) throw new SmartDataError(`invalid ${field}: not a date`);
}

/**
 * Adds a care-team membership from validFrom (default: now, the database's clock) to validTo (default:
 * open-ended). Idempotent: a membership with the same start is updated to the given end; without
 * validFrom, an identical current membership (same end) is left as it is. Resolves to true when a row
 * was written. Unknown user or patient, or an end not after the start → SmartDataError.
 */
export async function addCareTeamMember(
  db: Queryable,
  input: { userId: string; patientId: string; validFrom?: Date; validTo?: Date | null },
): Promise<boolean> {
  const patientId = requirePatientId(input.patientId);
  validInstant(input.validFrom, 'validFrom');
  validInstant(input.validTo, 'validTo');
  const validTo = input.validTo ?? null;
  if (typeof input.userId !== 'string' || input.userId === '') throw new SmartDataError('invalid user id');

  const { rows } = await db.query<{ user_known: boolean; patient_known: boolean; now: Date }>(
    `SELECT EXISTS (SELECT 1 FROM users WHERE id = $1) AS user_known,
            EXISTS (SELECT 1 FROM patients WHERE id = $2) AS patient_known, now() AS now`,
    [input.userId, patientId],
  );
  const check = rows[0]!;
  if (!check.user_known) throw new SmartDataError('unknown user');
  if (!check.patient_known) throw new SmartDataError('unknown patient (add it first)');
  const start = input.validFrom ?? new Date(check.now);
  if (validTo && validTo.getTime() <= start.getTime()) {
    throw new SmartDataError('invalid care-team window: validTo must be after validFrom (or after now when validFrom is not given)');
  }

  try {
    if (input.validFrom === undefined) {
      const same = await db.query(
        `SELECT 1 FROM care_team
          WHERE user_id = $1 AND patient_id = $2 AND valid_from <= now()
            AND (valid_to IS NULL OR valid_to > now()) AND valid_to IS NOT DISTINCT FROM $3::timestamptz
          LIMIT 1`,
        [input.userId, patientId, validTo],
      );
      if (same.rows.length > 0) return false;
      const inserted = await db.query(
        `INSERT INTO care_team (user_id, patient_id, valid_to) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, patient_id, valid_from) DO UPDATE SET valid_to = EXCLUDED.valid_to
           WHERE care_team.valid_to IS DISTINCT FROM EXCLUDED.valid_to`,
        [input.userId, patientId, validTo],
      );
      return inserted.rowCount > 0;
    }
    const upserted = await db.query(
      `INSERT INTO care_team (user_id, patient_id, valid_from, valid_to) VALUES ($1, $2, $3, $4)
       ON CONFLICT (user_id, patient_id, valid_from) DO UPDATE SET valid_to = EXCLUDED.valid_to
         WHERE care_team.valid_to IS DISTINCT FROM EXCLUDED.valid_to`,
      [input.userId, patientId, input.validFrom, validTo],
    );
    return upserted.rowCount > 0;
  } catch (err) {
    throw foreignKeyError(err, 'unknown user or patient');
  }
}

/**
 * Ends the user's current memberships for the patient at `at` (default now): valid_to = at on every row
 * valid at that instant (a row that starts exactly at `at` is removed: its window would be empty).
 * Memberships that start later are left alone. Resolves to the number of rows ended (0: not on the
 * care team then).
 */
export async function endCareTeamMembership(db: Queryable, userId: string, patientId: string, at?: Date): Promise<number> {
  const id = requirePatientId(patientId);
  validInstant(at, 'end time');
  const { rows } = await db.query<{ n: number }>(
    `WITH t AS (SELECT coalesce($3::timestamptz, now()) AS at),
     ended AS (
       UPDATE care_team SET valid_to = t.at FROM t
        WHERE user_id = $1 AND patient_id = $2 AND valid_from < t.at AND (valid_to IS NULL OR valid_to > t.at)
       RETURNING 1),
     emptied AS (
       DELETE FROM care_team USING t
        WHERE user_id = $1 AND patient_id = $2 AND valid_from = t.at AND (valid_to IS NULL OR valid_to > t.at)
       RETURNING 1)
     SELECT ((SELECT count(*) FROM ended) + (SELECT count(*) FROM emptied))::int AS n`,
    [userId, id, at ?? null],
  );
  return Number(rows[0]?.n ?? 0);
}

/** The patients whose care team the user is on at `at` (default now), ordered by display name then id. */
export async function currentCareTeamPatients(db: Queryable, userId: string, at?: Date): Promise<CareTeamPatient[]> {
  validInstant(at, 'instant');
  const { rows } = await db.query<{ patient_id: string; display_name: string }>(
    `SELECT DISTINCT p.id AS patient_id, p.display_name
       FROM care_team c JOIN patients p ON p.id = c.patient_id
      WHERE c.user_id = $1 AND c.valid_from <= coalesce($2::timestamptz, now())
        AND (c.valid_to IS NULL OR c.valid_to > coalesce($2::timestamptz, now()))
      ORDER BY p.display_name, p.id`,
    [userId, at ?? null],
  );
  return rows.map((r) => ({ patientId: r.patient_id, displayName: r.display_name }));
}

/** True when the user is on the patient's care team at `at` (default now). An invalid patient id is never on it. */
export async function isOnCareTeam(db: Queryable, userId: string, patientId: string, at?: Date): Promise<boolean> {
  validInstant(at, 'instant');
  const id = normalisePatientId(patientId);
  if (id === undefined) return false;
  const { rows } = await db.query(
    `SELECT 1 FROM care_team
      WHERE user_id = $1 AND patient_id = $2 AND valid_from <= coalesce($3::timestamptz, now())
        AND (valid_to IS NULL OR valid_to > coalesce($3::timestamptz, now()))
      LIMIT 1`,
    [userId, id, at ?? null],
  );
  return rows.length > 0;
}
