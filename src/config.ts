// Typed configuration from the environment. Production refuses development defaults.
import path from 'node:path';
import { z } from 'zod';

import { formatIssues } from './validation.ts';

const boolean = z.enum(['true', 'false', '1', '0']).transform((v) => v === 'true' || v === '1');
const seconds = z.coerce.number().int().positive();
/** No access token, whatever its resource server, lives longer than this. */
export const MAX_ACCESS_TOKEN_TTL = 3600;
/** Hard maximum of an emergency access, whatever the configuration says. */
export const MAX_BREAK_GLASS_TTL = 3600;

const EnvSchema = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  ISSUER: z.url().default('https://localhost:3000'),
  /** Default: all interfaces in production, loopback only in development (the demo seed's passwords are public). */
  HOST: z.string().optional(),
  PORT: z.coerce.number().int().min(0).max(65535).default(3000),
  MTLS_PORT: z.coerce.number().int().min(0).max(65535).default(3001),
  /** Public base URL of the mTLS listener (advertised in mtls_endpoint_aliases). */
  MTLS_BASE_URL: z.url().optional(),
  DATABASE_URL: z.string().min(1).optional(),
  DATABASE_POOL_SIZE: z.coerce.number().int().min(1).max(200).default(10),
  DATA_DIR: z.string().default('./data'),
  KEYS_DIR: z.string().default('./keys'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Seed applied on start when the database holds no client and no user (dev only by default). */
  SEED_FILE: z.string().optional(),
  DEMO_SEED: boolean.optional(),
  ACCESS_TOKEN_TTL: seconds.max(3600).default(300),
  ID_TOKEN_TTL: seconds.max(3600).default(300),
  REFRESH_TOKEN_TTL: seconds.default(8 * 3600),
  CLIENT_CREDENTIALS_TTL: seconds.max(3600).default(300),
  SESSION_TTL: seconds.default(8 * 3600),
  INTERACTION_TTL: seconds.default(600),
  GRANT_TTL: seconds.default(8 * 3600),
  AUTHORIZATION_CODE_TTL: seconds.max(600).default(60),
  LOGIN_MAX_FAILURES: z.coerce.number().int().min(1).default(5),
  LOGIN_LOCK_SECONDS: seconds.default(900),
  /** Seconds between checks for a rotated signing key set on disk. */
  KEYS_RELOAD_INTERVAL: seconds.default(30),
  /** Behind a TLS-terminating proxy: trust X-Forwarded-* (oidc-provider `proxy`), from TRUSTED_PROXIES only. */
  TRUST_PROXY: boolean.default(false),
  /** Comma-separated addresses or CIDR ranges of the proxies whose X-Forwarded-* headers are believed. */
  TRUSTED_PROXIES: z.string().optional(),
  /** PEM bundle of the CAs whose client certificates tls_client_auth accepts (default: the dev client CA under KEYS_DIR). */
  CLIENT_CA_FILE: z.string().min(1).optional(),
  /**
   * Behind a TLS-terminating proxy: read the client certificate from a header the proxy sets, believed
   * only from TRUSTED_PROXIES. `rfc9440`: Client-Cert (+ Client-Cert-Chain); `nginx`: URL-encoded PEM
   * ($ssl_client_escaped_cert) in CLIENT_CERT_NGINX_HEADER. Default `none`: the TLS handshake only.
   */
  CLIENT_CERT_HEADER: z.enum(['none', 'rfc9440', 'nginx']).default('none'),
  CLIENT_CERT_NGINX_HEADER: z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/).default('x-ssl-client-cert'),
  /** WebAuthn relying party id (a registrable domain of the issuer's host; default: the issuer's host). */
  WEBAUTHN_RP_ID: z.string().regex(/^[a-z0-9.-]{1,253}$/).optional(),
  WEBAUTHN_RP_NAME: z.string().min(1).max(64).default('Clinical AuthZ'),
  /** Comma-separated origins whose WebAuthn answers are accepted (default: the issuer's origin). */
  WEBAUTHN_ORIGINS: z.string().optional(),
  /** Seconds a WebAuthn challenge may be answered in. */
  WEBAUTHN_CHALLENGE_TTL: seconds.max(600).default(120),
  /**
   * `enrolled`: anyone with a passkey uses it at every sign-in. `on_demand`: the passkey is asked only
   * when a request needs it (acr_values, max_age, step-up rules).
   */
  MFA_AT_LOGIN: z.enum(['enrolled', 'on_demand']).default('enrolled'),
  /** Adding or removing a passkey needs a sign-in at most this old (seconds). */
  RECENT_LOGIN_SECONDS: seconds.max(3600).default(300),
  /** Lifetime (seconds) of an emergency (break-glass) access: its grant and access token. */
  BREAK_GLASS_TTL: seconds.max(MAX_BREAK_GLASS_TTL).default(900),
  /** Emergency accesses one user may open per 24 hours (0: nobody may break the glass). */
  BREAK_GLASS_DAILY_LIMIT: z.coerce.number().int().min(0).max(100).default(3),
  /** The privacy office's webhook: every emergency access is announced there (signed, retried). */
  BREAK_GLASS_WEBHOOK_URL: z.url({ protocol: /^https?$/ }).optional(),
  /** Standard Webhooks signing secret (`whsec_` + base64 of at least 24 random bytes). */
  BREAK_GLASS_WEBHOOK_SECRET: z.string().regex(/^whsec_[A-Za-z0-9+/]{32,}={0,2}$/, 'must be whsec_ followed by base64 of at least 24 bytes').optional(),
  /** Shared rate-limit counters in Redis instead of PostgreSQL. */
  REDIS_URL: z.string().min(1).optional(),
  RATE_LIMIT_ENABLED: boolean.default(true),
  /** Requests per client per window at the token, introspection, revocation and registration endpoints. */
  RATE_LIMIT_CLIENT_POINTS: z.coerce.number().int().min(1).default(1200),
  RATE_LIMIT_CLIENT_WINDOW: seconds.default(60),
  /** Login attempts per source address per window. */
  RATE_LIMIT_LOGIN_IP_POINTS: z.coerce.number().int().min(1).default(60),
  RATE_LIMIT_LOGIN_IP_WINDOW: seconds.default(60),
  /** Login attempts per username per window (on top of the failed-login lock). */
  RATE_LIMIT_LOGIN_USER_POINTS: z.coerce.number().int().min(1).default(20),
  RATE_LIMIT_LOGIN_USER_WINDOW: seconds.default(900),
});

export type Environment = z.infer<typeof EnvSchema>['NODE_ENV'];

export interface Config {
  env: Environment;
  issuer: string;
  host: string;
  port: number;
  mtlsPort: number;
  mtlsBaseUrl: string;
  databaseUrl: string | undefined;
  databasePoolSize: number;
  dataDir: string;
  keysDir: string;
  logLevel: string;
  seedFile: string | undefined;
  demoSeed: boolean;
  trustProxy: boolean;
  trustedProxies: string[];
  clientCaFile: string | undefined;
  /** Where client certificates may come from besides the TLS handshake. */
  clientCertHeader: { format: 'none' | 'rfc9440' | 'nginx'; nginxHeader: string };
  keysReloadIntervalSeconds: number;
  ttl: {
    accessToken: number;
    idToken: number;
    refreshToken: number;
    clientCredentials: number;
    session: number;
    interaction: number;
    grant: number;
    authorizationCode: number;
  };
  login: { maxFailures: number; lockSeconds: number };
  webauthn: {
    rpId: string;
    rpName: string;
    origins: string[];
    challengeTtlSeconds: number;
    mfaAtLogin: 'enrolled' | 'on_demand';
    recentLoginSeconds: number;
  };
  breakGlass: {
    ttlSeconds: number;
    dailyLimit: number;
    webhook: { url: string; secret: string } | undefined;
  };
  redisUrl: string | undefined;
  rateLimit: {
    enabled: boolean;
    client: RateLimitRule;
    loginIp: RateLimitRule;
    loginUser: RateLimitRule;
  };
}

export interface RateLimitRule {
  points: number;
  windowSeconds: number;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  const parsed = EnvSchema.safeParse(env);
  if (!parsed.success) {
    throw new ConfigError(`invalid configuration: ${formatIssues(parsed.error.issues)}`);
  }
  const e = parsed.data;
  if (e.TRUST_PROXY && !e.TRUSTED_PROXIES) {
    throw new ConfigError('TRUST_PROXY=true needs TRUSTED_PROXIES (the proxies whose forwarded headers are believed)');
  }
  if (e.CLIENT_CERT_HEADER !== 'none' && !e.TRUSTED_PROXIES) {
    throw new ConfigError('CLIENT_CERT_HEADER needs TRUSTED_PROXIES (the proxies whose certificate headers are believed)');
  }
  if (e.BREAK_GLASS_WEBHOOK_URL && !e.BREAK_GLASS_WEBHOOK_SECRET) {
    throw new ConfigError('BREAK_GLASS_WEBHOOK_URL needs BREAK_GLASS_WEBHOOK_SECRET (notifications are signed)');
  }
  const issuer = e.ISSUER.replace(/\/+$/, '');
  const issuerUrl = new URL(issuer);
  const mtlsBaseUrl = (e.MTLS_BASE_URL ?? defaultMtlsBase(issuerUrl, e.MTLS_PORT)).replace(/\/+$/, '');

  const config: Config = {
    env: e.NODE_ENV,
    issuer,
    host: e.HOST ?? (e.NODE_ENV === 'production' ? '0.0.0.0' : '127.0.0.1'),
    port: e.PORT,
    mtlsPort: e.MTLS_PORT,
    mtlsBaseUrl,
    databaseUrl: e.DATABASE_URL,
    databasePoolSize: e.DATABASE_POOL_SIZE,
    dataDir: path.resolve(e.DATA_DIR),
    keysDir: path.resolve(e.KEYS_DIR),
    logLevel: e.LOG_LEVEL,
    seedFile: e.SEED_FILE,
    demoSeed: e.DEMO_SEED ?? e.NODE_ENV !== 'production',
    trustProxy: e.TRUST_PROXY,
    trustedProxies: (e.TRUSTED_PROXIES ?? '').split(',').map((p) => p.trim()).filter(Boolean),
    clientCaFile: e.CLIENT_CA_FILE ? path.resolve(e.CLIENT_CA_FILE) : undefined,
    clientCertHeader: { format: e.CLIENT_CERT_HEADER, nginxHeader: e.CLIENT_CERT_NGINX_HEADER.toLowerCase() },
    keysReloadIntervalSeconds: e.KEYS_RELOAD_INTERVAL,
    ttl: {
      accessToken: e.ACCESS_TOKEN_TTL,
      idToken: e.ID_TOKEN_TTL,
      refreshToken: e.REFRESH_TOKEN_TTL,
      clientCredentials: e.CLIENT_CREDENTIALS_TTL,
      session: e.SESSION_TTL,
      interaction: e.INTERACTION_TTL,
      grant: e.GRANT_TTL,
      authorizationCode: e.AUTHORIZATION_CODE_TTL,
    },
    login: { maxFailures: e.LOGIN_MAX_FAILURES, lockSeconds: e.LOGIN_LOCK_SECONDS },
    webauthn: {
      rpId: e.WEBAUTHN_RP_ID ?? issuerUrl.hostname,
      rpName: e.WEBAUTHN_RP_NAME,
      origins: e.WEBAUTHN_ORIGINS ? e.WEBAUTHN_ORIGINS.split(',').map((o) => o.trim()).filter(Boolean) : [issuerUrl.origin],
      challengeTtlSeconds: e.WEBAUTHN_CHALLENGE_TTL,
      mfaAtLogin: e.MFA_AT_LOGIN,
      recentLoginSeconds: e.RECENT_LOGIN_SECONDS,
    },
    breakGlass: {
      ttlSeconds: e.BREAK_GLASS_TTL,
      dailyLimit: e.BREAK_GLASS_DAILY_LIMIT,
      webhook: e.BREAK_GLASS_WEBHOOK_URL ? { url: e.BREAK_GLASS_WEBHOOK_URL, secret: e.BREAK_GLASS_WEBHOOK_SECRET ?? '' } : undefined,
    },
    redisUrl: e.REDIS_URL,
    rateLimit: {
      enabled: e.RATE_LIMIT_ENABLED,
      client: { points: e.RATE_LIMIT_CLIENT_POINTS, windowSeconds: e.RATE_LIMIT_CLIENT_WINDOW },
      loginIp: { points: e.RATE_LIMIT_LOGIN_IP_POINTS, windowSeconds: e.RATE_LIMIT_LOGIN_IP_WINDOW },
      loginUser: { points: e.RATE_LIMIT_LOGIN_USER_POINTS, windowSeconds: e.RATE_LIMIT_LOGIN_USER_WINDOW },
    },
  };

  const { rpId, origins } = config.webauthn;
  for (const origin of origins) {
    const url = URL.canParse(origin) ? new URL(origin) : undefined;
    // WebAuthn binds a passkey to the RP id: every accepted origin must be that domain or under it.
    if (!url || url.origin !== origin || url.protocol !== 'https:' || !(url.hostname === rpId || url.hostname.endsWith(`.${rpId}`))) {
      throw new ConfigError(`WEBAUTHN_ORIGINS: ${origin.slice(0, 100)} is not an https origin on the RP id ${rpId}`);
    }
  }
  if (config.env === 'production') assertProductionSafe(config);
  return config;
}

function defaultMtlsBase(issuer: URL, mtlsPort: number): string {
  const url = new URL(issuer.href);
  url.port = String(mtlsPort);
  return url.href;
}

function assertProductionSafe(config: Config): void {
  if (!config.issuer.startsWith('https://')) {
    throw new ConfigError('production requires an https:// ISSUER');
  }
  if (!config.mtlsBaseUrl.startsWith('https://')) {
    throw new ConfigError('production requires an https:// MTLS_BASE_URL');
  }
  if (!config.databaseUrl) {
    throw new ConfigError('production requires DATABASE_URL (the embedded database is for development only)');
  }
  if (config.breakGlass.webhook && !config.breakGlass.webhook.url.startsWith('https://')) {
    throw new ConfigError('production requires an https:// BREAK_GLASS_WEBHOOK_URL');
  }
  if (config.demoSeed) {
    throw new ConfigError('production refuses DEMO_SEED=true');
  }
  if (config.seedFile) {
    // Seeding a production database is an administrative act: `npm run cli -- seed FILE`, audited.
    throw new ConfigError('production refuses SEED_FILE (use `npm run cli -- seed FILE`)');
  }
}

/** The longest time a token signed by a key can stay valid: how long a retired key stays published. */
export function maxSignedTokenLifetime(config: Config): number {
  // Resource servers may set their own access token lifetime, up to this cap (see resource-servers.ts).
  return Math.max(config.ttl.accessToken, config.ttl.idToken, config.ttl.clientCredentials, MAX_ACCESS_TOKEN_TTL);
}
