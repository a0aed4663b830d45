// Audit events for what oidc-provider persists: codes and tokens issued, redeemed, replayed, revoked,
// sessions ended, grants revoked. The adapter calls these inside the transaction of the change, so a
// token whose record cannot be written is never stored (and so never handed out).
import type { AdapterPayload } from 'oidc-provider';

import type { Queryable } from '../db/index.ts';
import type { AuditEventInput } from './event.ts';
import type { AuditLog, CompanionWrite } from './log.ts';

const TOKEN_TYPES: Record<string, string> = {
  AccessToken: 'access_token',
  ClientCredentials: 'access_token',
  RefreshToken: 'refresh_token',
  AuthorizationCode: 'authorization_code',
};
const AUDITED = new Set([...Object.keys(TOKEN_TYPES), 'Session', 'Grant']);

type Payload = AdapterPayload & { 'x5t#S256'?: string; sessionUid?: string };

function audienceOf(payload: Payload): string | undefined {
  const { aud } = payload;
  return Array.isArray(aud) ? aud.join(' ') : aud;
}

export class StorageAudit {
  constructor(private readonly audit: AuditLog) {}

  covers(model: string): boolean {
    return AUDITED.has(model);
  }

  /** Token or code facts, never the value: opaque ids are the token itself, so only their pseudonym. */
  private facts(model: string, id: string, payload: Payload): Pick<AuditEventInput, 'actor' | 'target' | 'details'> {
    const jwt = payload.format === 'jwt';
    return {
      actor: { userId: payload.accountId, clientId: payload.clientId, certThumbprint: payload['x5t#S256'] },
      target: { audience: audienceOf(payload) },
      details: {
        token_type: TOKEN_TYPES[model] ?? model,
        format: jwt ? 'jwt' : 'opaque',
        token_ref: this.audit.pseudonym('token', id),
        jti: jwt ? id : undefined,
        grant_id: payload.grantId,
        grant_type: payload.gty,
        scope: payload.scope,
        expires_at: payload.exp,
        bound: payload['x5t#S256'] ? 'x5t#S256' : undefined,
      },
    };
  }

  /** Does saving this model write an issue event (issued() must then be given the row to store)? */
  recordsIssue(model: string): boolean {
    return model in TOKEN_TYPES;
  }

  /**
   * q: the caller's transaction, or undefined to join the audit log's group commit. `row`: the token's
   * own row, written in the same transaction as its record.
   */
  async issued(q: Queryable | undefined, model: string, id: string, payload: Payload, expiresIn: number | undefined, row?: CompanionWrite): Promise<void> {
    // Sessions and grants are recorded by the login and the consent that create them.
    if (!(model in TOKEN_TYPES)) return;
    const facts = this.facts(model, id, payload);
    await this.audit.record({
      type: model === 'AuthorizationCode' ? 'code.issued' : 'token.issued',
      outcome: 'success',
      rule: 'oidc.grant',
      ...facts,
      details: { ...facts.details, lifetime: expiresIn },
    }, q, undefined, row);
  }

  async consumed(q: Queryable | undefined, model: string, id: string, payload: Payload): Promise<void> {
    if (!(model in TOKEN_TYPES)) return;
    await this.audit.record({
      type: model === 'AuthorizationCode' ? 'code.redeemed' : 'token.refreshed',
      outcome: 'success',
      rule: model === 'AuthorizationCode' ? 'oidc.authorization_code' : 'oidc.refresh_token_rotation',
      ...this.facts(model, id, payload),
    }, q);
  }

  /** A second redemption of a code or rotated refresh token: theft is assumed and the grant revoked. */
  async replayed(q: Queryable, model: string, id: string, payload: Payload | undefined): Promise<void> {
    await this.audit.record({
      type: model === 'AuthorizationCode' ? 'code.replayed' : 'token.replayed',
      outcome: 'denied',
      severity: 'high',
      rule: 'oidc.single_use',
      ...(payload ? this.facts(model, id, payload) : { details: { token_ref: this.audit.pseudonym('token', id) } }),
    }, q);
  }

  async destroyed(q: Queryable, model: string, id: string, payload: Payload): Promise<void> {
    if (model === 'Session') {
      await this.audit.record({
        type: 'session.ended', outcome: 'success', rule: 'oidc.end_session', actor: { userId: payload.accountId },
      }, q);
      return;
    }
    if (model === 'Grant') {
      await this.grantRevoked(q, id, [{ model, payload }]);
      return;
    }
    if (model === 'AuthorizationCode') return; // codes are consumed, not revoked
    await this.audit.record({ type: 'token.revoked', outcome: 'success', rule: 'oidc.revocation', ...this.facts(model, id, payload) }, q);
  }

  async grantRevoked(q: Queryable, grantId: string, removed: { model: string; payload: Payload }[]): Promise<void> {
    const grant = removed.find((r) => r.model === 'Grant')?.payload;
    const any = grant ?? removed[0]?.payload;
    await this.audit.record({
      type: 'grant.revoked',
      outcome: 'success',
      severity: 'warning',
      rule: 'oidc.grant_revocation',
      actor: { userId: any?.accountId, clientId: any?.clientId },
      details: { grant_id: grantId, artefacts: removed.length },
    }, q);
  }
}
