// /admin/api/clients: register, read, list, update, disable/enable, rotate the secret, replace the
// certificate subject or keys. Reads carry an ETag; every change needs If-Match and is recorded.
import type Router from '@koa/router';

import {
  clientRepresentation, findClientRecord, listClientRecords, replaceClientCredentials, replaceClientMetadata, rotateClientSecret,
  setClientDisabled, type ClientRecord,
} from '../../clients/manage.ts';
import { registerClient } from '../../clients/register.ts';
import { ADMIN_READ, ADMIN_WRITE, type AdminPrincipal } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError, etagOf, notFound, readJson, requireIfMatch, send } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import type { AdminApiDeps } from '../router.ts';
import { guarded } from '../router.ts';
import type { Queryable } from '../../db/index.ts';

const tagged = (record: ClientRecord) => {
  const representation = clientRepresentation(record);
  return { representation, etag: etagOf(representation) };
};

export function clientRoutes(router: Router, deps: AdminApiDeps): void {
  /** Locks the client, checks If-Match against what the caller read, applies `change`, records it. */
  const change = (type: string, apply: (tx: Queryable, current: ClientRecord, body: Record<string, unknown>) => Promise<{ record: ClientRecord; extra?: Record<string, unknown>; severity?: 'info' | 'warning' | 'high' }>, withBody = true) =>
    guarded(deps, ADMIN_WRITE, async (ctx, principal: AdminPrincipal) => {
      const body = withBody ? await readJson(ctx) : {};
      const result = await deps.db.transaction(async (tx) => {
        const current = await findClientRecord(tx, ctx.params.id!, { forUpdate: true });
        if (!current) throw notFound('client');
        const before = tagged(current);
        requireIfMatch(ctx, before.etag);
        const applied = await apply(tx, current, body);
        const after = tagged(applied.record);
        await recordAdminChange(tx, deps.audit, principal, {
          type, severity: applied.severity, target: { kind: 'client', id: current.clientId, clientId: current.clientId },
          before: before.representation, after: after.representation,
        });
        return { ...after, extra: applied.extra };
      });
      send(ctx, 200, { client: result.representation, ...result.extra }, result.etag);
    });

  router.get('/clients', guarded(deps, ADMIN_READ, async (ctx) => {
    const search = typeof ctx.query.search === 'string' ? ctx.query.search.slice(0, 100) : undefined;
    const limit = typeof ctx.query.limit === 'string' ? Number.parseInt(ctx.query.limit, 10) : undefined;
    if (limit !== undefined && !(limit >= 1 && limit <= 500)) throw new AdminHttpError(400, 'invalid_request', 'limit must be 1-500', 'limit');
    const clients = await listClientRecords(deps.db, { search, limit });
    send(ctx, 200, { clients: clients.map(clientRepresentation) });
  }));

  router.post('/clients', guarded(deps, ADMIN_WRITE, async (ctx, principal) => {
    const body = await readJson(ctx);
    const answer = await idempotent(ctx, deps.db, principal.id, body, () => deps.db.transaction(async (tx) => {
      const registered = await registerClient(tx, deps.getProvider(), deps.clientSecretKey, body);
      const { representation, etag } = tagged((await findClientRecord(tx, registered.client_id))!);
      await recordAdminChange(tx, deps.audit, principal, {
        type: 'admin.client_created', target: { kind: 'client', id: registered.client_id, clientId: registered.client_id }, before: null, after: representation,
      });
      const secret = registered.client_secret ? { client_secret: registered.client_secret } : {};
      // The secret is shown once: a replay of this request answers without it.
      return { status: 201, body: { client: representation, ...secret }, etag, replayBody: { client: representation, client_secret_shown: registered.client_secret ? 'in the first response only' : undefined } };
    }));
    ctx.set('Location', `/admin/api/clients/${encodeURIComponent(String((answer.body as { client: { client_id: string } }).client.client_id))}`);
    send(ctx, answer.status, answer.body, answer.etag);
  }));

  router.get('/clients/:id', guarded(deps, ADMIN_READ, async (ctx) => {
    const record = await findClientRecord(deps.db, ctx.params.id!);
    if (!record) throw notFound('client');
    const { representation, etag } = tagged(record);
    send(ctx, 200, { client: representation }, etag);
  }));

  router.put('/clients/:id', change('admin.client_updated', async (tx, current, body) => {
    const { record, clientSecret } = await replaceClientMetadata(tx, deps.getProvider(), deps.clientSecretKey, current, body);
    return { record, extra: clientSecret ? { client_secret: clientSecret } : undefined };
  }));

  router.post('/clients/:id/disable', change('admin.client_disabled', async (tx, current) => {
    const { record, revoked } = await setClientDisabled(tx, current.clientId, true);
    return { record, extra: { revoked }, severity: 'high' };
  }, false));

  router.post('/clients/:id/enable', change('admin.client_enabled', async (tx, current) => (await setClientDisabled(tx, current.clientId, false)), false));

  router.post('/clients/:id/secret', change('admin.client_secret_rotated', async (tx, current) => {
    const { record, clientSecret } = await rotateClientSecret(tx, deps.clientSecretKey, current);
    return { record, extra: { client_secret: clientSecret }, severity: 'high' };
  }, false));

  router.put('/clients/:id/credentials', change('admin.client_credentials_replaced', async (tx, current, body) => ({
    record: await replaceClientCredentials(tx, deps.getProvider(), current, body), severity: 'high',
  })));
}
