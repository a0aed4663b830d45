// A browser's way through the real authorization, login and consent pages (cookies, redirects), with
// undici: one call is one complete sign-in, from the authorization request to the redirect carrying the code.
import { createHash, randomBytes } from 'node:crypto';

import { request, type Agent } from 'undici';

interface Step {
  status: number;
  location: string | undefined;
  body: string;
}

export interface SignIn {
  issuer: string;
  agent: Agent;
  clientId: string;
  redirectUri: string;
  username: string;
  password: string;
  scope: string;
  /** Extra authorization request parameters (aud, prompt, ...). */
  params?: Record<string, string>;
  /** Patient picked on the consent page when it offers a choice. */
  patient?: string;
}

export interface SignedIn {
  code: string;
  codeVerifier: string;
  /** HTTP requests the sign-in took. */
  requests: number;
}

export async function signIn(opts: SignIn): Promise<SignedIn> {
  const origin = new URL(opts.issuer).origin;
  const cookies = new Map<string, string>();
  let requests = 0;

  async function send(url: URL, form?: Record<string, string>): Promise<Step> {
    const headers: Record<string, string> = { accept: 'text/html' };
    if (cookies.size) headers.cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    if (form) headers['content-type'] = 'application/x-www-form-urlencoded';
    const res = await request(url, {
      method: form ? 'POST' : 'GET', headers, dispatcher: opts.agent, ...(form ? { body: new URLSearchParams(form).toString() } : {}),
    });
    requests++;
    for (const line of [res.headers['set-cookie'] ?? []].flat()) {
      const [pair = ''] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (/expires=Thu, 01 Jan 1970/i.test(line) || value === '') cookies.delete(name);
      else cookies.set(name, value);
    }
    const location = res.headers.location;
    return { status: res.statusCode, location: typeof location === 'string' ? location : undefined, body: await res.body.text() };
  }

  async function follow(step: Step): Promise<Step> {
    let current = step;
    while (current.location && current.status >= 300 && current.status < 400) {
      const next = new URL(current.location, origin);
      if (next.origin !== origin) return current;
      current = await send(next);
    }
    return current;
  }

  const codeVerifier = randomBytes(32).toString('base64url');
  const url = new URL('/auth', origin);
  for (const [k, v] of Object.entries({
    client_id: opts.clientId, response_type: 'code', redirect_uri: opts.redirectUri, scope: opts.scope,
    state: randomBytes(8).toString('base64url'),
    code_challenge: createHash('sha256').update(codeVerifier).digest('base64url'), code_challenge_method: 'S256',
    ...opts.params,
  })) url.searchParams.set(k, v);

  let step = await follow(await send(url));
  const login = /action="(\/interaction\/[^"]+\/login)"/.exec(step.body);
  if (!login) throw new Error(`no login form (status ${step.status}): ${step.body.slice(0, 200)}`);
  step = await follow(await send(new URL(login[1]!, origin), { username: opts.username, password: opts.password }));
  const confirm = /action="(\/interaction\/[^"]+\/confirm)"/.exec(step.body);
  if (confirm) {
    const offered = /<input type="radio" name="patient"/.test(step.body);
    step = await follow(await send(new URL(confirm[1]!, origin), offered && opts.patient ? { patient: opts.patient } : {}));
  }
  if (!step.location) throw new Error(`sign-in did not redirect to the client (status ${step.status}): ${step.body.slice(0, 200)}`);
  const callback = new URL(step.location);
  const code = callback.searchParams.get('code');
  if (!code) throw new Error(`no code in the redirect: ${callback.search.slice(0, 200)}`);
  return { code, codeVerifier, requests };
}
