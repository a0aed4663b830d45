// Composition: database -> migrations -> keys -> provider -> koa app -> the two HTTPS listeners.
import { constants } from 'node:crypto';
import type http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';

import type { JWK } from 'jose';
import type Provider from 'oidc-provider';

import { LoginThrottle } from './accounts/login-throttle.ts';
import { warmUpPasswordHashing } from './accounts/passwords.ts';
import { auditResponses } from './audit/http-events.ts';
import { deriveAuditKeys } from './audit/keys.ts';
import { AuditLog } from './audit/log.ts';
import { StorageAudit } from './audit/storage-events.ts';
import { countUsers } from './accounts/users.ts';
import { countClients } from './clients/register.ts';
import type { Config } from './config.ts';
import { openDb, type Db } from './db/index.ts';
import { openChangeFeed } from './db/change-feed.ts';
import { migrate } from './db/migrate.ts';
import { ReadCache, withReadCache } from './db/read-cache.ts';
import { createApp, type ProviderHandle } from './http/app.ts';
import { interactionRoutes } from './interactions/routes.ts';
import { accountRoutes } from './interactions/account.ts';
import { adminConsoleRoutes } from './admin/console/routes.ts';
import { ACCOUNT_CLIENT_ID } from './oidc/account-client.ts';
import { readRequired } from './keystore/files.ts';
import { loadOrCreateTls, type TlsMaterial } from './keystore/pki.ts';
import { clientCertificates, loadTrustAnchors, type TrustAnchors } from './mtls/index.ts';
import { assertNotDev, loadOrCreateSecrets, type ServerSecrets } from './keystore/secrets.ts';
import { loadOrCreateSigningKeys, nextKeyChange, providerJwks, signingKeysVersion } from './keystore/signing-keys.ts';
import type { Logger } from './log.ts';
import { sweepExpired } from './oidc/adapter.ts';
import { JwtAccessTokenRegistry } from './oidc/jwt-access-tokens.ts';
import { buildProvider, NAMED_SCOPES, CLIENT_AUTH_METHODS } from './oidc/provider.ts';
import { sweepExpiredLaunchData } from './smart/launch-contexts.ts';
import { sweepExpiredChallenges } from './mfa/challenges.ts';
import { breakGlassNotifier } from './break-glass/notification.ts';
import { adminAuthenticator } from './admin/auth.ts';
import { sweepIdempotencyKeys } from './admin/idempotency.ts';
import { adminApiRoutes } from './admin/router.ts';
import { ourAccessTokens } from './oidc/our-tokens.ts';
import { WebhookDispatcher } from './notifications/webhook.ts';
import { smartConfigurationRoute } from './smart/smart-configuration.ts';
import { clientRateLimit } from './ratelimit/client-limit.ts';
import { createRateLimiters } from './ratelimit/limiters.ts';
import { applySeed, readSeedFile, type SeedResult } from './seed/seed.ts';

export const DEMO_SEED_FILE = fileURLToPath(new URL('../seeds/demo.json', import.meta.url));
const SWEEP_INTERVAL_MS = 60_000;

export interface ServerOptions {
  config: Config;
  logger: Logger;
  /** A database opened by the caller (tests); it is not closed by stop(). */
  db?: Db;
}

export interface RunningServer {
  issuer: string;
  mtlsBaseUrl: string;
  port: number;
  mtlsPort: number;
  db: Db;
  tls: TlsMaterial;
  secrets: ServerSecrets;
  seeded: SeedResult | undefined;
  /** The demo seed (public passwords) was loaded: print the try-it guide. */
  seededDemo: boolean;
  audit: AuditLog;
  provider(): Provider;
  /** Re-reads the signing keys now (the timer does it every KEYS_RELOAD_INTERVAL seconds). */
  reloadKeys(): Promise<boolean>;
  stop(): Promise<void>;
}

export class StartupError extends Error {
  override name = 'StartupError';
}

function listen(server: https.Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function closeServer(server: https.Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeIdleConnections();
    // In-flight requests get a moment to finish; then the connections are cut.
    setTimeout(() => server.closeAllConnections(), 5_000).unref();
  });
}

/** An issuer written with port 0 (tests) takes the port its listener actually got. */
function withPort(base: string, actual: number): string {
  const url = new URL(base);
  if (url.port !== '0') return base;
  url.port = String(actual);
  return url.href.replace(/\/+$/, '');
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const { config, logger } = options;
  const production = config.env === 'production';
  const database = options.db ?? await openDb(config);
  const ownsDb = !options.db;
  // A start that fails leaves no open database behind (PGlite would keep its directory locked).
  const failStart = async (message: string): Promise<never> => {
    if (ownsDb) await database.close().catch(() => {});
    throw new StartupError(message);
  };
  await database.ping().catch((err: Error) => failStart(
    `database unreachable (${config.databaseUrl ? 'DATABASE_URL' : 'embedded'}): ${(err.cause as Error | undefined)?.message ?? err.message}`,
  ));
  const applied = await migrate(database).catch((err: Error) => failStart(err.message));
  if (applied.length) logger.info({ migrations: applied }, 'database migrated');
  // Configuration read on every request (clients, resource servers, policies, users) is cached while
  // the database announces its changes (src/db/read-cache.ts); all of the server uses this Db.
  const changeFeed = await openChangeFeed(database, logger);
  const db = withReadCache(database, new ReadCache(changeFeed));
  // The database itself: PGlite's in-memory counters are shared per Db object (see limiters.ts).
  const rateLimiters = await createRateLimiters(config, database, { logger }).catch((err: Error) => failStart(err.message));
  logger.info({ backend: rateLimiters.backend, enabled: rateLimiters.enabled }, 'rate limits');

  const secrets = await loadOrCreateSecrets(config.keysDir, { allowGenerate: !production });
  const tls = await loadOrCreateTls(config.keysDir, { allowGenerate: !production });
  let keySet = await loadOrCreateSigningKeys(config.keysDir, { allowGenerate: !production });
  if (production) {
    assertNotDev('secrets', secrets.dev);
    assertNotDev('TLS certificates', tls.dev);
    assertNotDev('signing keys', keySet.dev);
  }

  // Listeners open before the provider exists (its issuer needs their ports); until then, 503.
  let callback: http.RequestListener | undefined;
  const requestListener: http.RequestListener = (req, res) => {
    if (!callback) {
      res.statusCode = 503;
      res.end();
      return;
    }
    callback(req, res);
  };
  const clientCaPem = config.clientCaFile ? await readRequired(config.clientCaFile, ' (CLIENT_CA_FILE)') : tls.clientCaPem;
  let clientTrust: TrustAnchors;
  try {
    clientTrust = loadTrustAnchors(clientCaPem);
  } catch (err) {
    return failStart(`client CA bundle${config.clientCaFile ? ` ${config.clientCaFile}` : ''}: ${(err as Error).message}`);
  }
  // No TLS 1.2 renegotiation: a connection's client certificate never changes after its handshake
  // (src/mtls/middleware.ts reads it once per connection), and renegotiation is a CPU-exhaustion lever.
  const tlsOptions = { cert: tls.certPem, key: tls.keyPem, minVersion: 'TLSv1.2' as const, secureOptions: constants.SSL_OP_NO_RENEGOTIATION };
  const browserServer = https.createServer(tlsOptions, requestListener);
  // The mTLS listener asks for a client certificate but lets oidc-provider decide what it is worth,
  // so a missing or bad certificate gets an OAuth error instead of a failed handshake.
  const mtlsServer = https.createServer({ ...tlsOptions, ca: clientCaPem, requestCert: true, rejectUnauthorized: false }, requestListener);
  const port = await listen(browserServer, config.port, config.host);
  const mtlsPort = await listen(mtlsServer, config.mtlsPort, config.host);
  const issuer = withPort(config.issuer, port);
  const mtlsBaseUrl = withPort(config.mtlsBaseUrl, mtlsPort);
  // Origins written with port 0 (tests) follow the listener too.
  const webauthn = { ...config.webauthn, origins: config.webauthn.origins.map((o) => new URL(withPort(o, port)).origin) };
  const effective: Config = { ...config, issuer, mtlsBaseUrl, webauthn };
  const relyingParty = { rpId: webauthn.rpId, rpName: webauthn.rpName, origins: webauthn.origins, challengeTtlSeconds: webauthn.challengeTtlSeconds };

  const audit = new AuditLog(db, deriveAuditKeys(secrets.auditKey), logger);
  const storageAudit = new StorageAudit(audit);
  const jwtAccessTokens = new JwtAccessTokenRegistry(db, storageAudit);
  const build = (): ProviderHandle => {
    const jwks = providerJwks(keySet);
    const built = buildProvider({
      config: effective, db, logger, jwks, cookieKeys: secrets.cookieKeys, clientSecretKey: secrets.clientSecretKey, storageAudit,
      jwtAccessTokens, clientTrust, audit,
    });
    return { ...built, publicJwks: { keys: jwks.keys.map(publicJwk) } };
  };
  let current = build();
  // Token lookups for our own routes (admin API), rebuilt when the provider is (key rotation).
  const tokenLookups = new WeakMap<ProviderHandle, ReturnType<typeof ourAccessTokens>>();
  const ourTokens = async () => {
    let find = tokenLookups.get(current);
    if (!find) tokenLookups.set(current, find = ourAccessTokens({ provider: current.provider, issuer, jwtAccessTokens, jwks: providerJwks(keySet), audit }));
    return find;
  };
  let keysVersion = await signingKeysVersion(config.keysDir);

  let seeded: SeedResult | undefined;
  const seedFile = config.seedFile ?? (config.demoSeed ? DEMO_SEED_FILE : undefined);
  if (seedFile && await countUsers(db) === 0 && await countClients(db) === 0) {
    seeded = await applySeed(db, current.provider, secrets.clientSecretKey, await readSeedFile(seedFile), audit);
    logger.info({ seedFile, users: seeded.users.length, clients: seeded.clients.length }, 'empty database seeded');
  }

  // The privacy office's webhook: queued with each emergency access, delivered and retried in the background.
  const webhooks = config.breakGlass.webhook
    ? new WebhookDispatcher({ db, secret: config.breakGlass.webhook.secret, logger, audit })
    : undefined;
  webhooks?.start();
  const breakGlassNotifications = breakGlassNotifier(config.breakGlass.webhook, webhooks);

  const throttle = new LoginThrottle(db, secrets.auditKey, {
    maxFailures: config.login.maxFailures, lockSeconds: config.login.lockSeconds, baseDelayMs: 250, maxDelayMs: 4_000,
  });
  // The unknown-user dummy hash exists before the first login, so its timing tells nothing.
  await warmUpPasswordHashing();
  callback = createApp({
    db,
    logger,
    issuer,
    trustProxy: config.trustProxy,
    trustedProxies: config.trustedProxies,
    cookieKeys: secrets.cookieKeys,
    current: () => current,
    early: [clientCertificates({
      fromHeaders: config.clientCertHeader.format !== 'none',
      headerFormat: config.clientCertHeader.format === 'nginx' ? 'nginx' : 'rfc9440',
      nginxHeader: config.clientCertHeader.nginxHeader,
      trustedProxies: config.trustedProxies,
      // A client that sends its own certificate header is trying to borrow someone's identity.
      onUntrustedHeader: async (_ctx, headers) => void await audit.record({
        type: 'mtls.untrusted_certificate_header', outcome: 'denied', severity: 'warning', rule: 'trusted_proxies_only', details: { headers },
      }),
      onMalformedHeader: async (_ctx, headers) => void await audit.record({
        type: 'mtls.malformed_certificate_header', outcome: 'failure', severity: 'warning', rule: 'certificate_header_syntax', details: { headers },
      }),
    })],
    beforeProvider: [
      // First: a refused request reaches neither the audit of answers nor the provider.
      clientRateLimit(rateLimiters, audit),
      auditResponses(audit, (err) => logger.error({ err: (err as Error).message }, 'audit write failed')),
    ],
    routes: [smartConfigurationRoute({
      issuer, mtlsBaseUrl, db, namedScopes: NAMED_SCOPES, tokenEndpointAuthMethods: CLIENT_AUTH_METHODS,
    }), interactionRoutes({
      getProvider: () => current.provider, db, audit, passwordLogin: { db, throttle }, rateLimiters, logger, grantTtlSeconds: config.ttl.grant,
      passkeys: { db, audit, rp: relyingParty, mfaAtLogin: webauthn.mfaAtLogin }, accountClientId: ACCOUNT_CLIENT_ID,
      breakGlass: {
        db, audit, rp: relyingParty, ttlSeconds: config.breakGlass.ttlSeconds, dailyLimit: config.breakGlass.dailyLimit,
        ...breakGlassNotifications,
      },
    }), adminApiRoutes({
      db, audit, getProvider: () => current.provider, clientSecretKey: secrets.clientSecretKey, loginThrottle: throttle,
      authenticate: adminAuthenticator({ db, getProvider: () => current.provider, findToken: (value) => ourTokens().then((find) => find(value)) }),
    }), accountRoutes({
      getProvider: () => current.provider, db, audit, issuer, rp: relyingParty, recentLoginSeconds: webauthn.recentLoginSeconds,
      cookieKeys: secrets.cookieKeys,
    }), adminConsoleRoutes({
      getProvider: () => current.provider, db, audit, issuer, cookieKeys: secrets.cookieKeys, clientSecretKey: secrets.clientSecretKey,
    })],
  }).callback();

  // The provider is rebuilt when the key file changes, and when its schedule says a key starts or
  // stops signing (a rotation publishes new keys ahead of their use).
  let keysChangeAt = nextKeyChange(keySet);
  const reloadKeys = async () => {
    const version = await signingKeysVersion(config.keysDir);
    if (version === keysVersion) {
      if (!keysChangeAt || Date.now() < keysChangeAt.getTime()) return false;
      current = build();
      keysChangeAt = nextKeyChange(keySet);
      logger.info({ signing: current.publicJwks.keys.slice(0, 2).map((k) => k.kid) }, 'signing keys switched as scheduled');
      return true;
    }
    const reloaded = await loadOrCreateSigningKeys(config.keysDir, { allowGenerate: false });
    if (production) assertNotDev('signing keys', reloaded.dev);
    keySet = reloaded;
    current = build();
    keysVersion = version;
    keysChangeAt = nextKeyChange(keySet);
    logger.info({ kids: keySet.keys.map((k) => k.kid) }, 'signing keys reloaded');
    return true;
  };
  const timers = [
    setInterval(() => { reloadKeys().catch((err: Error) => logger.warn({ err: err.message }, 'signing key reload failed')); },
      config.keysReloadIntervalSeconds * 1000),
    setInterval(() => {
      const warn = (what: string) => (err: Error) => logger.warn({ err: err.message }, `${what} sweep failed`);
      sweepExpired(db).catch(warn('expired rows'));
      throttle.sweep().catch(warn('login throttle'));
      sweepExpiredLaunchData(db).catch(warn('launch context'));
      sweepExpiredChallenges(db).catch(warn('webauthn challenge'));
      sweepIdempotencyKeys(db).catch(warn('idempotency key'));
    }, SWEEP_INTERVAL_MS),
  ];
  for (const timer of timers) timer.unref();

  return {
    issuer,
    mtlsBaseUrl,
    port,
    mtlsPort,
    db,
    tls,
    secrets,
    seeded,
    seededDemo: seeded !== undefined && seedFile === DEMO_SEED_FILE,
    audit,
    provider: () => current.provider,
    reloadKeys,
    async stop() {
      for (const timer of timers) clearInterval(timer);
      await webhooks?.stop();
      await Promise.all([closeServer(browserServer), closeServer(mtlsServer)]);
      await rateLimiters.close();
      await changeFeed.close();
      if (ownsDb) await database.close();
    },
  };
}

function publicJwk(jwk: JWK): Record<string, unknown> {
  const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pub } = jwk;
  return pub;
}
