// The passkeys a user has registered: public keys and signature counters, never private material.
import type { Queryable } from '../db/index.ts';
import type { PasskeyKind } from './assurance.ts';

export interface StoredCredential {
  id: string;
  userId: string;
  publicKey: Uint8Array<ArrayBuffer>;
  signCount: number;
  transports: string[];
  deviceType: PasskeyKind;
  backedUp: boolean;
  aaguid: string | undefined;
  name: string;
  createdAt: Date;
  lastUsedAt: Date | undefined;
}

type Row = {
  id: string; user_id: string; public_key: Uint8Array; sign_count: string | number; transports: string[];
  device_type: PasskeyKind; backed_up: boolean; aaguid: string | null; name: string; created_at: Date; last_used_at: Date | null;
};

const COLUMNS = 'id, user_id, public_key, sign_count, transports, device_type, backed_up, aaguid, name, created_at, last_used_at';

function fromRow(r: Row): StoredCredential {
  return {
    id: r.id,
    userId: r.user_id,
    publicKey: new Uint8Array(r.public_key),
    signCount: Number(r.sign_count),
    transports: r.transports,
    deviceType: r.device_type,
    backedUp: r.backed_up,
    aaguid: r.aaguid ?? undefined,
    name: r.name,
    createdAt: new Date(r.created_at),
    lastUsedAt: r.last_used_at ? new Date(r.last_used_at) : undefined,
  };
}

/** Users may hold a few passkeys (phone, laptop, security key), not an unbounded number. */
export const MAX_CREDENTIALS_PER_USER = 10;

export async function listCredentials(db: Queryable, userId: string): Promise<StoredCredential[]> {
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM webauthn_credentials WHERE user_id = $1 ORDER BY created_at, id`, [userId]);
  return rows.map(fromRow);
}

export async function countCredentials(db: Queryable, userId: string): Promise<number> {
  const { rows } = await db.query<{ n: string | number }>('SELECT count(*) AS n FROM webauthn_credentials WHERE user_id = $1', [userId]);
  return Number(rows[0]?.n ?? 0);
}

export async function findCredential(db: Queryable, id: string): Promise<StoredCredential | undefined> {
  if (!/^[A-Za-z0-9_-]{16,1400}$/.test(id)) return undefined;
  const { rows } = await db.query<Row>(`SELECT ${COLUMNS} FROM webauthn_credentials WHERE id = $1`, [id]);
  return rows[0] ? fromRow(rows[0]) : undefined;
}

/** False when the credential id is already registered (to anyone). */
export async function addCredential(db: Queryable, c: Omit<StoredCredential, 'createdAt' | 'lastUsedAt'>): Promise<boolean> {
  const { rows } = await db.query(
    `INSERT INTO webauthn_credentials (id, user_id, public_key, sign_count, transports, device_type, backed_up, aaguid, name)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING id`,
    [c.id, c.userId, Buffer.from(c.publicKey), c.signCount, c.transports, c.deviceType, c.backedUp, c.aaguid ?? null, c.name],
  );
  return rows.length === 1;
}

/**
 * Records a use: the counter moves only forward from the value the verification saw, so two answers
 * racing with the same counter cannot both count. False when it lost such a race.
 */
export async function recordUse(db: Queryable, id: string, seen: number, next: number, backedUp: boolean): Promise<boolean> {
  const { rows } = await db.query(
    `UPDATE webauthn_credentials SET sign_count = $3, backed_up = $4, last_used_at = now()
     WHERE id = $1 AND sign_count = $2 RETURNING id`,
    [id, seen, next, backedUp],
  );
  return rows.length === 1;
}

export async function removeCredential(db: Queryable, userId: string, id: string): Promise<boolean> {
  const { rows } = await db.query('DELETE FROM webauthn_credentials WHERE user_id = $1 AND id = $2 RETURNING id', [userId, id]);
  return rows.length === 1;
}

export async function removeAllCredentials(db: Queryable, userId: string): Promise<number> {
  const { rows } = await db.query('DELETE FROM webauthn_credentials WHERE user_id = $1 RETURNING id', [userId]);
  return rows.length;
}
