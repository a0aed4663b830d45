// What an audit event says. Identifiers only: never a token value, password, cookie, raw patient id
// or free text. Patient ids are given raw here and pseudonymised (HMAC) before anything is stored.
export type AuditOutcome = 'success' | 'failure' | 'denied' | 'error';
export type AuditSeverity = 'info' | 'warning' | 'high';

export type AuditDetailValue = string | number | boolean | null | string[];

export interface AuditEventInput {
  /** Dotted event type, e.g. `login.success`, `token.issued`, `rate_limit.exceeded`. */
  type: string;
  outcome: AuditOutcome;
  severity?: AuditSeverity;
  actor?: {
    userId?: string | undefined;
    clientId?: string | undefined;
    /** RFC 8705 x5t#S256 of the workload's TLS client certificate. */
    certThumbprint?: string | undefined;
  };
  target?: {
    clientId?: string | undefined;
    audience?: string | undefined;
    /** Raw patient id: stored only as its keyed pseudonym. */
    patientId?: string | undefined;
  };
  /** Name of the policy rule that allowed or refused. */
  rule?: string | undefined;
  /** Structured facts (ids, scopes, counts, lifetimes); values are short identifiers, never prose. */
  details?: Record<string, AuditDetailValue | undefined>;
}

/** The request an event belongs to, carried through async calls (see request-context.ts). */
export interface AuditRequestContext {
  requestId: string;
  sourceIp: string | undefined;
  certThumbprint?: string | undefined;
}
