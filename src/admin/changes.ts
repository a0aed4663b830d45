// Every administrative change, recorded with what it changed: the audit event (chained, tamper-evident)
// names the change, the fields and the SHA-256 of both sides; the redacted before/after themselves live
// in `admin_changes` (audit details hold short identifiers only).
import { createHash, randomBytes } from 'node:crypto';

import type { AuditDetailValue } from '../audit/event.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Queryable } from '../db/index.ts';
import type { AdminPrincipal } from './auth.ts';

const REDACTED = '[redacted]';
// Matched on the key lower-cased without separators.
const SECRET_KEYS = /secret|password|passwordhash|privatekey|registrationaccesstoken|^d$|^p$|^q$|^dp$|^dq$|^qi$|^k$/;

/** A copy with secrets and private key material replaced; public keys reduced to their ids. */
export function redact(value: unknown, key = ''): unknown {
  if (SECRET_KEYS.test(key.toLowerCase().replace(/[^a-z]/g, ''))) return value === undefined || value === null ? value : REDACTED;
  if (key === 'jwks' && value && typeof value === 'object') {
    const keys = (value as { keys?: Array<{ kid?: string; kty?: string }> }).keys ?? [];
    return { keys: keys.map((k) => ({ kid: k.kid ?? null, kty: k.kty ?? null })) };
  }
  if (Array.isArray(value)) return value.map((v) => redact(v));
  if (value && typeof value === 'object' && !(value instanceof Date)) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, redact(v, k)]));
  }
  return value;
}

function changedFields(before: unknown, after: unknown): string[] {
  const b = (before && typeof before === 'object' ? before : {}) as Record<string, unknown>;
  const a = (after && typeof after === 'object' ? after : {}) as Record<string, unknown>;
  return [...new Set([...Object.keys(b), ...Object.keys(a)])]
    .filter((k) => JSON.stringify(b[k]) !== JSON.stringify(a[k]))
    .sort()
    .slice(0, 40);
}

const sha256 = (value: unknown) => createHash('sha256').update(JSON.stringify(value ?? null)).digest('base64url');

export interface AdminChange {
  /** Dotted audit event type, e.g. `admin.client_created`. */
  type: string;
  target: { kind: string; id: string; clientId?: string | undefined; userId?: string | undefined; patientId?: string | undefined };
  before: unknown;
  after: unknown;
  severity?: 'info' | 'warning' | 'high';
  /** More short identifiers for the audit event (e.g. a review outcome); never free text. */
  details?: Record<string, AuditDetailValue | undefined>;
}

/** Records the change in the caller's transaction: both commit with the change itself, or nothing does. */
export async function recordAdminChange(tx: Queryable, audit: AuditLog, principal: AdminPrincipal | { kind: 'console'; userId: string; clientId: string; certThumbprint?: undefined }, change: AdminChange): Promise<string> {
  const id = `chg_${randomBytes(12).toString('base64url')}`;
  const before = redact(change.before);
  const after = redact(change.after);
  await tx.query(
    'INSERT INTO admin_changes (id, kind, target, before, after) VALUES ($1, $2, $3, $4::jsonb, $5::jsonb)',
    [id, change.target.kind, change.target.id, JSON.stringify(before ?? null), JSON.stringify(after ?? null)],
  );
  await audit.record({
    type: change.type,
    outcome: 'success',
    severity: change.severity ?? 'warning',
    rule: principal.kind === 'console' ? 'admin_console' : 'admin_api',
    actor: { userId: principal.userId, clientId: principal.clientId, certThumbprint: principal.certThumbprint },
    target: { clientId: change.target.clientId, patientId: change.target.patientId },
    details: {
      change_id: id, target_kind: change.target.kind, target_id: change.target.patientId ? undefined : change.target.id,
      target_user: change.target.userId, fields: changedFields(before, after), before_sha256: sha256(before), after_sha256: sha256(after),
      ...change.details,
    },
  }, tx);
  return id;
}
