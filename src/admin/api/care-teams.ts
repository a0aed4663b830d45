// Care teams through the admin API: a user's memberships (GET /admin/api/users/:id/care-team, with an
// ETag), adding one (POST /admin/api/care-team, Idempotency-Key) and ending one (POST
// /admin/api/care-team/end, If-Match on the user's care team). Changes lock the user's row. Raw patient
// ids never reach the audit log or the change records: the audit event carries the patient as
// target.patientId (pseudonymised), the change record only the pseudonym.
import type Router from '@koa/router';

import { parseInstant } from '../../cli/instant.ts';
import type { Queryable } from '../../db/index.ts';
import { addCareTeamMember, endCareTeamMembership } from '../../smart/care-team.ts';
import { normalisePatientId, SmartDataError } from '../../smart/patients.ts';
import { ADMIN_READ, ADMIN_WRITE } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError, etagOf, notFound, readJson, requireIfMatch, send } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import type { AdminApiDeps } from '../router.ts';
import { guarded } from '../router.ts';
import { findUserRecord, type UserRecord } from './users.ts';

const invalid = (field: string, description: string) => new AdminHttpError(400, 'invalid_request', description, field);
const iso = (value: Date | string | null) => (value === null ? null : new Date(value).toISOString());

/** The user's memberships that have not ended (current and future), by patient name. */
async function careTeam(db: Queryable, user: UserRecord) {
  const { rows } = await db.query<{ patient_id: string; display_name: string; valid_from: Date; valid_to: Date | null; current: boolean }>(
    `SELECT c.patient_id, p.display_name, c.valid_from, c.valid_to, c.valid_from <= now() AS current
       FROM care_team c JOIN patients p ON p.id = c.patient_id
      WHERE c.user_id = $1 AND (c.valid_to IS NULL OR c.valid_to > now())
      ORDER BY p.display_name, c.patient_id, c.valid_from`,
    [user.id],
  );
  const representation = {
    user: { id: user.id, username: user.username },
    memberships: rows.map((r) => ({ patient: r.patient_id, display_name: r.display_name, valid_from: iso(r.valid_from), valid_to: iso(r.valid_to), current: r.current })),
  };
  return { representation, etag: etagOf(representation) };
}

type Team = Awaited<ReturnType<typeof careTeam>>;

/** What the change record keeps of one user-patient pair: its windows, the patient as a pseudonym. */
function pairState(deps: AdminApiDeps, team: Team, patientId: string) {
  return {
    user: team.representation.user.id,
    patient: deps.audit.pseudonym('patient', patientId),
    memberships: team.representation.memberships.filter((m) => m.patient === patientId).map((m) => ({ valid_from: m.valid_from, valid_to: m.valid_to })),
  };
}

function checkFields(body: Record<string, unknown>, allowed: string[]): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) throw invalid(key, `${key} is not a care-team field (fields: ${allowed.join(', ')})`);
  }
}

function requiredString(body: Record<string, unknown>, field: string, what: string): string {
  const value = body[field];
  if (value === undefined || value === null) throw invalid(field, `${field} is required (${what})`);
  if (typeof value !== 'string' || value === '' || value.length > 200) throw invalid(field, `${field} must be ${what}`);
  return value;
}

function patientField(body: Record<string, unknown>): string {
  const id = normalisePatientId(requiredString(body, 'patient', 'a FHIR Patient id or Patient/ID'));
  if (id === undefined) throw invalid('patient', 'patient must be a FHIR Patient id (1-64 of A-Z a-z 0-9 - .), optionally as Patient/ID');
  return id;
}

function instantField(body: Record<string, unknown>, field: string): Date | null | undefined {
  const value = body[field];
  if (value === undefined) return undefined;
  if (value === null && field === 'valid_to') return null;
  const instant = typeof value === 'string' ? parseInstant(value) : undefined;
  if (!instant) throw invalid(field, `${field} must be an ISO 8601 date or date-time with zone (e.g. 2025-01-31 or 2025-01-31T08:00:00Z)`);
  return instant;
}

/** The body's user, locked (the care team of one user changes one request at a time). */
async function lockUser(tx: Queryable, userId: string): Promise<UserRecord> {
  const user = await findUserRecord(tx, userId, { forUpdate: true });
  if (!user) throw invalid('user', 'user is not a known user id');
  return user;
}

/** The domain's refusals, as 400s naming the field. */
function smartError(err: unknown): unknown {
  if (!(err instanceof SmartDataError)) return err;
  if (/^unknown patient/.test(err.message)) return invalid('patient', 'patient is not a known patient (add it first)');
  if (/^unknown user/.test(err.message)) return invalid('user', 'user is not a known user id');
  if (/care-team window/.test(err.message)) return invalid('valid_to', 'valid_to must be after valid_from (or after now when valid_from is not given)');
  return new AdminHttpError(400, 'invalid_request', err.message);
}

export function careTeamRoutes(router: Router, deps: AdminApiDeps): void {
  router.get('/users/:id/care-team', guarded(deps, ADMIN_READ, async (ctx) => {
    const user = await findUserRecord(deps.db, ctx.params.id!);
    if (!user) throw notFound('user');
    const { representation, etag } = await careTeam(deps.db, user);
    send(ctx, 200, representation, etag);
  }));

  // Adds a membership (201), or finds it already in place (200, nothing recorded). If-Match is optional
  // here (a create); when sent, it must be the ETag of the user's care team.
  router.post('/care-team', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    checkFields(body, ['user', 'patient', 'valid_from', 'valid_to']);
    const userId = requiredString(body, 'user', 'a user id');
    const patientId = patientField(body);
    const validFrom = instantField(body, 'valid_from') ?? undefined;
    const validTo = instantField(body, 'valid_to') ?? null;
    if (validFrom && validTo && validTo <= validFrom) throw invalid('valid_to', 'valid_to must be after valid_from');
    const answer = await idempotent(ctx, deps.db, principal.id, body, () => deps.db.transaction(async (tx) => {
      const user = await lockUser(tx, userId);
      const before = await careTeam(tx, user);
      if (ctx.get('If-Match')) requireIfMatch(ctx, before.etag);
      let added: boolean;
      try {
        added = await addCareTeamMember(tx, { userId: user.id, patientId, ...(validFrom && { validFrom }), validTo });
      } catch (err) {
        throw smartError(err);
      }
      const after = await careTeam(tx, user);
      if (added) {
        await recordAdminChange(tx, deps.audit, principal, {
          type: 'admin.care_team_added', target: { kind: 'care_team', id: user.id, userId: user.id, patientId },
          before: pairState(deps, before, patientId), after: pairState(deps, after, patientId),
        });
      }
      return { status: added ? 201 : 200, body: { added, care_team: after.representation }, etag: after.etag };
    }));
    send(ctx, answer.status, answer.body, answer.etag);
  }));

  // Ends the user's current membership(s) for the patient now; later ones stay. If-Match: the ETag of
  // GET /admin/api/users/:id/care-team.
  router.post('/care-team/end', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    checkFields(body, ['user', 'patient']);
    const userId = requiredString(body, 'user', 'a user id');
    const patientId = patientField(body);
    const result = await deps.db.transaction(async (tx) => {
      const user = await lockUser(tx, userId);
      const before = await careTeam(tx, user);
      requireIfMatch(ctx, before.etag);
      let ended: number;
      try {
        ended = await endCareTeamMembership(tx, user.id, patientId);
      } catch (err) {
        throw smartError(err);
      }
      if (ended === 0) throw new AdminHttpError(409, 'conflict', "patient: the user is not on that patient's care team now", 'patient');
      const after = await careTeam(tx, user);
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'admin.care_team_ended', severity: 'info', target: { kind: 'care_team', id: user.id, userId: user.id, patientId },
        before: pairState(deps, before, patientId), after: pairState(deps, after, patientId),
      });
      return { ended, after };
    });
    send(ctx, 200, { ended: result.ended, care_team: result.after.representation }, result.after.etag);
  }));
}
