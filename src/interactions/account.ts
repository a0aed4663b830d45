// The account pages (/account): a signed-in clinician lists, adds and removes passkeys. Who is signed
// in comes from the oidc-provider session (the same cookie the authorization endpoint uses); signing
// in and confirming identity go through the authorization endpoint as the first-party account client.
import { randomBytes } from 'node:crypto';

import type Koa from 'koa';
import type Provider from 'oidc-provider';

import { findUserById } from '../accounts/users.ts';
import type { AuditLog } from '../audit/log.ts';
import type { Db } from '../db/index.ts';
import { readForm } from '../http/body.ts';
import { ACR_PHISHING_RESISTANT, acrLevel } from '../mfa/assurance.ts';
import { listCredentials, removeCredential } from '../mfa/credentials.ts';
import { parseRegistration, registrationOptions, verifyRegistration, WebAuthnError, type RelyingParty } from '../mfa/webauthn.ts';
import { ACCOUNT_CALLBACK_PATH, ACCOUNT_CLIENT_ID } from '../oidc/account-client.ts';
import { firstPartySession, returnPath, type SignedIn } from './first-party-session.ts';
import { accountPage } from '../../views/account.ts';
import { errorPage } from '../../views/messages.ts';

export interface AccountDeps {
  getProvider: () => Provider;
  db: Db;
  audit: AuditLog;
  issuer: string;
  rp: RelyingParty;
  /** Adding or removing a passkey needs a sign-in at most this old. */
  recentLoginSeconds: number;
  /** Keys the CSRF tokens (bound to the session) are derived from. */
  cookieKeys: string[];
}

const STATE_COOKIE = 'account_state';
const NAME = /^[\p{L}\p{N} ._()-]{1,64}$/u;

function send(ctx: Koa.Context, status: number, body: string) {
  ctx.status = status;
  ctx.type = 'html';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

export function accountRoutes(deps: AccountDeps): Koa.Middleware {
  const session = firstPartySession(deps, 'account-csrf');
  const { signedIn, csrfFor, csrfValid } = session;

  const recent = (s: SignedIn) => s.loginTs !== undefined && Date.now() / 1000 - s.loginTs <= deps.recentLoginSeconds;
  const strong = (s: SignedIn) => acrLevel(s.acr) >= acrLevel(ACR_PHISHING_RESISTANT);

  /** A user without a passkey adds the first after a recent password; later ones need a recent passkey. */
  const mayAdd = (s: SignedIn, count: number) => recent(s) && (count === 0 || strong(s));
  const mayRemove = (s: SignedIn) => recent(s) && strong(s);

  /**
   * `fresh`: sign in again (max_age=0); `passkey`: with a passkey (acr_values phr); `returnTo`: the
   * first-party page to come back to (default /account), kept with the state in its signed cookie.
   */
  function startSignIn(ctx: Koa.Context, reauth: { fresh?: boolean; passkey: boolean } | undefined, returnTo = '/account') {
    const state = randomBytes(24).toString('base64url');
    const cookie = returnTo === '/account' ? state : `${state}.${Buffer.from(returnTo).toString('base64url')}`;
    ctx.cookies.set(STATE_COOKIE, cookie, { signed: true, httpOnly: true, secure: true, sameSite: 'lax', path: '/account', maxAge: 600_000 });
    const url = new URL(`${deps.issuer}/auth`);
    url.search = new URLSearchParams({
      client_id: ACCOUNT_CLIENT_ID,
      response_type: 'none',
      redirect_uri: `${deps.issuer}${ACCOUNT_CALLBACK_PATH}`,
      scope: 'openid',
      state,
      ...(reauth ? { ...(reauth.fresh !== false ? { max_age: '0' } : {}), ...(reauth.passkey ? { acr_values: ACR_PHISHING_RESISTANT } : {}) } : {}),
    }).toString();
    ctx.redirect(url.href);
  }

  async function render(ctx: Koa.Context, s: SignedIn, status = 200, notes: { message?: string; error?: string } = {}) {
    const user = await findUserById(deps.db, s.accountId);
    if (!user || user.disabled) return send(ctx, 403, errorPage('access_denied', 'This account cannot be used.'));
    const passkeys = await listCredentials(deps.db, user.id);
    const registration = mayAdd(s, passkeys.length)
      ? await registrationOptions(deps.db, deps.rp, {
        binding: s.sessionUid, user: { id: user.id, username: user.username, displayName: user.displayName ?? undefined }, existing: passkeys,
      }).catch((err: unknown) => {
        if (err instanceof WebAuthnError && err.reason === 'too_many_credentials') return undefined;
        throw err;
      })
      : undefined;
    send(ctx, status, accountPage({
      userName: user.displayName ?? user.username,
      passkeys: passkeys.map((p) => ({
        id: p.id, name: p.name, kind: p.deviceType === 'multiDevice' ? 'synced passkey' : 'device-bound passkey', createdAt: p.createdAt, lastUsedAt: p.lastUsedAt,
      })),
      csrf: csrfFor(s.sessionUid),
      registration,
      canRemove: mayRemove(s),
      reauthUrl: '/account/login',
      signOutUrl: '/session/end',
      ...notes,
    }));
  }

  /** POSTs: signed in, same origin, the session's CSRF token. */
  async function guardedPost(ctx: Koa.Context): Promise<{ s: SignedIn; form: Awaited<ReturnType<typeof readForm>> } | undefined> {
    const s = await signedIn(ctx);
    const form = await readForm(ctx);
    if (!s) {
      send(ctx, 401, errorPage('login_required', 'Sign in first.'));
      return undefined;
    }
    if (session.foreignOrigin(ctx) || !csrfValid(s.sessionUid, form.get('csrf'))) {
      send(ctx, 403, errorPage('invalid_request', 'The form has expired or did not come from this site. Reload the page and try again.'));
      return undefined;
    }
    return { s, form };
  }

  return async (ctx, next) => {
    if (!ctx.path.startsWith('/account')) return next();

    if (ctx.method === 'GET' && ctx.path === '/account') {
      const s = await signedIn(ctx);
      if (!s) return startSignIn(ctx, undefined);
      const notice = ctx.query.done;
      return render(ctx, s, 200, {
        message: notice === 'added' ? 'Passkey added.' : notice === 'removed' ? 'Passkey removed.' : undefined,
      });
    }
    if (ctx.method === 'GET' && ctx.path === '/account/login') {
      const s = await signedIn(ctx);
      // Other first-party pages (the admin console) send their users here: `return` names the page to
      // come back to, `passkey=1` asks for a passkey sign-in.
      const passkey = ctx.query.passkey === '1';
      const reauth = ctx.query.reauth === '1' && s
        ? { passkey: passkey || (await listCredentials(deps.db, s.accountId)).length > 0 }
        : passkey ? { fresh: false, passkey } : undefined;
      return startSignIn(ctx, reauth, returnPath(ctx.query.return));
    }
    if (ctx.method === 'GET' && ctx.path === ACCOUNT_CALLBACK_PATH) {
      const [expected, returnTo] = (ctx.cookies.get(STATE_COOKIE, { signed: true }) ?? '').split('.');
      ctx.cookies.set(STATE_COOKIE, null, { path: '/account' });
      if (!expected || ctx.query.state !== expected) return send(ctx, 400, errorPage('invalid_request', 'The sign-in response does not match this browser. Start again.'));
      if (typeof ctx.query.error === 'string') {
        return send(ctx, 400, errorPage(ctx.query.error.slice(0, 64), typeof ctx.query.error_description === 'string' ? ctx.query.error_description.slice(0, 200) : undefined));
      }
      ctx.redirect(returnPath(returnTo && Buffer.from(returnTo, 'base64url').toString()) ?? '/account');
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/account/passkeys') {
      const guarded = await guardedPost(ctx);
      if (!guarded) return;
      const { s, form } = guarded;
      const count = (await listCredentials(deps.db, s.accountId)).length;
      if (!mayAdd(s, count)) {
        await deps.audit.record({ type: 'webauthn.registration_refused', outcome: 'denied', severity: 'warning', rule: 'recent_login', actor: { userId: s.accountId } });
        return render(ctx, s, 403, { error: 'Confirm it is you (sign in again) before adding a passkey.' });
      }
      const name = (form.get('name') ?? '').trim() || 'Passkey';
      if (!NAME.test(name)) return render(ctx, s, 400, { error: 'Passkey names use letters, digits, spaces and . _ ( ) - (at most 64).' });
      try {
        const credential = await verifyRegistration(deps.db, deps.rp, {
          binding: s.sessionUid, userId: s.accountId, response: parseRegistration(form.get('credential') ?? undefined), name,
        });
        await deps.audit.record({
          type: 'webauthn.registered', outcome: 'success', rule: count === 0 ? 'recent_password_login' : 'recent_passkey_login',
          actor: { userId: s.accountId },
          details: { credential: credential.id, device_type: credential.deviceType, aaguid: credential.aaguid, passkeys: count + 1 },
        });
      } catch (err) {
        if (!(err instanceof WebAuthnError)) throw err;
        await deps.audit.record({
          type: 'webauthn.registration_refused', outcome: 'denied', severity: 'warning', rule: err.reason, actor: { userId: s.accountId },
          details: { credential: err.credentialId },
        });
        return render(ctx, s, err.reason === 'malformed' ? 400 : 401, { error: err.message });
      }
      ctx.status = 303;
      ctx.redirect('/account?done=added');
      return;
    }
    if (ctx.method === 'POST' && ctx.path === '/account/passkeys/delete') {
      const guarded = await guardedPost(ctx);
      if (!guarded) return;
      const { s, form } = guarded;
      if (!mayRemove(s)) {
        await deps.audit.record({ type: 'webauthn.removal_refused', outcome: 'denied', severity: 'warning', rule: 'recent_passkey_login', actor: { userId: s.accountId } });
        return render(ctx, s, 403, { error: 'Confirm it is you with a passkey before removing one.' });
      }
      const id = form.get('id') ?? '';
      if (!await removeCredential(deps.db, s.accountId, id)) return render(ctx, s, 404, { error: 'No such passkey.' });
      await deps.audit.record({ type: 'webauthn.removed', outcome: 'success', rule: 'recent_passkey_login', actor: { userId: s.accountId }, details: { credential: id } });
      ctx.status = 303;
      ctx.redirect('/account?done=removed');
      return;
    }
    return next();
  };
}
