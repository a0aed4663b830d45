// What the first-party pages (the account pages, the admin console) share: who is signed in (the
// oidc-provider session, the same cookie the authorization endpoint uses), CSRF tokens bound to that
// session, the same-origin check for their forms, and the pages a first-party sign-in may return to.
import { createHmac, timingSafeEqual } from 'node:crypto';

import type Koa from 'koa';
import type Provider from 'oidc-provider';

export interface SignedIn {
  accountId: string;
  sessionUid: string;
  acr: string | undefined;
  /** When the user last signed in (seconds since the epoch). */
  loginTs: number | undefined;
}

export interface FirstPartySessionDeps {
  getProvider: () => Provider;
  issuer: string;
  /** Keys the CSRF tokens are derived from (the first one). */
  cookieKeys: string[];
}

export interface FirstPartySession {
  signedIn(ctx: Koa.Context): Promise<SignedIn | undefined>;
  /** The session's CSRF token for these pages (an HMAC of the session id: no server state). */
  csrfFor(sessionUid: string): string;
  csrfValid(sessionUid: string, token: string | null | undefined): boolean;
  /** The request names another site as its origin. */
  foreignOrigin(ctx: Koa.Context): boolean;
}

/**
 * `purpose` separates the CSRF tokens of different page sets: a token of one is no good on the other.
 */
export function firstPartySession(deps: FirstPartySessionDeps, purpose: string): FirstPartySession {
  const csrfKey = createHmac('sha256', deps.cookieKeys[0]!).update(purpose).digest();
  const csrfFor = (sessionUid: string) => createHmac('sha256', csrfKey).update(sessionUid).digest('base64url');
  const ownOrigin = new URL(deps.issuer).origin;
  return {
    async signedIn(ctx) {
      const session = await deps.getProvider().Session.get(ctx as never);
      if (!session.accountId) return undefined;
      return { accountId: session.accountId, sessionUid: session.uid, acr: session.acr, loginTs: session.loginTs };
    },
    csrfFor,
    csrfValid(sessionUid, token) {
      const expected = Buffer.from(csrfFor(sessionUid));
      const given = Buffer.from(token ?? '');
      return given.length === expected.length && timingSafeEqual(given, expected);
    },
    foreignOrigin(ctx) {
      // Our pages send no referrer, so browsers say `Origin: null`; another site's origin is refused outright.
      // The session-bound CSRF token (and SameSite cookies) are what stop a forged form.
      const origin = ctx.get('Origin');
      return origin !== '' && origin !== 'null' && origin !== ownOrigin;
    },
  };
}

/** The sign-in happened at most `seconds` ago. */
export function signedInWithin(s: SignedIn, seconds: number, nowMs = Date.now()): boolean {
  return s.loginTs !== undefined && nowMs / 1000 - s.loginTs <= seconds;
}

// A path on this server under /account or /admin: no scheme, host, query, `//` or dot segments.
const RETURN_PATH = /^\/(?:account|admin)(?:\/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*$/;

/** Where a first-party sign-in may come back to, or undefined for anything else (an open redirect). */
export function returnPath(value: unknown): string | undefined {
  return typeof value === 'string' && value.length <= 200 && RETURN_PATH.test(value) ? value : undefined;
}
