// Drives the real login and consent pages over HTTPS the way a browser would (cookies, redirects).
import type {
  AuthenticationResponseJSON, PublicKeyCredentialCreationOptionsJSON, PublicKeyCredentialRequestOptionsJSON,
} from '@simplewebauthn/server';

import type { TestServer } from './test-server.ts';

export class CookieJar {
  private readonly cookies = new Map<string, string>();

  store(headers: Headers): void {
    for (const line of headers.getSetCookie()) {
      const [pair] = line.split(';');
      const eq = pair!.indexOf('=');
      const name = pair!.slice(0, eq).trim();
      const value = pair!.slice(eq + 1).trim();
      if (/expires=Thu, 01 Jan 1970/i.test(line) || value === '') this.cookies.delete(name);
      else this.cookies.set(name, value);
    }
  }

  header(): string {
    return [...this.cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

/** Answers a page's WebAuthn request options (a soft authenticator in tests). */
export type PasskeyAnswerer = (options: PublicKeyCredentialRequestOptionsJSON) => AuthenticationResponseJSON;

/** The WebAuthn options a passkey page hands its script (the JSON data block). */
export function pageOptions(page: string, mode: 'register'): PublicKeyCredentialCreationOptionsJSON;
export function pageOptions(page: string, mode: 'authenticate'): PublicKeyCredentialRequestOptionsJSON;
export function pageOptions(page: string, mode: 'register' | 'authenticate'): unknown {
  const block = new RegExp(`<script type="application/json" id="webauthn-options-${mode}">([\\s\\S]*?)</script>`).exec(page);
  if (!block) throw new Error(`no ${mode} options on the page: ${page.slice(0, 300)}`);
  return JSON.parse(block[1]!);
}

export interface Step {
  status: number;
  location: string | null;
  body: string;
}

/** What a person submits on the consent page: the chosen patient, or the pre-selected one. */
export function consentFields(page: string, patient?: string): Record<string, string> {
  if (patient !== undefined) return { patient };
  const checked = /<input type="radio" name="patient" value="([^"]+)"[^>]* checked>/.exec(page);
  return checked ? { patient: checked[1]! } : {};
}

export class Browser {
  readonly jar = new CookieJar();
  constructor(private readonly ts: TestServer) {}

  async get(url: string | URL): Promise<Step> {
    const res = await this.ts.fetch(url, { headers: { cookie: this.jar.header(), accept: 'text/html' } });
    this.jar.store(res.headers as unknown as Headers);
    return { status: res.status, location: res.headers.get('location'), body: await res.text() };
  }

  async post(url: string | URL, fields: Record<string, string>): Promise<Step> {
    const res = await this.ts.fetch(url, {
      method: 'POST',
      body: new URLSearchParams(fields).toString(),
      headers: { cookie: this.jar.header(), accept: 'text/html', 'content-type': 'application/x-www-form-urlencoded' },
    });
    this.jar.store(res.headers as unknown as Headers);
    return { status: res.status, location: res.headers.get('location'), body: await res.text() };
  }

  /** Follows redirects on the server until one leaves it (to the client's redirect_uri) or a page renders. */
  async follow(step: Step): Promise<Step> {
    let current = step;
    while (current.location && current.status >= 300 && current.status < 400) {
      const next = new URL(current.location, this.ts.issuer);
      if (next.origin !== new URL(this.ts.issuer).origin) return current;
      current = await this.get(next);
    }
    return current;
  }

  /**
   * Signs in on the page `step` shows: the password form, then the passkey prompt if one follows (or
   * the passkey alone when `password` is empty: passwordless). `passkey` answers the options a page gives.
   */
  async signIn(step: Step, username: string, password: string, passkey?: PasskeyAnswerer): Promise<Step> {
    const loginAction = /action="(\/interaction\/[^"]+\/login)"/.exec(step.body);
    if (loginAction && (password || !passkey)) {
      step = await this.follow(await this.post(new URL(loginAction[1]!, this.ts.issuer), { username, password }));
    }
    const passkeyAction = /action="(\/interaction\/[^"]+\/passkey)"/.exec(step.body);
    if (passkeyAction && passkey) {
      const answer = passkey(pageOptions(step.body, 'authenticate'));
      step = await this.follow(await this.post(new URL(passkeyAction[1]!, this.ts.issuer), { credential: JSON.stringify(answer) }));
    }
    return step;
  }

  /** From an authorization URL through login and consent to the final redirect to the client. */
  async authorize(authorizationUrl: URL, username: string, password: string, opts: { patient?: string; passkey?: PasskeyAnswerer } = {}): Promise<URL> {
    let step = await this.follow(await this.get(authorizationUrl));
    step = await this.signIn(step, username, password, opts.passkey);
    const confirmAction = /action="(\/interaction\/[^"]+\/confirm)"/.exec(step.body);
    if (confirmAction) step = await this.follow(await this.post(new URL(confirmAction[1]!, this.ts.issuer), consentFields(step.body, opts.patient)));
    if (!step.location) throw new Error(`authorization did not redirect to the client (status ${step.status}): ${step.body.slice(0, 300)}`);
    return new URL(step.location);
  }
}

/**
 * Enrols a passkey for a user through the real account page (password sign-in, then registration).
 * `register` answers the page's creation options (a soft authenticator's `register`).
 */
export async function enrolPasskey(
  ts: TestServer, username: string, password: string,
  register: (options: PublicKeyCredentialCreationOptionsJSON) => unknown,
): Promise<Step> {
  const browser = new Browser(ts);
  const page = await browser.signIn(await browser.follow(await browser.get(new URL('/account', ts.issuer))), username, password);
  const csrf = /name="csrf" value="([^"]+)"/.exec(page.body)?.[1];
  if (!csrf) throw new Error(`no account page after sign-in (status ${page.status}): ${page.body.slice(0, 300)}`);
  const answer = register(pageOptions(page.body, 'register'));
  return browser.post(new URL('/account/passkeys', ts.issuer), { csrf, name: 'Test key', credential: JSON.stringify(answer) });
}
