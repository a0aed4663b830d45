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
import type { RateLimiters } from '../ratelimit/limiters.ts';

const ROUTE = /^\/interaction\/([A-Za-z0-9_-]{10,64})(?:\/(login|confirm|abort))?$/;

export interface InteractionDeps {
  getProvider: () => Provider;
  db: Db;
  audit: AuditLog;
  passwordLogin: PasswordLogin;
  rateLimiters: RateLimiters;
  logger: Logger;
  /** Grant lifetime (seconds): a launch context chosen at consent lives as long as its grant. */
  grantTtlSeconds: number;
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
      return consentPage({
        action: `${base}/confirm`,
        abortAction: `${base}/abort`,
        clientName,
        userName: user?.displayName ?? user?.username ?? 'unknown user',
        items: describeScopes(details),
        patients: launch === 'standalone' ? await choosablePatients(deps.db, details) : undefined,
        launchPatient: launch === 'ehr',
        error,
      });
    };

    if (!action && ctx.method === 'GET') {
      if (details.prompt.name === 'login') {
        return send(ctx, loginPage({ action: `${base}/login`, abortAction: `${base}/abort`, clientName }));
      }
      if (details.prompt.name === 'consent') return send(ctx, await renderConsent());
      ctx.throw(400, 'unsupported interaction prompt');
    }
    if (ctx.method !== 'POST' || !action) {
      ctx.status = 405;
      ctx.body = { error: 'invalid_request', error_description: 'method not allowed' };
      return;
    }

    const form = await readForm(ctx);
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
        return send(ctx, loginPage({
          action: `${base}/login`, abortAction: `${base}/abort`, clientName, username: username.slice(0, 63), error: LOGIN_FAILED_MESSAGE,
        }));
      }
      const outcome = await authenticatePassword(deps.passwordLogin, username, form.get('password') ?? '');
      await deps.audit.record(loginEvent(deps.audit, outcome, username, clientId));
      if (!outcome.ok) {
        ctx.status = outcome.locked ? 429 : 401;
        return send(ctx, loginPage({
          action: `${base}/login`, abortAction: `${base}/abort`, clientName, username: username.slice(0, 63), error: outcome.message,
        }));
      }
      return provider.interactionFinished(ctx.req, ctx.res, {
        login: { accountId: outcome.user.id, acr: outcome.acr, amr: [...outcome.amr], remember: false },
      }, { mergeWithLastSubmission: false });
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
