// /admin/api/users: create (the password is write-only), read, list and search (lookup by username),
// update display name / FHIR user / roles, disable (sessions, grants and tokens revoked) and enable,
// unlock (the failed-login lock), passkey reset and the break-glass switch. Reads carry an ETag; every
// change needs If-Match, locks the user's row and is recorded in the same transaction. JSON field
// names are snake_case, as elsewhere in the admin API.
import type Router from '@koa/router';

import { createUser, NewUserSchema, normaliseUsername, UserExistsError, USERNAME_PATTERN } from '../../accounts/users.ts';
import { endUserBreakGlass, setBreakGlassDisabled } from '../../break-glass/events.ts';
import { keyedHash } from '../../crypto/keyed-hash.ts';
import type { Queryable } from '../../db/index.ts';
import { removeAllCredentials } from '../../mfa/credentials.ts';
import { MAX_GRANT_DEPTH } from '../../oidc/adapter.ts';
import { ADMIN_READ, ADMIN_ROLE, ADMIN_WRITE, type AdminPrincipal } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError, etagOf, notFound, readJson, requireIfMatch, send } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import type { AdminApiDeps } from '../router.ts';
import { guarded } from '../router.ts';

export interface UserRecord {
  id: string;
  username: string;
  displayName: string | null;
  fhirUser: string | null;
  roles: string[];
  disabled: boolean;
  breakGlassDisabled: boolean;
  /** How many passkeys the user has registered (never the keys themselves). */
  passkeys: number;
  createdAt: Date;
  updatedAt: Date;
}

interface UserRow extends Record<string, unknown> {
  id: string; username: string; display_name: string | null; fhir_user: string | null; roles: string[]; disabled: boolean;
  break_glass_disabled: boolean; passkeys: number | string; created_at: Date | string; updated_at: Date | string;
}

// Never the password hash.
const SELECT_USER = `SELECT u.id, u.username, u.display_name, u.fhir_user, u.roles, u.disabled, u.break_glass_disabled,
  u.created_at, u.updated_at, (SELECT count(*) FROM webauthn_credentials w WHERE w.user_id = u.id)::int AS passkeys FROM users u`;

const fromRow = (r: UserRow): UserRecord => ({
  id: r.id, username: r.username, displayName: r.display_name, fhirUser: r.fhir_user, roles: r.roles, disabled: r.disabled,
  breakGlassDisabled: r.break_glass_disabled, passkeys: Number(r.passkeys), createdAt: new Date(r.created_at), updatedAt: new Date(r.updated_at),
});

export function userRepresentation(u: UserRecord): Record<string, unknown> {
  return {
    id: u.id, username: u.username, display_name: u.displayName, fhir_user: u.fhirUser, roles: u.roles, disabled: u.disabled,
    break_glass_disabled: u.breakGlassDisabled, passkeys: u.passkeys, created_at: u.createdAt.toISOString(), updated_at: u.updatedAt.toISOString(),
  };
}

const tagged = (record: UserRecord) => {
  const representation = userRepresentation(record);
  return { representation, etag: etagOf(representation) };
};

/** The user with this id (`forUpdate`: row locked until the transaction ends). */
export async function findUserRecord(db: Queryable, id: string, options: { forUpdate?: boolean } = {}): Promise<UserRecord | undefined> {
  if (typeof id !== 'string' || id === '' || id.length > 200) return undefined;
  const { rows } = await db.query<UserRow>(`${SELECT_USER} WHERE u.id = $1${options.forUpdate ? ' FOR UPDATE OF u' : ''}`, [id]);
  return rows[0] && fromRow(rows[0]);
}

interface UserFilter { search?: string | undefined; username?: string | undefined; role?: string | undefined; disabled?: boolean | undefined; limit?: number | undefined }

/** Users matching every filter given (search: username, display name or FHIR user contains it), by username. */
async function listUserRecords(db: Queryable, filter: UserFilter): Promise<UserRecord[]> {
  const pattern = filter.search ? `%${filter.search.replace(/[\\%_]/g, (c) => `\\${c}`)}%` : null;
  const { rows } = await db.query<UserRow>(
    `${SELECT_USER}
      WHERE ($1::text IS NULL OR u.username ILIKE $1 OR u.display_name ILIKE $1 OR u.fhir_user ILIKE $1)
        AND ($2::text IS NULL OR u.username = $2)
        AND ($3::text IS NULL OR $3 = ANY(u.roles))
        AND ($4::boolean IS NULL OR u.disabled = $4)
      ORDER BY u.username LIMIT $5`,
    [pattern, filter.username ?? null, filter.role ?? null, filter.disabled ?? null, filter.limit ?? 100],
  );
  return rows.map(fromRow);
}

/**
 * Everything the provider stores for the account: sessions, grants, codes, access and refresh tokens,
 * and every grant derived from its grants (token exchange), with their tokens. Returns the rows removed.
 */
async function revokeAccountArtefacts(tx: Queryable, userId: string): Promise<number> {
  const { rows } = await tx.query<{ n: number }>(
    `WITH RECURSIVE family(id, depth) AS (
       SELECT id, 0 FROM oidc_payloads WHERE model = 'Grant' AND payload->>'accountId' = $1
       UNION
       SELECT l.child_grant_id, f.depth + 1 FROM grant_links l JOIN family f ON l.parent_grant_id = f.id WHERE f.depth < $2
     ), gone AS (
       DELETE FROM oidc_payloads
        WHERE payload->>'accountId' = $1 OR grant_id IN (SELECT id FROM family) OR (model = 'Grant' AND id IN (SELECT id FROM family))
       RETURNING 1)
     SELECT count(*)::int AS n FROM gone`,
    [userId, MAX_GRANT_DEPTH],
  );
  return Number(rows[0]?.n ?? 0);
}

const invalid = (field: string, description: string) => new AdminHttpError(400, 'invalid_request', description, field);
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
const CREATE_FIELDS = ['username', 'password', 'display_name', 'fhir_user', 'roles'];
const UPDATE_FIELDS = ['display_name', 'fhir_user', 'roles'];
const SHAPE = NewUserSchema.shape;
const ROLE = /^[a-z][a-z0-9_-]{0,31}$/;
/** NewUserSchema's camelCase keys, as the API (snake_case) names them. */
const API_FIELD: Record<string, string> = { displayName: 'display_name', fhirUser: 'fhir_user' };

/**
 * The first zod issue as `<field>: <message>`, the field as the API names it (zod messages never contain
 * the value, so no password leaks).
 */
function zodFailure(issues: ReadonlyArray<{ path: PropertyKey[]; message: string }>, fallback: string): AdminHttpError {
  const issue = issues[0]!;
  const schemaField = String(issue.path[0] ?? fallback);
  const field = API_FIELD[schemaField] ?? schemaField;
  if (issue.message.startsWith(schemaField)) return invalid(field, `${field}${issue.message.slice(schemaField.length)}`);
  return invalid(field, `${field}: ${issue.message}`);
}

function checkDisplayName(value: unknown): void {
  if (typeof value === 'string' && CONTROL_CHARACTERS.test(value)) throw invalid('display_name', 'display_name must not contain control characters');
}

function parseNewUser(body: Record<string, unknown>) {
  for (const key of Object.keys(body)) {
    if (!CREATE_FIELDS.includes(key)) throw invalid(key, `${key} is not a user field (fields: ${CREATE_FIELDS.join(', ')})`);
  }
  for (const required of ['username', 'password']) {
    if (body[required] === undefined || body[required] === null) throw invalid(required, `${required} is required`);
  }
  checkDisplayName(body.display_name);
  const parsed = NewUserSchema.safeParse({
    username: body.username, password: body.password, displayName: body.display_name, fhirUser: body.fhir_user, roles: body.roles,
  });
  if (!parsed.success) throw zodFailure(parsed.error.issues, 'user');
  return { ...parsed.data, roles: [...new Set(parsed.data.roles)] };
}

function parseUserUpdate(body: Record<string, unknown>): { displayName?: string | null; fhirUser?: string | null; roles?: string[] } {
  for (const key of Object.keys(body)) {
    if (!UPDATE_FIELDS.includes(key)) {
      const why = key === 'password' ? 'is write-only: it is set when the user is created' : 'cannot be changed here';
      throw invalid(key, `${key} ${why} (updatable: ${UPDATE_FIELDS.join(', ')})`);
    }
  }
  if (Object.keys(body).length === 0) throw new AdminHttpError(400, 'invalid_request', `the body must change at least one of ${UPDATE_FIELDS.join(', ')}`);
  const out: { displayName?: string | null; fhirUser?: string | null; roles?: string[] } = {};
  checkDisplayName(body.display_name);
  for (const [field, key, schema] of [['display_name', 'displayName', SHAPE.displayName.unwrap()], ['fhir_user', 'fhirUser', SHAPE.fhirUser.unwrap()]] as const) {
    if (!(field in body)) continue;
    if (body[field] === null) { out[key] = null; continue; }
    const parsed = schema.safeParse(body[field]);
    if (!parsed.success) throw zodFailure(parsed.error.issues.map((i) => ({ ...i, path: [key] })), key);
    out[key] = parsed.data;
  }
  if ('roles' in body) {
    const roles = body.roles;
    if (!Array.isArray(roles) || roles.length > 20 || !roles.every((r) => typeof r === 'string' && ROLE.test(r))) {
      throw invalid('roles', 'roles must be an array of at most 20 role names (a-z, then a-z 0-9 _ -, up to 32 characters)');
    }
    out.roles = [...new Set(roles as string[])];
  }
  return out;
}

/** A query parameter given at most once, or 400. */
function queryParam(query: Record<string, string | string[] | undefined>, name: string): string | undefined {
  const value = query[name];
  if (Array.isArray(value)) throw invalid(name, `${name} must be given once`);
  return value;
}

interface Applied { extra?: Record<string, unknown>; severity?: 'info' | 'warning' | 'high'; before?: Record<string, unknown>; after?: Record<string, unknown> }

export function userRoutes(router: Router, deps: AdminApiDeps): void {
  /** Locks the user, checks If-Match against what the caller read, applies `apply`, records the change. */
  const change = (type: string, apply: (tx: Queryable, current: UserRecord, body: Record<string, unknown>, principal: AdminPrincipal) => Promise<Applied>, withBody = false) =>
    guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
      const body = withBody ? await readJson(ctx) : {};
      const result = await deps.db.transaction(async (tx) => {
        const current = await findUserRecord(tx, ctx.params.id!, { forUpdate: true });
        if (!current) throw notFound('user');
        const before = tagged(current);
        requireIfMatch(ctx, before.etag);
        const applied = await apply(tx, current, body, principal);
        const after = tagged((await findUserRecord(tx, current.id))!);
        await recordAdminChange(tx, deps.audit, principal, {
          type, severity: applied.severity, target: { kind: 'user', id: current.id, userId: current.id },
          before: { ...before.representation, ...applied.before }, after: { ...after.representation, ...applied.after },
        });
        return { ...after, extra: applied.extra };
      });
      send(ctx, 200, { user: result.representation, ...result.extra }, result.etag);
    });

  router.get('/users', guarded(deps, ADMIN_READ, async (ctx) => {
    const query = ctx.query as Record<string, string | string[] | undefined>;
    const search = queryParam(query, 'search')?.slice(0, 100);
    const usernameParam = queryParam(query, 'username');
    const username = usernameParam === undefined ? undefined : normaliseUsername(usernameParam);
    if (username !== undefined && !USERNAME_PATTERN.test(username)) throw invalid('username', 'username must be 2-63 characters of a-z 0-9 . _ @ -');
    const role = queryParam(query, 'role');
    if (role !== undefined && !ROLE.test(role)) throw invalid('role', 'role must be a role name (a-z, then a-z 0-9 _ -)');
    const disabledParam = queryParam(query, 'disabled');
    if (disabledParam !== undefined && disabledParam !== 'true' && disabledParam !== 'false') throw invalid('disabled', 'disabled must be true or false');
    const limitParam = queryParam(query, 'limit');
    const limit = limitParam === undefined ? undefined : /^\d{1,3}$/.test(limitParam) ? Number(limitParam) : Number.NaN;
    if (limit !== undefined && !(limit >= 1 && limit <= 500)) throw invalid('limit', 'limit must be 1-500');
    const users = await listUserRecords(deps.db, { search, username, role, disabled: disabledParam === undefined ? undefined : disabledParam === 'true', limit });
    send(ctx, 200, { users: users.map(userRepresentation) });
  }));

  router.post('/users', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    const input = parseNewUser(body);
    // The Idempotency-Key record keeps a SHA-256 of the request: with the password keyed first, it is
    // no shortcut around argon2 for someone holding a copy of the database.
    const fingerprint = { ...body, password: keyedHash(deps.clientSecretKey, 'admin-api-idempotency-password', input.password) };
    const answer = await idempotent(ctx, deps.db, principal.id, fingerprint, () => deps.db.transaction(async (tx) => {
      let id: string;
      try {
        ({ id } = await createUser(tx, input));
      } catch (err) {
        if (err instanceof UserExistsError) throw new AdminHttpError(409, 'conflict', `username ${input.username} is already taken`, 'username');
        throw err;
      }
      const { representation, etag } = tagged((await findUserRecord(tx, id))!);
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'admin.user_created', target: { kind: 'user', id, userId: id }, before: null,
        // Write-only: the change record says a password was set, never which.
        after: { ...representation, password: '[redacted]' },
      });
      return { status: 201, body: { user: representation }, etag };
    }));
    ctx.set('Location', `/admin/api/users/${encodeURIComponent(String((answer.body as { user: { id: string } }).user.id))}`);
    send(ctx, answer.status, answer.body, answer.etag);
  }));

  router.get('/users/:id', guarded(deps, ADMIN_READ, async (ctx) => {
    const record = await findUserRecord(deps.db, ctx.params.id!);
    if (!record) throw notFound('user');
    const { representation, etag } = tagged(record);
    send(ctx, 200, { user: representation }, etag);
  }));

  router.patch('/users/:id', change('admin.user_updated', async (tx, current, body, principal) => {
    const update = parseUserUpdate(body);
    const roles = update.roles ?? current.roles;
    // An administrator cannot take the admin role away from themselves (another one can).
    if (principal.userId === current.id && current.roles.includes(ADMIN_ROLE) && !roles.includes(ADMIN_ROLE)) {
      throw new AdminHttpError(409, 'conflict', 'roles: an administrator cannot remove their own admin role', 'roles');
    }
    await tx.query(
      'UPDATE users SET display_name = $2, fhir_user = $3, roles = $4, updated_at = now() WHERE id = $1',
      [current.id, update.displayName === undefined ? current.displayName : update.displayName,
        update.fhirUser === undefined ? current.fhirUser : update.fhirUser, roles],
    );
    return { severity: update.roles ? 'high' : 'warning' };
  }, true));

  router.post('/users/:id/disable', change('admin.user_disabled', async (tx, current, _body, principal) => {
    if (principal.userId === current.id) throw new AdminHttpError(409, 'conflict', 'an administrator cannot disable their own account');
    await tx.query('UPDATE users SET disabled = true, updated_at = now() WHERE id = $1 AND NOT disabled', [current.id]);
    // Signed out everywhere: live emergency accesses end, and every session, grant and token goes.
    const breakGlassEnded = (await endUserBreakGlass(tx, current.id)).length;
    const revoked = await revokeAccountArtefacts(tx, current.id);
    return { extra: { revoked, break_glass_ended: breakGlassEnded }, severity: 'high' };
  }));

  router.post('/users/:id/enable', change('admin.user_enabled', async (tx, current) => {
    await tx.query('UPDATE users SET disabled = false, updated_at = now() WHERE id = $1 AND disabled', [current.id]);
    return {};
  }));

  router.post('/users/:id/unlock', change('admin.user_unlocked', async (tx, current) => {
    const cleared = await deps.loginThrottle.reset(current.username, tx);
    return { extra: { cleared }, before: { failed_login_counter: cleared }, after: { failed_login_counter: false }, severity: 'warning' };
  }));

  router.post('/users/:id/passkeys/reset', change('admin.user_passkeys_reset', async (tx, current) => {
    const removed = await removeAllCredentials(tx, current.id);
    return { extra: { removed }, severity: 'high' };
  }));

  for (const disable of [true, false]) {
    router.post(`/users/:id/break-glass/${disable ? 'disable' : 'enable'}`, change(`admin.user_break_glass_${disable ? 'disabled' : 'enabled'}`, async (tx, current) => {
      const changed = await setBreakGlassDisabled(tx, current.id, disable);
      return { extra: { changed }, severity: disable ? 'warning' : 'info' };
    }));
  }
}
