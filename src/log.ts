// Structured JSON logs (pino). Secrets are redacted by path as a second line of defence: callers
// never pass passwords, token values, cookies or raw patient identifiers in the first place.
import { pino, type Logger } from 'pino';

const REDACT_PATHS = [
  'password', '*.password', 'token', '*.token', 'access_token', '*.access_token', 'refresh_token',
  '*.refresh_token', 'id_token', '*.id_token', 'code', '*.code', 'client_secret', '*.client_secret',
  'req.headers.authorization', 'req.headers.cookie', 'res.headers["set-cookie"]', 'headers.authorization',
  'headers.cookie',
];

export function createLogger(level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    { level, base: { service: 'clinical-authz' }, redact: { paths: REDACT_PATHS, censor: '[redacted]' } },
    destination,
  );
}

export type { Logger };
