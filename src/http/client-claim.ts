// The client id a request claims, before anything is verified: for counters and audit actors only,
// never for a decision.
import { decodeJwt } from 'jose';
import type Koa from 'koa';

/** Shape of a client id we are willing to write into an audit record. */
const AUDITABLE_CLIENT_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function basicUser(authorization: string): string | undefined {
  const match = /^basic\s+(\S+)\s*$/i.exec(authorization);
  if (!match) return undefined;
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  const user = decoded.slice(0, colon);
  // RFC 6749 §2.3.1: form-urlencoded; decoded as oidc-provider does ('+' is a space).
  try {
    return decodeURIComponent(user.replace(/\+/g, '%20'));
  } catch {
    return user; // oidc-provider refuses it; it still counts, under its raw form
  }
}

/** Client id claimed by Basic auth, else `client_id`, else the subject of an (unverified) client assertion. */
export function claimedClientId(ctx: Koa.Context): string | undefined {
  const fromBasic = basicUser(ctx.get('authorization'));
  if (fromBasic) return fromBasic;
  const body = (ctx.request as { body?: unknown }).body;
  if (!body || typeof body !== 'object') return undefined;
  const { client_id: clientId, client_assertion: assertion } = body as Record<string, unknown>;
  if (typeof clientId === 'string' && clientId !== '') return clientId;
  if (typeof assertion === 'string') {
    try {
      // oidc-provider identifies the client by `sub` (RFC 7523 §3: iss and sub are both the client id).
      const { sub, iss } = decodeJwt(assertion);
      const claimed = sub ?? iss;
      if (typeof claimed === 'string' && claimed !== '') return claimed;
    } catch {
      // not a JWT: oidc-provider refuses it
    }
  }
  return undefined;
}

/** The claimed client id if it is safe to record (attacker-chosen text otherwise stays out). */
export function auditableClientId(clientId: string | undefined): string | undefined {
  return clientId !== undefined && AUDITABLE_CLIENT_ID.test(clientId) ? clientId : undefined;
}
