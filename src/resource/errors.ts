// Refusals of a resource server, with the HTTP status and the RFC 6750 §3 `WWW-Authenticate` challenge
// (plus RFC 9470 step-up parameters). Descriptions are fixed texts of ours: never a token, never a
// claim value copied from a token.

export type ResourceErrorCode =
  | 'invalid_request' // 400: malformed Authorization header (RFC 6750 §3.1)
  | 'invalid_token' // 401: expired, forged, wrong audience/issuer/type, binding mismatch
  | 'insufficient_scope' // 403: valid token, not enough scope or wrong patient
  | 'insufficient_user_authentication' // 401: RFC 9470 step-up needed
  | 'temporarily_unavailable'; // 503: keys or introspection unreachable (fail closed)

export type ResourceErrorStatus = 400 | 401 | 403 | 503;

export interface ResourceAccessErrorOptions {
  /** insufficient_scope: the scope(s) that would allow the request (space-separated). */
  scope?: string;
  /** insufficient_user_authentication: the acr values that would satisfy the request (RFC 9470). */
  acrValues?: string[];
  /** insufficient_user_authentication: maximum age of the authentication, in seconds (RFC 9470). */
  maxAge?: number;
  /** temporarily_unavailable: suggested Retry-After, in seconds. */
  retryAfter?: number;
  cause?: unknown;
}

export class ResourceAccessError extends Error {
  override readonly name = 'ResourceAccessError';
  readonly scope: string | undefined;
  readonly acrValues: string[] | undefined;
  readonly maxAge: number | undefined;
  readonly retryAfter: number | undefined;

  /**
   * `error` is undefined only for a request without any token (401 with a bare challenge, RFC 6750
   * §3.1: "the resource server SHOULD NOT include an error code").
   */
  constructor(
    readonly status: ResourceErrorStatus,
    readonly error: ResourceErrorCode | undefined,
    readonly description: string,
    options: ResourceAccessErrorOptions = {},
  ) {
    super(error === undefined ? description : `${error}: ${description}`, { cause: options.cause });
    this.scope = options.scope;
    this.acrValues = options.acrValues;
    this.maxAge = options.maxAge;
    this.retryAfter = options.retryAfter;
  }

  /**
   * The `WWW-Authenticate` header value, e.g.
   * `Bearer realm="fhir", error="insufficient_scope", error_description="...", scope="patient/Observation.r"`.
   * A missing token gives just `Bearer realm="fhir"`.
   */
  wwwAuthenticate(realm?: string): string {
    const params: Array<[string, string]> = [];
    if (realm !== undefined) params.push(['realm', realm]);
    if (this.error !== undefined) {
      params.push(['error', this.error]);
      if (this.description) params.push(['error_description', this.description]);
      if (this.scope) params.push(['scope', this.scope]);
      if (this.acrValues?.length) params.push(['acr_values', this.acrValues.join(' ')]);
      if (this.maxAge !== undefined) params.push(['max_age', String(this.maxAge)]);
    }
    if (params.length === 0) return 'Bearer';
    return `Bearer ${params.map(([k, v]) => `${k}=${quote(v)}`).join(', ')}`;
  }

  /**
   * True when the response should carry the `WWW-Authenticate` header: 401 and 403, and 400
   * invalid_request (RFC 6750 §3 puts every error code in the challenge); not 503.
   */
  get challenges(): boolean {
    return this.status !== 503;
  }

  /** A JSON body in the RFC 6750/6749 shape, for APIs that are not FHIR. */
  toJSON(): { error?: string; error_description: string; scope?: string } {
    return {
      ...(this.error !== undefined ? { error: this.error } : {}),
      error_description: this.description,
      ...(this.scope ? { scope: this.scope } : {}),
    };
  }
}

/**
 * RFC 7235 quoted-string. RFC 6750 §3 allows only %x20-21 / %x23-5B / %x5D-7E in error_description
 * and scope; anything else (controls, non-ASCII) is dropped, and `"`/`\` are backslash-escaped so a
 * header can never be split or a parameter injected.
 */
function quote(value: string): string {
  const printable = value.replace(/[^\x20-\x7e]/g, '');
  return `"${printable.replace(/["\\]/g, '\\$&')}"`;
}

export const missingToken = (): ResourceAccessError =>
  new ResourceAccessError(401, undefined, 'an access token is required');

export const invalidRequest = (description: string): ResourceAccessError =>
  new ResourceAccessError(400, 'invalid_request', description);

export const invalidToken = (description: string, cause?: unknown): ResourceAccessError =>
  new ResourceAccessError(401, 'invalid_token', description, { cause });

export const insufficientScope = (description: string, scope: string | undefined): ResourceAccessError =>
  new ResourceAccessError(403, 'insufficient_scope', description, scope ? { scope } : {});

export const temporarilyUnavailable = (description: string, cause?: unknown): ResourceAccessError =>
  new ResourceAccessError(503, 'temporarily_unavailable', description, { cause, retryAfter: 5 });
