// POST /admin/api/launches: an EHR launch value (the SMART `launch` parameter) for a patient, as an EHR
// would mint it. The value is in the first answer only: the database keeps its SHA-256, an
// Idempotency-Key replay answers without it, and neither the audit log nor the change record holds it
// or the raw patient id (the patient only pseudonymised).
import type Router from '@koa/router';

import { findClientRecord } from '../../clients/manage.ts';
import { createLaunch, launchDigest, MAX_LAUNCH_TTL_SECONDS } from '../../smart/launch-contexts.ts';
import { normalisePatientId, requireEncounterId, SmartDataError } from '../../smart/patients.ts';
import { ADMIN_WRITE } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError, readJson, send } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import type { AdminApiDeps } from '../router.ts';
import { guarded } from '../router.ts';
import { findUserRecord } from './users.ts';

/** As `launch create` on the CLI. */
export const DEFAULT_LAUNCH_TTL_SECONDS = 300;
const FIELDS = ['patient', 'encounter', 'client', 'user', 'ttl_seconds'];

const invalid = (field: string, description: string) => new AdminHttpError(400, 'invalid_request', description, field);

function optionalString(body: Record<string, unknown>, field: string, what: string): string | undefined {
  const value = body[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || value === '' || value.length > 256) throw invalid(field, `${field} must be ${what}`);
  return value;
}

function parseLaunch(body: Record<string, unknown>) {
  for (const key of Object.keys(body)) {
    if (!FIELDS.includes(key)) throw invalid(key, `${key} is not a launch field (fields: ${FIELDS.join(', ')})`);
  }
  if (body.patient === undefined || body.patient === null) throw invalid('patient', 'patient is required (a FHIR Patient id or Patient/ID)');
  const patientId = typeof body.patient === 'string' ? normalisePatientId(body.patient) : undefined;
  if (patientId === undefined) throw invalid('patient', 'patient must be a FHIR Patient id (1-64 of A-Z a-z 0-9 - .), optionally as Patient/ID');
  const encounterText = optionalString(body, 'encounter', 'a FHIR Encounter id or Encounter/ID');
  let encounterId: string | undefined;
  if (encounterText !== undefined) {
    try {
      encounterId = requireEncounterId(encounterText);
    } catch {
      throw invalid('encounter', 'encounter must be a FHIR Encounter id (1-64 of A-Z a-z 0-9 - .), optionally as Encounter/ID');
    }
  }
  const clientId = optionalString(body, 'client', 'a client id');
  if (clientId !== undefined && !/^[\x21-\x7e]{1,256}$/.test(clientId)) throw invalid('client', 'client must be a client id');
  const userId = optionalString(body, 'user', 'a user id');
  const ttl = body.ttl_seconds ?? DEFAULT_LAUNCH_TTL_SECONDS;
  if (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < 1 || ttl > MAX_LAUNCH_TTL_SECONDS) {
    throw invalid('ttl_seconds', `ttl_seconds must be a whole number of seconds from 1 to ${MAX_LAUNCH_TTL_SECONDS}`);
  }
  return { patientId, encounterId, clientId, userId, ttlSeconds: ttl };
}

export function launchRoutes(router: Router, deps: AdminApiDeps): void {
  router.post('/launches', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    const input = parseLaunch(body);
    const answer = await idempotent(ctx, deps.db, principal.id, body, () => deps.db.transaction(async (tx) => {
      // Only a client and a user that can sign in could ever use the launch.
      if (input.clientId !== undefined) {
        const client = await findClientRecord(tx, input.clientId);
        if (!client) throw invalid('client', 'client is not a registered client');
        if (client.disabledAt !== null) throw invalid('client', 'client is disabled');
      }
      if (input.userId !== undefined) {
        const user = await findUserRecord(tx, input.userId);
        if (!user) throw invalid('user', 'user is not a known user id');
        if (user.disabled) throw invalid('user', 'user is disabled');
      }
      let created: { launch: string; expiresAt: Date };
      try {
        created = await createLaunch(tx, {
          patientId: input.patientId, ttlSeconds: input.ttlSeconds,
          ...(input.encounterId !== undefined && { encounterId: input.encounterId }),
          ...(input.clientId !== undefined && { clientId: input.clientId }),
          ...(input.userId !== undefined && { userId: input.userId }),
        });
      } catch (err) {
        if (err instanceof SmartDataError && /^unknown patient/.test(err.message)) throw invalid('patient', 'patient is not a known patient (add it first)');
        if (err instanceof SmartDataError) throw new AdminHttpError(400, 'invalid_request', err.message);
        throw err;
      }
      const expiresAt = created.expiresAt.toISOString();
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'admin.launch_created', severity: 'info',
        // The digest names the stored row; it cannot be turned back into the launch value.
        target: { kind: 'launch', id: launchDigest(created.launch), clientId: input.clientId, userId: input.userId, patientId: input.patientId },
        before: null,
        after: {
          patient: deps.audit.pseudonym('patient', input.patientId), encounter: input.encounterId !== undefined,
          client: input.clientId ?? null, user: input.userId ?? null, ttl_seconds: input.ttlSeconds, expires_at: expiresAt,
        },
      });
      const context = {
        patient: input.patientId, encounter: input.encounterId ?? null, client: input.clientId ?? null, user: input.userId ?? null, expires_at: expiresAt,
      };
      // The launch value is shown once: a replay of this request answers without it.
      return { status: 201, body: { launch: created.launch, ...context }, replayBody: { launch_shown: 'in the first response only', ...context } };
    }));
    send(ctx, answer.status, answer.body);
  }));
}
