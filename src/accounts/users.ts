// Clinician accounts: lookup, creation and the claims oidc-provider releases.
import { randomUUID } from 'node:crypto';

import { z } from 'zod';

import type { Queryable } from '../db/index.ts';
import { cacheableQuery } from '../db/read-cache.ts';
import { hashPassword, MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH } from './passwords.ts';

export interface User {
  id: string;
  username: string;
  passwordHash: string;
  displayName: string | null;
  fhirUser: string | null;
  roles: string[];
  disabled: boolean;
  /** An administrator took the break-glass path away from this user. */
  breakGlassDisabled: boolean;
}

interface UserRow extends Record<string, unknown> {
  id: string;
  username: string;
  password_hash: string;
  display_name: string | null;
  fhir_user: string | null;
  roles: string[];
  disabled: boolean;
  break_glass_disabled: boolean;
}

const fromRow = (r: UserRow): User => ({
  id: r.id,
  username: r.username,
  passwordHash: r.password_hash,
  displayName: r.display_name,
  fhirUser: r.fhir_user,
  roles: r.roles,
  disabled: r.disabled,
  breakGlassDisabled: r.break_glass_disabled,
});

export const USERNAME_PATTERN = /^[a-z0-9][a-z0-9._@-]{1,62}$/;
export const normaliseUsername = (username: string) => username.trim().toLowerCase();

export const NewUserSchema = z.object({
  username: z.string().transform(normaliseUsername).pipe(z.string().regex(USERNAME_PATTERN, 'username must be 2-63 characters of a-z 0-9 . _ @ -')),
  password: z.string().min(MIN_PASSWORD_LENGTH, `password must have at least ${MIN_PASSWORD_LENGTH} characters`).max(MAX_PASSWORD_LENGTH),
  displayName: z.string().min(1).max(200).optional(),
  // A FHIR reference to the user's Practitioner/Patient/... resource, e.g. Practitioner/123 or an absolute URL.
  fhirUser: z.string().regex(/^(https:\/\/\S+\/)?(Practitioner|Patient|RelatedPerson|Person)\/[A-Za-z0-9\-.]{1,64}$/, 'fhirUser must be a FHIR reference such as Practitioner/123').optional(),
  roles: z.array(z.string().regex(/^[a-z][a-z0-9_-]{0,31}$/)).max(20).default([]),
});
export type NewUser = z.input<typeof NewUserSchema>;

export class UserExistsError extends Error {
  override name = 'UserExistsError';
}

export async function createUser(db: Queryable, input: NewUser): Promise<User> {
  const user = NewUserSchema.parse(input);
  const passwordHash = await hashPassword(user.password);
  const { rows } = await db.query<UserRow>(
    `INSERT INTO users (id, username, password_hash, display_name, fhir_user, roles)
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username) DO NOTHING RETURNING *`,
    [randomUUID(), user.username, passwordHash, user.displayName ?? null, user.fhirUser ?? null, user.roles],
  );
  if (!rows[0]) throw new UserExistsError(`user ${user.username} already exists`);
  return fromRow(rows[0]);
}

export async function findUserByUsername(db: Queryable, username: string): Promise<User | undefined> {
  const { rows } = await db.query<UserRow>('SELECT * FROM users WHERE username = $1', [normaliseUsername(username)]);
  return rows[0] && fromRow(rows[0]);
}

const FIND_USER_BY_ID = cacheableQuery('SELECT * FROM users WHERE id = $1', ['users']);

export async function findUserById(db: Queryable, id: string): Promise<User | undefined> {
  const { rows } = await db.query<UserRow>(FIND_USER_BY_ID, [id]);
  return rows[0] && fromRow(rows[0]);
}

export async function countUsers(db: Queryable): Promise<number> {
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM users');
  return rows[0]?.n ?? 0;
}
