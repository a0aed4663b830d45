// The hash chain: each record's hash is HMAC(chain key, previous hash + canonical record), so an
// attacker with write access to the table but not the key cannot produce a record that verifies.
import { createHmac } from 'node:crypto';

import type { AuditDetailValue } from './event.ts';

export const GENESIS_HASH = 'genesis';

/** Every stored column except `hash`, in one fixed order. */
export interface ChainedRecord {
  seq: number;
  id: string;
  occurredAt: string;
  type: string;
  outcome: string;
  severity: string;
  actorUser: string | null;
  actorClient: string | null;
  actorCertThumbprint: string | null;
  targetClient: string | null;
  targetAudience: string | null;
  patientPseudonym: string | null;
  rule: string | null;
  requestId: string | null;
  sourceIp: string | null;
  details: Record<string, AuditDetailValue>;
  prevHash: string;
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.keys(value).sort().map((k) => [k, sortKeys((value as Record<string, unknown>)[k])]));
  }
  return value;
}

export function canonical(record: ChainedRecord): string {
  return JSON.stringify([
    record.seq, record.id, record.occurredAt, record.type, record.outcome, record.severity,
    record.actorUser, record.actorClient, record.actorCertThumbprint, record.targetClient, record.targetAudience,
    record.patientPseudonym, record.rule, record.requestId, record.sourceIp, sortKeys(record.details), record.prevHash,
  ]);
}

export function chainHash(chainKey: Buffer, record: ChainedRecord): string {
  return createHmac('sha256', chainKey).update(canonical(record)).digest('base64url');
}
