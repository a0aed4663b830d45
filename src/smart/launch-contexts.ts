// SMART launch context: EHR launch values (the `launch` parameter of an EHR launch), and the patient
// context chosen for each authorization (one oidc-provider Grant), whichever way it was chosen.
import { createHash, randomBytes } from 'node:crypto';

import type { Queryable } from '../db/index.ts';
import { foreignKeyError, requireEncounterId, requirePatientId, SmartDataError } from './patients.ts';

export const MAX_LAUNCH_TTL_SECONDS = 3600;
// 32 random bytes in base64url, unpadded.
const LAUNCH_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const GRANT_ID_PATTERN = /^[\x21-\x7e]{1,256}$/;

export interface LaunchContext {
  patientId: string;
  encounterId?: string | undefined;
  /** If set, only this client may use the launch. */
  clientId?: string | undefined;
  /** If set, only this user may use the launch. */
  userId?: string | undefined;
  expiresAt: Date;
}

export interface GrantLaunchContext {
  grantId: string;
  patientId: string;
  encounterId?: string | undefined;
  needPatientBanner: boolean;
  source: 'standalone' | 'ehr';
  expiresAt: Date;
}

/** SHA-256 of a launch value, base64url: the only form in which a launch value is stored. */
export function launchDigest(launch: string): string {
  return createHash('sha256').update(launch, 'utf8').digest('base64url');
}

/**
 * Creates an EHR launch value for a patient (and optionally an encounter, a client and a user that alone
 * may use it), valid for ttlSeconds (1..3600). Only its digest is stored: the value is returned once.
 */
export async function createLaunch(
  db: Queryable,
  input: { patientId: string; encounterId?: string; clientId?: string; userId?: string; ttlSeconds: number },
): Promise<{ launch: string; expiresAt: Date }> {
  const patientId = requirePatientId(input.patientId);
  const encounterId = input.encounterId === undefined ? null : requireEncounterId(input.encounterId);
  if (!Number.isInteger(input.ttlSeconds) || input.ttlSeconds < 1 || input.ttlSeconds > MAX_LAUNCH_TTL_SECONDS) {
    throw new SmartDataError(`invalid launch lifetime: an integer number of seconds from 1 to ${MAX_LAUNCH_TTL_SECONDS}`);
  }
  for (const [field, value] of [['client id', input.clientId], ['user id', input.userId]] as const) {
    if (value !== undefined && (typeof value !== 'string' || value === '' || value.length > 256)) throw new SmartDataError(`invalid ${field}`);
  }
  const clientId = input.clientId ?? null;
  const userId = input.userId ?? null;

  const { rows: checks } = await db.query<{ patient_known: boolean; client_known: boolean; user_known: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM patients WHERE id = $1) AS patient_known,
            ($2::text IS NULL OR EXISTS (SELECT 1 FROM clients WHERE client_id = $2)) AS client_known,
            ($3::text IS NULL OR EXISTS (SELECT 1 FROM users WHERE id = $3)) AS user_known`,
    [patientId, clientId, userId],
  );
  const check = checks[0]!;
  if (!check.patient_known) throw new SmartDataError('unknown patient (add it first)');
  if (!check.client_known) throw new SmartDataError('unknown client');
  if (!check.user_known) throw new SmartDataError('unknown user');

  const launch = randomBytes(32).toString('base64url');
  // Milliseconds, so that the expiresAt returned (a JS Date) is exactly the stored instant.
  try {
    const { rows } = await db.query<{ expires_at: Date }>(
      `INSERT INTO launch_contexts (launch_digest, patient_id, encounter_id, client_id, user_id, expires_at)
       VALUES ($1, $2, $3, $4, $5, date_trunc('milliseconds', now() + make_interval(secs => $6::int)))
       RETURNING expires_at`,
      [launchDigest(launch), patientId, encounterId, clientId, userId, input.ttlSeconds],
    );
    return { launch, expiresAt: new Date(rows[0]!.expires_at) };
  } catch (err) {
    throw foreignKeyError(err, 'unknown patient');
  }
}

/**
 * The context of a launch value valid at `at` (default now); undefined when it is malformed (checked
 * before hashing), unknown or expired. The caller checks clientId/userId against who is using it.
 */
export async function resolveLaunch(db: Queryable, launch: string, at?: Date): Promise<LaunchContext | undefined> {
  if (typeof launch !== 'string' || !LAUNCH_PATTERN.test(launch)) return undefined;
  const { rows } = await db.query<{ patient_id: string; encounter_id: string | null; client_id: string | null; user_id: string | null; expires_at: Date }>(
    `SELECT patient_id, encounter_id, client_id, user_id, expires_at FROM launch_contexts
      WHERE launch_digest = $1 AND expires_at > coalesce($2::timestamptz, now())`,
    [launchDigest(launch), instantOrNull(at)],
  );
  const row = rows[0];
  if (!row) return undefined;
  return {
    patientId: row.patient_id,
    ...(row.encounter_id !== null && { encounterId: row.encounter_id }),
    ...(row.client_id !== null && { clientId: row.client_id }),
    ...(row.user_id !== null && { userId: row.user_id }),
    expiresAt: new Date(row.expires_at),
  };
}

/** Saves the patient context of a grant, replacing any earlier one of the same grant. */
export async function saveGrantLaunchContext(db: Queryable, context: GrantLaunchContext): Promise<void> {
  if (typeof context.grantId !== 'string' || !GRANT_ID_PATTERN.test(context.grantId)) throw new SmartDataError('invalid grant id');
  const patientId = requirePatientId(context.patientId);
  const encounterId = context.encounterId === undefined ? null : requireEncounterId(context.encounterId);
  if (typeof context.needPatientBanner !== 'boolean') throw new SmartDataError('invalid needPatientBanner: a boolean');
  if (context.source !== 'standalone' && context.source !== 'ehr') throw new SmartDataError("invalid launch source: 'standalone' or 'ehr'");
  if (!(context.expiresAt instanceof Date) || Number.isNaN(context.expiresAt.getTime())) throw new SmartDataError('invalid expiresAt: a date');
  await db.query(
    `INSERT INTO grant_launch_contexts (grant_id, patient_id, encounter_id, need_patient_banner, source, expires_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (grant_id) DO UPDATE SET patient_id = EXCLUDED.patient_id, encounter_id = EXCLUDED.encounter_id,
       need_patient_banner = EXCLUDED.need_patient_banner, source = EXCLUDED.source, expires_at = EXCLUDED.expires_at,
       created_at = now()`,
    [context.grantId, patientId, encounterId, context.needPatientBanner, context.source, context.expiresAt],
  );
}

/** The grant's patient context if it is still valid at `at` (default now). */
export async function findGrantLaunchContext(db: Queryable, grantId: string, at?: Date): Promise<GrantLaunchContext | undefined> {
  if (typeof grantId !== 'string' || !GRANT_ID_PATTERN.test(grantId)) return undefined;
  const { rows } = await db.query<{
    grant_id: string; patient_id: string; encounter_id: string | null; need_patient_banner: boolean; source: 'standalone' | 'ehr'; expires_at: Date;
  }>(
    `SELECT grant_id, patient_id, encounter_id, need_patient_banner, source, expires_at FROM grant_launch_contexts
      WHERE grant_id = $1 AND expires_at > coalesce($2::timestamptz, now())`,
    [grantId, instantOrNull(at)],
  );
  const row = rows[0];
  if (!row) return undefined;
  return {
    grantId: row.grant_id,
    patientId: row.patient_id,
    ...(row.encounter_id !== null && { encounterId: row.encounter_id }),
    needPatientBanner: row.need_patient_banner,
    source: row.source,
    expiresAt: new Date(row.expires_at),
  };
}

export async function deleteGrantLaunchContext(db: Queryable, grantId: string): Promise<void> {
  await db.query('DELETE FROM grant_launch_contexts WHERE grant_id = $1', [grantId]);
}

/** Deletes launch values and grant contexts expired at `at` (default now); resolves to the number of rows deleted. */
export async function sweepExpiredLaunchData(db: Queryable, at?: Date): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `WITH t AS (SELECT coalesce($1::timestamptz, now()) AS at),
     launches AS (DELETE FROM launch_contexts USING t WHERE expires_at <= t.at RETURNING 1),
     grants AS (DELETE FROM grant_launch_contexts USING t WHERE expires_at <= t.at RETURNING 1)
     SELECT ((SELECT count(*) FROM launches) + (SELECT count(*) FROM grants))::int AS n`,
    [instantOrNull(at)],
  );
  return Number(rows[0]?.n ?? 0);
}

function instantOrNull(at: Date | undefined): Date | null {
  if (at === undefined) return null;
  if (!(at instanceof Date) || Number.isNaN(at.getTime())) throw new SmartDataError('invalid instant: not a valid date');
  return at;
}
