// /admin/api/audit: a read-only view of the recent audit events of one client or one user, newest
// first. The log stores patients as keyed pseudonyms already; this view never resolves them. Who looked
// is itself recorded (`admin.audit_viewed`).
import type Router from '@koa/router';

import { recentAuditEvents, type RecentAuditEvent } from '../../audit/recent.ts';
import { ADMIN_READ } from '../auth.ts';
import { AdminHttpError, etagOf, send } from '../http.ts';
import { guarded, type AdminApiDeps } from '../router.ts';
import { idParam, queryParam } from './break-glass.ts';

export const DEFAULT_AUDIT_LIMIT = 50;
export const MAX_AUDIT_LIMIT = 200;

/** What the view shows of an event (not the certificate thumbprint, request id, source address or hashes). */
const view = (e: RecentAuditEvent) => ({
  seq: e.seq,
  id: e.id,
  type: e.type,
  time: e.occurredAt.toISOString(),
  outcome: e.outcome,
  severity: e.severity,
  rule: e.rule,
  actor: { user: e.actorUser, client: e.actorClient },
  target: { client: e.targetClient, audience: e.targetAudience },
  patient_pseudonym: e.patientPseudonym,
  details: e.details,
});

export function auditRoutes(router: Router, deps: AdminApiDeps): void {
  router.get('/audit', guarded(deps, ADMIN_READ, async (ctx, principal) => {
    const client = idParam(ctx, 'client');
    const user = idParam(ctx, 'user');
    if ((client === undefined) === (user === undefined)) {
      throw new AdminHttpError(400, 'invalid_request', 'client or user is required (exactly one of them)', client === undefined ? 'client' : 'user');
    }
    const limitText = queryParam(ctx, 'limit');
    const limit = limitText === undefined ? DEFAULT_AUDIT_LIMIT : /^\d{1,3}$/.test(limitText) ? Number(limitText) : Number.NaN;
    if (!(limit >= 1 && limit <= MAX_AUDIT_LIMIT)) throw new AdminHttpError(400, 'invalid_request', `limit must be 1-${MAX_AUDIT_LIMIT}`, 'limit');
    const [by, value] = client !== undefined ? ['client', client] as const : ['user', user!] as const;

    const body = await deps.db.transaction(async (tx) => {
      // A client's events: those it acted in and those aimed at it. A user's: those they acted in and
      // the administrative changes made to them (details.target_user).
      const events = await recentAuditEvents(tx, by === 'client' ? { clientId: value, limit } : { userId: value, limit });
      // Recorded after the read, so a view does not show its own record; with it, or not at all.
      await deps.audit.record({
        type: 'admin.audit_viewed', outcome: 'success', rule: 'admin_api',
        actor: { userId: principal.userId, clientId: principal.clientId, certThumbprint: principal.certThumbprint },
        target: by === 'client' ? { clientId: value } : {},
        details: { by, target_user: by === 'user' ? value : undefined, limit, count: events.length },
      }, tx);
      return { events: events.map(view) };
    });
    send(ctx, 200, body, etagOf(body));
  }));
}
