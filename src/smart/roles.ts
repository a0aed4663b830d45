// The SMART scope ceiling of each user role: what a user with that role may be granted at most
// (DESIGN.md §6: granted = requested ∩ client ceiling ∩ role ∩ care team). Deny by default: a role
// without a row, or a user without roles, permits no resource scope.
import type { Queryable } from '../db/index.ts';
import { SmartDataError } from './patients.ts';
import { formatScopes, parseScopeList } from './scopes.ts';

// The same syntax as users.roles (src/accounts/users.ts).
export const ROLE_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;
const MAX_SCOPE_LENGTH = 4096;

const shown = (token: string) => `'${token}'`;

/**
 * Validates a role's scope list: SMART resource scopes only (patient/, user/, system/; v1 or v2
 * syntax). Resolves to the normalised, deduplicated tokens, or throws SmartDataError naming the
 * first bad tokens.
 */
export function normaliseRoleScope(scope: string): string[] {
  if (typeof scope !== 'string' || scope.length > MAX_SCOPE_LENGTH) {
    throw new SmartDataError(`invalid scope: a space-separated list of SMART scopes of at most ${MAX_SCOPE_LENGTH} characters`);
  }
  // Whitespace is not significant here (an operator's list): runs of spaces, tabs, newlines are one separator.
  const { scopes, invalid } = parseScopeList(scope.trim().split(/\s+/).filter(Boolean).join(' '));
  // Each detail names its token (shortened and with unusual characters replaced by scopes.ts).
  const problems = invalid.map((i) => i.detail);
  for (const s of scopes) {
    if (s.kind !== 'resource') problems.push(`not a SMART resource scope (patient/, user/ or system/): ${shown(s.text)}`);
  }
  if (problems.length > 0) {
    const more = problems.length > 3 ? `; and ${problems.length - 3} more` : '';
    throw new SmartDataError(`invalid SMART scope: ${problems.slice(0, 3).join('; ')}${more}`);
  }
  return [...new Set(formatScopes(scopes).split(' ').filter(Boolean))];
}

export function requireRoleName(role: string): string {
  if (typeof role !== 'string' || !ROLE_PATTERN.test(role)) {
    throw new SmartDataError('invalid role name: 1-32 characters of a-z 0-9 _ -, starting with a letter');
  }
  return role;
}

/** Sets (creates or replaces) a role's scope ceiling; the scope list is validated and stored normalised. */
export async function setRoleScopes(db: Queryable, role: string, scope: string): Promise<void> {
  const name = requireRoleName(role);
  const tokens = normaliseRoleScope(scope);
  await db.query(
    `INSERT INTO role_scopes (role, scope) VALUES ($1, $2)
     ON CONFLICT (role) DO UPDATE SET scope = EXCLUDED.scope, updated_at = now()`,
    [name, tokens.join(' ')],
  );
}

/** The stored scope ceiling of one role (normalised text), or undefined when the role has none. */
export async function findRoleScopes(db: Queryable, role: string): Promise<string | undefined> {
  const { rows } = await db.query<{ scope: string }>('SELECT scope FROM role_scopes WHERE role = $1', [role]);
  return rows[0]?.scope;
}

/**
 * The union of the roles' scope tokens, deduplicated, in the order of `roles` then of each role's
 * list; [] when no role has a ceiling (deny by default).
 */
export async function roleScopeCeiling(db: Queryable, roles: readonly string[]): Promise<string[]> {
  const names = [...new Set(roles.filter((r) => typeof r === 'string' && ROLE_PATTERN.test(r)))];
  if (names.length === 0) return [];
  const { rows } = await db.query<{ role: string; scope: string }>(
    'SELECT role, scope FROM role_scopes WHERE role = ANY($1::text[])',
    [names],
  );
  const byRole = new Map(rows.map((r) => [r.role, r.scope]));
  const tokens = new Set<string>();
  for (const name of names) {
    for (const token of (byRole.get(name) ?? '').split(' ')) if (token) tokens.add(token);
  }
  return [...tokens];
}
