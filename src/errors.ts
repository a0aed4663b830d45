// An error that answers as an OAuth error (RFC 6749 §5.2 shape) with its own HTTP status, through
// oidc-provider's error handler and ours alike. oidc-provider renders `message` as the error code,
// so the message IS the code; details for operators go elsewhere.
export class OAuthStyleError extends Error {
  readonly statusCode: number;
  readonly expose = true;
  readonly error: string;

  constructor(readonly status: number, error: string, readonly error_description: string, options?: ErrorOptions) {
    super(error, options);
    this.statusCode = status;
    this.error = error;
  }
}
