// Login, consent and abort for oidc-provider interactions (/interaction/:uid/...).
import type Koa from 'koa';
import type { Context } from 'koa';
import type Provider from 'oidc-provider';

import { findUserById } from '../accounts/users.ts';
import type { Db } from '../db/index.ts';
import { readForm } from '../http/body.ts';
import type { Logger } from '../log.ts';
import { loginPage } from '../../views/login.ts';
import { consentPage } from '../../views/consent.ts';
import { describeScopes } from './scope-descriptions.ts';
import { authenticatePassword, LOGIN_FAILED_MESSAGE, type PasswordLogin } from './password-login.ts';
import { choosablePatients, grantConsent, LaunchRefusedError, launchRequired } from './consent.ts';
import { loginEvent } from './login-events.ts';
import type { AuditLog } from '../audit/log.ts';
import { checkLoginRateLimit } from '../ratelimit/login-limit.ts';
import { parseAuthentication, WebAuthnError } from '../mfa/webauthn.ts';
import { listCredentials } from '../mfa/credentials.ts';
import { authorizationRequirement } from '../oidc/step-up-check.ts';
import { passkeyMissingPage, passkeyPromptPage } from '../../views/passkey.ts';
import { completePasskey, needsPasskey, passkeyOptions, secondFactorFor, type AssertionCeremony, type PasskeyLoginDeps } from './passkey-login.ts';
import type { RateLimiters } from '../ratelimit/limiters.ts';
import { breakGlassPage } from '../../views/break-glass.ts';
import { clientMayBreakGlass } from '../oidc/break-glass-grants.ts';
import { resolveLaunchFor } from '../oidc/launch-context.ts';
import { isOnCareTeam } from '../smart/care-team.ts';
import { describeScopeList } from './scope-descriptions.ts';
import { breakGlassContext, breakGlassPasskeyOptions, BreakGlassRefusal, openBreakGlass, type BreakGlassDeps } from './break-glass.ts';

const ROUTE = /^\/interaction\/([A-Za-z0-9_-]{10,64})(?:\/(login|passkey|confirm|abort|break-glass))?$/;

export interface InteractionDeps {
  getProvider: () => Provider;
  db: Db;
  audit: AuditLog;
  passwordLogin: PasswordLogin;
  rateLimiters: RateLimiters;
  logger: Logger;
  /** Grant lifetime (seconds): a launch context chosen at consent lives as long as its grant. */
  grantTtlSeconds: number;
  passkeys: PasskeyLoginDeps;
  /** The first-party account pages' client: signed-in users are not asked to consent to it. */
  accountClientId: string;
  breakGlass: BreakGlassDeps;
}

function send(ctx: Context, body: string) {
  ctx.type = 'html';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = body;
}

export function interactionRoutes(deps: InteractionDeps): Koa.Middleware {
  return async (ctx, next) => {
    const match = ROUTE.exec(ctx.path);
    if (!match) return next();
    const [, uid, action] = match;
    const provider = deps.getProvider();
    // Throws SessionNotFound (400) for an unknown, expired or cookie-less interaction.
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.uid !== uid) return next();
    const client = await provider.Client.find(String(details.params.client_id));
    const clientId = String(details.params.client_id);
    const clientName = client?.clientName ?? clientId;
    const base = `/interaction/${uid}`;
    const renderConsent = async (error?: string) => {
      const user = details.session?.accountId ? await findUserById(deps.db, details.session.accountId) : undefined;
      const launch = launchRequired(details);
      const outside = launch === 'ehr' && user ? await launchOutsideCareTeam(user.id) : false;
      return consentPage({
        action: `${base}/confirm`,
        abortAction: `${base}/abort`,
        clientName,
        userName: user?.displayName ?? user?.username ?? 'unknown user',
        items: describeScopes(details),
        patients: launch === 'standalone' ? await choosablePatients(deps.db, details) : undefined,
        launchPatient: launch === 'ehr',
        launchOutsideCareTeam: outside,
        breakGlassUrl: launch && clientMayBreakGlass(client as never) ? `${base}/break-glass` : undefined,
        error,
      });
    };
    const launchOutsideCareTeam = async (userId: string) => {
      try {
        const launch = await resolveLaunchFor(deps.db, details.params.launch, clientId, userId);
        return !await isOnCareTeam(deps.db, userId, launch.patientId);
      } catch {
        return false; // an invalid launch is refused (and said so) when the form is posted
      }
    };
    const renderBreakGlass = async (form?: Map<string, string>, refusal?: BreakGlassRefusal) => {
      const user = details.session?.accountId ? await findUserById(deps.db, details.session.accountId) : undefined;
      let context;
      let error = refusal?.message;
      try {
        context = await breakGlassContext(deps.breakGlass, details, client as never);
      } catch (err) {
        if (!(err instanceof BreakGlassRefusal)) throw err;
        ctx.status = err.status;
        error = err.message;
      }
      return breakGlassPage({
        action: `${base}/break-glass`,
        abortAction: `${base}/abort`,
        backUrl: base,
        clientName,
        userName: user?.displayName ?? user?.username ?? 'unknown user',
        items: describeScopeList(context?.scopes ?? []),
        launch: context?.kind ?? 'standalone',
        ttlMinutes: Math.round(deps.breakGlass.ttlSeconds / 60),
        options: context ? await breakGlassPasskeyOptions(deps.breakGlass, uid!, context.user.id) : undefined,
        values: form && { patient: form.get('patient')?.slice(0, 64), reason: form.get('reason'), justification: form.get('justification')?.slice(0, 2000) },
        error,
      });
    };

    const requirement = () => authorizationRequirement(deps.db, clientId, details.params);
    const renderLogin = async (extra: { username?: string; error?: string; notice?: string } = {}) => loginPage({
      action: `${base}/login`,
      abortAction: `${base}/abort`,
      clientName,
      passkey: { action: `${base}/passkey`, options: await passkeyOptions(deps.passkeys, uid!, 'passwordless') },
      ...extra,
    });
    const renderPasskey = async (ceremony: AssertionCeremony, userId: string, error?: string) => {
      const user = await findUserById(deps.db, userId);
      return passkeyPromptPage({
        clientName,
        userName: user?.displayName ?? user?.username ?? 'unknown user',
        reason: ceremony === 'step_up' ? 'step_up' : 'second_factor',
        action: `${base}/passkey`,
        abortAction: `${base}/abort`,
        options: await passkeyOptions(deps.passkeys, uid!, ceremony, userId),
        error,
      });
    };
    const renderMissing = async (userId: string) => {
      const user = await findUserById(deps.db, userId);
      return passkeyMissingPage({
        clientName, userName: user?.displayName ?? user?.username ?? 'unknown user', accountUrl: '/account', abortAction: `${base}/abort`,
      });
    };

    if (!action && ctx.method === 'GET') {
      if (details.prompt.name === 'login') {
        const sessionUser = details.session?.accountId;
        // Signing in again within a session (step-up, max_age): the passkey proves it is the same person.
        if (sessionUser && details.prompt.reasons.some((r) => r !== 'no_session')) {
          const has = (await listCredentials(deps.db, sessionUser)).length > 0;
          if (has) return send(ctx, await renderPasskey('step_up', sessionUser));
          if (needsPasskey(await requirement())) return send(ctx, await renderMissing(sessionUser));
          return send(ctx, await renderLogin({ notice: 'Please sign in again to continue.' }));
        }
        return send(ctx, await renderLogin());
      }
      if (details.prompt.name === 'consent' && clientId === deps.accountClientId && details.session?.accountId) {
        // First party: the account pages need only the sign-in itself (openid), no consent screen.
        const grant = new provider.Grant({ accountId: details.session.accountId, clientId });
        grant.addOIDCScope('openid');
        return provider.interactionFinished(ctx.req, ctx.res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
      }
      if (details.prompt.name === 'consent') return send(ctx, await renderConsent());
      ctx.throw(400, 'unsupported interaction prompt');
    }
    if (action === 'break-glass' && ctx.method === 'GET') {
      if (details.prompt.name !== 'consent') ctx.throw(400, 'interaction is not at the consent step');
      return send(ctx, await renderBreakGlass());
    }
    if (ctx.method !== 'POST' || !action) {
      ctx.status = 405;
      ctx.body = { error: 'invalid_request', error_description: 'method not allowed' };
      return;
    }

    // The emergency form carries up to 2000 characters of justification (up to 4 bytes each, encoded).
    const form = await readForm(ctx, action === 'break-glass' ? 32 * 1024 : undefined);
    if (action === 'abort') {
      return provider.interactionFinished(ctx.req, ctx.res, {
        error: 'access_denied',
        error_description: 'end-user cancelled the request',
      }, { mergeWithLastSubmission: false });
    }
    if (action === 'login') {
      if (details.prompt.name !== 'login') ctx.throw(400, 'interaction is not at the login step');
      const username = form.get('username') ?? '';
      // Before the password check: a refused attempt costs one counter operation, no hashing, no write.
      const limit = await checkLoginRateLimit(deps.rateLimiters, deps.audit, { ip: ctx.ip, username, clientId });
      if (!limit.allowed) {
        ctx.status = 429;
        ctx.set('Retry-After', String(limit.retryAfterSeconds));
        return send(ctx, await renderLogin({ username: username.slice(0, 63), error: LOGIN_FAILED_MESSAGE }));
      }
      const outcome = await authenticatePassword(deps.passwordLogin, username, form.get('password') ?? '');
      await deps.audit.record(loginEvent(deps.audit, outcome, username, clientId));
      if (!outcome.ok) {
        ctx.status = outcome.locked ? 429 : 401;
        return send(ctx, await renderLogin({ username: username.slice(0, 63), error: outcome.message }));
      }
      const next = await secondFactorFor(deps.passkeys, outcome.user, await requirement());
      // The second-factor challenge, issued only now, is what remembers that the password was right.
      if (next === 'passkey') return send(ctx, await renderPasskey('second_factor', outcome.user.id));
      if (next === 'missing') return send(ctx, await renderMissing(outcome.user.id));
      return provider.interactionFinished(ctx.req, ctx.res, {
        login: { accountId: outcome.user.id, acr: outcome.acr, amr: [...outcome.amr], remember: false },
      }, { mergeWithLastSubmission: false });
    }
    if (action === 'passkey') {
      if (details.prompt.name !== 'login') ctx.throw(400, 'interaction is not at the login step');
      let response;
      try {
        response = parseAuthentication(form.get('credential'));
      } catch (err) {
        if (!(err instanceof WebAuthnError)) throw err;
        ctx.status = 400;
        return send(ctx, await renderLogin({ error: err.message }));
      }
      const outcome = await completePasskey(deps.passkeys, {
        provider, uid: uid!, clientId, response,
        sessionAccountId: details.session?.accountId,
        sessionAmr: details.session?.amr as string[] | undefined,
        findUser: (id) => findUserById(deps.db, id),
      });
      if (!outcome.ok) {
        ctx.status = outcome.error.reason === 'malformed' ? 400 : 401;
        if (outcome.retry) return send(ctx, await renderPasskey(outcome.retry.ceremony, outcome.retry.userId, outcome.error.message));
        return send(ctx, await renderLogin({ error: outcome.error.message }));
      }
      return provider.interactionFinished(ctx.req, ctx.res, { login: { ...outcome.login, remember: false } }, { mergeWithLastSubmission: false });
    }
    if (action === 'break-glass') {
      if (details.prompt.name !== 'consent') ctx.throw(400, 'interaction is not at the consent step');
      let result;
      try {
        result = await openBreakGlass(deps.breakGlass, { provider, details, uid: uid!, client: client as never, form });
      } catch (err) {
        if (!(err instanceof BreakGlassRefusal)) throw err;
        await deps.audit.record({
          type: 'break_glass.refused',
          outcome: 'denied',
          // Trying past the limit or while barred is what a reviewer must see first.
          severity: err.rule === 'limit_exceeded' || err.rule === 'user_disabled' ? 'high' : 'warning',
          rule: err.rule,
          actor: { userId: details.session?.accountId, clientId },
          target: { patientId: err.patientId },
        });
        const page = await renderBreakGlass(form, err);
        ctx.status = err.status;
        return send(ctx, page);
      }
      return provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
    }
    // confirm
    if (details.prompt.name !== 'consent') ctx.throw(400, 'interaction is not at the consent step');
    let result;
    try {
      result = await grantConsent(provider, details, (summary) => deps.audit.record({
        type: 'consent.given',
        outcome: 'success',
        rule: summary.launch ? 'user_consent_care_team' : 'user_consent',
        actor: { userId: summary.accountId, clientId: summary.clientId },
        target: { patientId: summary.patientId },
        details: { scope: summary.scope, resources: summary.resources, launch: summary.launch },
      }).then(() => undefined), { db: deps.db, form, grantTtlSeconds: deps.grantTtlSeconds });
    } catch (err) {
      if (!(err instanceof LaunchRefusedError)) throw err;
      // Deny by default: a patient outside the care team is refused (break-glass is a separate, audited path).
      await deps.audit.record({
        type: 'launch.refused',
        outcome: 'denied',
        severity: 'warning',
        rule: err.rule,
        actor: { userId: details.session?.accountId, clientId },
        target: { patientId: err.patientId },
      });
      ctx.status = 403;
      return send(ctx, await renderConsent(err.message));
    }
    return provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  };
}
