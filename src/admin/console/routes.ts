// The admin console (/admin, server-rendered HTML): list and search clients, register one, review
// break-glass accesses, read recent audit events of a client or a user.
//
// Who may use it: a signed-in user (the oidc-provider session, through the first-party sign-in of the
// account pages) with the `admin` role, whose session was established with a passkey (acr phr) at
// most `maxAgeSeconds` ago. Otherwise: no session → sign in (with a passkey); another role → 403;
// a password-only or older sign-in → sign in again with a passkey. Forms carry a session-bound CSRF
// token and are refused from another origin; every change commits with its audit record.
import { randomBytes } from 'node:crypto';

import type Koa from 'koa';
import type Provider from 'oidc-provider';

import { findUserById, findUserByUsername, type User } from '../../accounts/users.ts';
import type { AuditLog } from '../../audit/log.ts';
import { recentAuditEvents, type RecentAuditEvent } from '../../audit/recent.ts';
import {
  closeBreakGlassReview, findBreakGlassEvent, listBreakGlassEvents, listBreakGlassTokens, MAX_REVIEW_NOTE_LENGTH, REVIEW_OUTCOMES,
  ReviewError, type BreakGlassEvent, type ReviewOutcome,
} from '../../break-glass/events.ts';
import { clientRepresentation, findClientRecord, listClientRecords } from '../../clients/manage.ts';
import { ClientRegistrationError, registerClient } from '../../clients/register.ts';
import type { Db, Queryable } from '../../db/index.ts';
import { readForm } from '../../http/body.ts';
import { firstPartySession, returnPath, signedInWithin, type SignedIn } from '../../interactions/first-party-session.ts';
import { ACR_PHISHING_RESISTANT } from '../../mfa/assurance.ts';
import { ACCOUNT_CLIENT_ID } from '../../oidc/account-client.ts';
import { ADMIN_ROLE } from '../auth.ts';
import { recordAdminChange } from '../changes.ts';
import { AdminHttpError } from '../http.ts';
import { idempotent } from '../idempotency.ts';
import { clientCreatedPage, clientDetailsPage, clientFormPage, clientListPage } from '../../../views/admin/clients.ts';
import { breakGlassReviewsPage, type ReviewFormState } from '../../../views/admin/break-glass.ts';
import type { ConsoleUser } from '../../../views/admin/console.ts';
import { consoleForbiddenPage, consoleMessagePage, consoleSignInPage, userAuditPage } from '../../../views/admin/users.ts';
import { errorPage } from '../../../views/messages.ts';
import { clientFormValues, clientMetadataFrom, EMPTY_CLIENT_FORM, fieldOfMessage, type ClientFormErrors, type ClientFormValues } from './client-form.ts';

/** The console signs in through the first-party account client: changes name it as the client. */
export const CONSOLE_CLIENT_ID = ACCOUNT_CLIENT_ID;
/** A console session needs a passkey sign-in at most this old (seconds). */
export const CONSOLE_MAX_AGE_SECONDS = 900;
const LIST_LIMIT = 200;
const AUDIT_LIMIT = 50;
const CONSOLE_RULE = 'admin_console';
const VIA = { via: 'console' } as const;
const ID_CONTROLS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
// C0/C1 controls except tab and line breaks (a note is prose).
const NOTE_CONTROLS = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]/;

export interface AdminConsoleDeps {
  getProvider: () => Provider;
  db: Db;
  audit: AuditLog;
  issuer: string;
  cookieKeys: string[];
  clientSecretKey: string;
  /** Default CONSOLE_MAX_AGE_SECONDS. */
  maxAgeSeconds?: number | undefined;
}

const FORM_ID = /^[A-Za-z0-9_-]{16,64}$/;
const newFormId = () => randomBytes(18).toString('base64url');

interface Admin {
  s: SignedIn;
  user: User;
  view: ConsoleUser;
  principal: { kind: 'console'; userId: string; clientId: string };
}

function send(ctx: Koa.Context, status: number, body: string) {
  ctx.status = status;
  ctx.type = 'html';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

/** The first-party sign-in (account pages), with a passkey, coming back to `path`. */
export function consoleSignInUrl(path: string, again: boolean): string {
  const params = new URLSearchParams({ return: returnPath(path) ?? '/admin', passkey: '1', ...(again ? { reauth: '1' } : {}) });
  return `/account/login?${params.toString()}`;
}

/** An identifier from a path segment: 1-200 characters on one line, or undefined. */
function pathId(segment: string): string | undefined {
  let id: string;
  try {
    id = decodeURIComponent(segment);
  } catch {
    return undefined;
  }
  return id && id.length <= 200 && !ID_CONTROLS.test(id) ? id : undefined;
}

const CLIENT_PATH = /^\/admin\/clients\/([^/]+)$/;
const USER_AUDIT_PATH = /^\/admin\/users\/([^/]+)\/audit$/;
const REVIEW_CLOSE_PATH = /^\/admin\/break-glass\/([^/]+)\/close$/;

export function adminConsoleRoutes(deps: AdminConsoleDeps): Koa.Middleware {
  const session = firstPartySession(deps, 'admin-console-csrf');
  const maxAge = deps.maxAgeSeconds ?? CONSOLE_MAX_AGE_SECONDS;

  const refuse = async (ctx: Koa.Context, s: SignedIn, user: User | undefined, rule: string, reason: string) => {
    await deps.audit.record({
      type: 'admin.console_refused', outcome: 'denied', severity: 'warning', rule,
      actor: { userId: s.accountId, clientId: CONSOLE_CLIENT_ID }, details: { ...VIA, path: ctx.path.slice(0, 200) },
    });
    send(ctx, 403, consoleForbiddenPage(user ? user.displayName ?? user.username : undefined, reason));
  };

  /** What stands between this session and the console: undefined when nothing does. */
  async function check(s: SignedIn | undefined): Promise<{ user?: User; refusal?: 'no_session' | 'not_admin' | 'disabled' | 'passkey' | 'stale' }> {
    if (!s) return { refusal: 'no_session' };
    const user = await findUserById(deps.db, s.accountId);
    if (!user || user.disabled) return { refusal: 'disabled' };
    if (!user.roles.includes(ADMIN_ROLE)) return { user, refusal: 'not_admin' };
    if (s.acr !== ACR_PHISHING_RESISTANT) return { user, refusal: 'passkey' };
    if (!signedInWithin(s, maxAge)) return { user, refusal: 'stale' };
    return { user };
  }

  const admin = (s: SignedIn, user: User): Admin => ({
    s, user, view: { name: user.displayName ?? user.username },
    principal: { kind: 'console', userId: user.id, clientId: CONSOLE_CLIENT_ID },
  });

  /** GET pages: the admin, or the answer has been given (redirect to sign-in, 403). */
  async function gate(ctx: Koa.Context): Promise<Admin | undefined> {
    const s = await session.signedIn(ctx);
    const { user, refusal } = await check(s);
    if (!refusal) return admin(s!, user!);
    if (refusal === 'no_session' || refusal === 'passkey' || refusal === 'stale') {
      ctx.redirect(consoleSignInUrl(ctx.path, refusal === 'stale'));
      return undefined;
    }
    await refuse(ctx, s!, user, refusal === 'not_admin' ? 'admin_role' : 'account_disabled',
      refusal === 'not_admin' ? 'The admin console is for administrators (the admin role).' : 'This account cannot be used.');
    return undefined;
  }

  /** POSTs: signed in, same origin, the session's CSRF token, then the same checks as pages. */
  async function gatePost(ctx: Koa.Context, returnTo: string): Promise<{ a: Admin; form: Map<string, string> } | undefined> {
    const s = await session.signedIn(ctx);
    const form = await readForm(ctx);
    if (!s) {
      send(ctx, 401, consoleSignInPage('Sign in first.', consoleSignInUrl(returnTo, false)));
      return undefined;
    }
    if (session.foreignOrigin(ctx) || !session.csrfValid(s.sessionUid, form.get('csrf'))) {
      await deps.audit.record({
        type: 'admin.console_refused', outcome: 'denied', severity: 'warning', rule: 'csrf',
        actor: { userId: s.accountId, clientId: CONSOLE_CLIENT_ID }, details: { ...VIA, path: ctx.path.slice(0, 200) },
      });
      send(ctx, 403, errorPage('invalid_request', 'The form has expired or did not come from this site. Reload the page and try again.'));
      return undefined;
    }
    const { user, refusal } = await check(s);
    if (!refusal) return { a: admin(s, user!), form };
    if (refusal === 'passkey' || refusal === 'stale') {
      send(ctx, 401, consoleSignInPage('Administration needs a recent passkey sign-in.', consoleSignInUrl(returnTo, refusal === 'stale')));
      return undefined;
    }
    await refuse(ctx, s, user, refusal === 'not_admin' ? 'admin_role' : 'account_disabled',
      refusal === 'not_admin' ? 'The admin console is for administrators (the admin role).' : 'This account cannot be used.');
    return undefined;
  }

  /** Display names of the users an event list mentions. */
  async function userNames(q: Queryable, events: RecentAuditEvent[]): Promise<Map<string, string>> {
    const names = new Map<string, string>();
    const ids = [...new Set(events.map((e) => e.actorUser).filter((id): id is string => id !== null))];
    if (ids.length) {
      const { rows } = await q.query<{ id: string; username: string }>('SELECT id, username FROM users WHERE id = ANY($1::text[])', [ids]);
      for (const r of rows) names.set(r.id, r.username);
    }
    return names;
  }

  /**
   * A client's or a user's recent audit events; who looked is recorded (`admin.audit_viewed`, as the
   * admin API does) after the read, in its transaction: with the record, or no page.
   */
  const viewAudit = (a: Admin, of: { clientId: string } | { userId: string }) => deps.db.transaction(async (tx) => {
    const events = await recentAuditEvents(tx, { ...of, limit: AUDIT_LIMIT });
    await deps.audit.record({
      type: 'admin.audit_viewed', outcome: 'success', rule: CONSOLE_RULE,
      actor: { userId: a.user.id, clientId: CONSOLE_CLIENT_ID },
      target: 'clientId' in of ? { clientId: of.clientId } : {},
      details: {
        ...VIA, by: 'clientId' in of ? 'client' : 'user', target_user: 'userId' in of ? of.userId : undefined, limit: AUDIT_LIMIT, count: events.length,
      },
    }, tx);
    return events;
  });

  // ---- clients ----

  async function listClients(ctx: Koa.Context, a: Admin) {
    const query = typeof ctx.query.q === 'string' ? ctx.query.q.trim().slice(0, 100) : '';
    const records = await listClientRecords(deps.db, { search: query || undefined, limit: LIST_LIMIT });
    send(ctx, 200, clientListPage(a.view, {
      query,
      limit: LIST_LIMIT,
      clients: records.map((r) => ({
        clientId: r.clientId,
        name: typeof r.metadata.client_name === 'string' ? r.metadata.client_name : undefined,
        authMethod: String(r.metadata.token_endpoint_auth_method ?? 'client_secret_basic'),
        grantTypes: Array.isArray(r.metadata.grant_types) ? r.metadata.grant_types.map(String) : ['authorization_code'],
        disabled: r.disabledAt !== null,
        createdAt: r.createdAt,
      })),
    }));
  }

  // A fresh form id per form: posting the same form again (reload, double click) registers nothing new.
  const renderForm = (ctx: Koa.Context, a: Admin, status: number, values: ClientFormValues, errors: ClientFormErrors, formId = newFormId()) =>
    send(ctx, status, clientFormPage(a.view, { values, errors, csrf: session.csrfFor(a.s.sessionUid), formId }));

  async function createClient(ctx: Koa.Context, a: Admin, form: Map<string, string>) {
    const values = clientFormValues(form);
    const formId = FORM_ID.test(form.get('form_id') ?? '') ? form.get('form_id')! : newFormId();
    const built = clientMetadataFrom(values);
    if ('errors' in built) return renderForm(ctx, a, 400, values, built.errors, formId);
    let answer;
    try {
      answer = await idempotent(ctx, deps.db, `console:${a.principal.userId}`, values, () => deps.db.transaction(async (tx) => {
        // Registered and recorded together: both commit, or neither does.
        const registered = await registerClient(tx, deps.getProvider(), deps.clientSecretKey, built.metadata);
        const representation = clientRepresentation((await findClientRecord(tx, registered.client_id))!);
        await recordAdminChange(tx, deps.audit, a.principal, {
          type: 'admin.client_created', target: { kind: 'client', id: registered.client_id, clientId: registered.client_id },
          before: null, after: representation,
        });
        const created = { clientId: registered.client_id, representation, secret: registered.client_secret };
        // The secret is shown once: a repeated post of this form shows the client without it.
        return { status: 201, body: created, replayBody: { ...created, secret: undefined, hasSecret: !!registered.client_secret } };
      }), formId);
    } catch (err) {
      if (err instanceof AdminHttpError) return renderForm(ctx, a, err.status, values, { form: err.description }, newFormId());
      if (!(err instanceof ClientRegistrationError)) throw err;
      const field = fieldOfMessage(err.message);
      const exists = /already exists/.test(err.message);
      return renderForm(ctx, a, exists ? 409 : 400, values, { [field ?? 'form']: exists ? `client_id ${values.client_id} is already registered` : err.message }, formId);
    }
    const created = answer.body as { clientId: string; representation: Record<string, unknown>; secret: string | undefined; hasSecret?: boolean };
    const replayed = ctx.response.get('Idempotent-Replayed') === 'true';
    ctx.set('Location', `/admin/clients/${encodeURIComponent(created.clientId)}`);
    send(ctx, replayed ? 200 : 201, clientCreatedPage(a.view, { ...created, replayed }));
  }

  async function showClient(ctx: Koa.Context, a: Admin, id: string | undefined) {
    const record = id === undefined ? undefined : await findClientRecord(deps.db, id);
    if (!record) return send(ctx, 404, consoleMessagePage(a.view, 'No such client', 'There is no client with this id.'));
    const events = await viewAudit(a, { clientId: record.clientId });
    send(ctx, 200, clientDetailsPage(a.view, {
      clientId: record.clientId, representation: clientRepresentation(record), events, userNames: await userNames(deps.db, events),
    }));
  }

  // ---- users ----

  async function showUserAudit(ctx: Koa.Context, a: Admin, id: string | undefined) {
    const target = id === undefined ? undefined : await findUserById(deps.db, id);
    if (!target) return send(ctx, 404, consoleMessagePage(a.view, 'No such user', 'There is no user with this id.'));
    const events = await viewAudit(a, { userId: target.id });
    send(ctx, 200, userAuditPage(a.view, {
      target: { id: target.id, username: target.username, displayName: target.displayName, roles: target.roles, disabled: target.disabled },
      events, userNames: await userNames(deps.db, events),
    }));
  }

  /** The navigation's lookup: a user id or a username, to that user's audit page. */
  async function findUser(ctx: Koa.Context, a: Admin) {
    const given = typeof ctx.query.user === 'string' ? ctx.query.user.trim() : '';
    const id = given && given.length <= 200 && !ID_CONTROLS.test(given) ? given : undefined;
    const user = id && ((await findUserById(deps.db, id)) ?? (await findUserByUsername(deps.db, id)));
    if (!user) return send(ctx, 404, consoleMessagePage(a.view, 'No such user', 'There is no user with this id or username.'));
    ctx.status = 303;
    ctx.redirect(`/admin/users/${encodeURIComponent(user.id)}/audit`);
  }

  // ---- break-glass reviews ----

  async function showReviews(ctx: Koa.Context, a: Admin, status = 200, extra: { message?: string; error?: ReviewFormState } = {}) {
    // Reading justifications is audited in the same transaction as the read: no record, no page.
    const items = await deps.db.transaction(async (tx) => {
      const events = await listBreakGlassEvents(tx, { status: 'open' });
      const names = new Map<string, string>();
      for (const userId of new Set(events.map((e) => e.userId))) {
        const u = await findUserById(tx, userId);
        names.set(userId, u?.username ?? userId);
      }
      const views = [];
      for (const e of events) {
        views.push({
          id: e.id, userId: e.userId, userName: names.get(e.userId) ?? e.userId, clientId: e.clientId, patientPseudonym: e.patientPseudonym,
          reasonCode: e.reasonCode, justification: e.justification, launchKind: e.launchKind, scope: e.scope,
          createdAt: e.createdAt, expiresAt: e.expiresAt, revokedAt: e.revokedAt, tokens: await listBreakGlassTokens(tx, e.id),
        });
      }
      await deps.audit.record({
        type: 'break_glass.reviews_listed', outcome: 'success', rule: CONSOLE_RULE,
        actor: { userId: a.user.id, clientId: CONSOLE_CLIENT_ID }, target: {},
        details: { ...VIA, count: events.length, status: 'open', event_ids: events.map((e) => e.id) },
      }, tx);
      return views;
    });
    send(ctx, status, breakGlassReviewsPage(a.view, { items, csrf: session.csrfFor(a.s.sessionUid), ...extra }));
  }

  /** What a change record keeps of an event: its state, never the justification nor the review note. */
  const recordedState = (e: BreakGlassEvent) => ({
    id: e.id, user_id: e.userId, client_id: e.clientId, reason_code: e.reasonCode, revoked_at: e.revokedAt?.toISOString() ?? null,
    status: e.review.status, outcome: e.review.outcome, reviewed_by: e.review.reviewedBy, reviewed_at: e.review.reviewedAt?.toISOString() ?? null,
  });

  async function closeReview(ctx: Koa.Context, a: Admin, id: string | undefined, form: Map<string, string>) {
    const outcome = form.get('outcome') ?? '';
    const note = (form.get('note') ?? '').trim();
    const again = (status: number, error: string) => showReviews(ctx, a, status, { error: { id: id ?? '', outcome, note, error } });
    if (!REVIEW_OUTCOMES.includes(outcome as ReviewOutcome)) return again(400, 'outcome must be appropriate or inappropriate');
    if (!note) return again(400, 'note is required: the reviewer\'s finding');
    if (note.length > MAX_REVIEW_NOTE_LENGTH) return again(400, `note must be at most ${MAX_REVIEW_NOTE_LENGTH} characters`);
    if (NOTE_CONTROLS.test(note)) return again(400, 'note must not contain control characters');
    try {
      await deps.db.transaction(async (tx) => {
        if (id === undefined) throw new ReviewError('no such break-glass event');
        await tx.query('SELECT 1 FROM break_glass_events WHERE id = $1 FOR UPDATE', [id]);
        const before = await findBreakGlassEvent(tx, id);
        if (!before) throw new ReviewError('no such break-glass event');
        const closed = await closeBreakGlassReview(tx, { id, outcome: outcome as ReviewOutcome, note, reviewer: a.user.id });
        await recordAdminChange(tx, deps.audit, a.principal, {
          type: 'break_glass.reviewed', severity: outcome === 'inappropriate' ? 'high' : 'info',
          target: { kind: 'break_glass_event', id: closed.id, clientId: closed.clientId, userId: closed.userId },
          before: recordedState(before), after: recordedState(closed),
        });
      });
    } catch (err) {
      if (!(err instanceof ReviewError)) throw err;
      return again(/no such/.test(err.message) ? 404 : 409, err.message);
    }
    ctx.status = 303;
    ctx.redirect('/admin/break-glass?done=closed');
  }

  return async (ctx, next) => {
    const path = ctx.path;
    if (path !== '/admin' && !path.startsWith('/admin/')) return next();
    if (path === '/admin/api' || path.startsWith('/admin/api/')) return next();

    if (ctx.method === 'GET') {
      const a = await gate(ctx);
      if (!a) return;
      if (path === '/admin' || path === '/admin/') return listClients(ctx, a);
      if (path === '/admin/clients/new') return renderForm(ctx, a, 200, EMPTY_CLIENT_FORM, {});
      if (path === '/admin/break-glass') return showReviews(ctx, a, 200, ctx.query.done === 'closed' ? { message: 'Review closed.' } : {});
      if (path === '/admin/users') return findUser(ctx, a);
      const client = CLIENT_PATH.exec(path);
      if (client) return showClient(ctx, a, pathId(client[1]!));
      const user = USER_AUDIT_PATH.exec(path);
      if (user) return showUserAudit(ctx, a, pathId(user[1]!));
      return send(ctx, 404, consoleMessagePage(a.view, 'Not found', 'There is no such page in the admin console.'));
    }
    if (ctx.method === 'POST') {
      if (path === '/admin/clients') {
        const posted = await gatePost(ctx, '/admin/clients/new');
        if (posted) await createClient(ctx, posted.a, posted.form);
        return;
      }
      const review = REVIEW_CLOSE_PATH.exec(path);
      if (review) {
        const posted = await gatePost(ctx, '/admin/break-glass');
        if (posted) await closeReview(ctx, posted.a, pathId(review[1]!), posted.form);
        return;
      }
    }
    ctx.set('Allow', ctx.method === 'POST' ? 'GET' : 'GET, POST');
    send(ctx, 405, errorPage('invalid_request', 'method not allowed'));
  };
}
