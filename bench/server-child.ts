// The server under test, in its own process: the real startServer (both HTTPS listeners, PostgreSQL
// from DATABASE_URL, audit and rate limits at their defaults unless the environment says otherwise),
// seeded with the benchmark's clients, user and exchange policy.
import { loadConfig } from '../src/config.ts';
import { createLogger } from '../src/log.ts';
import { applySeed } from '../src/seed/seed.ts';
import { startServer } from '../src/server.ts';
import { benchSeed, type ServerInfo } from './lib/fixtures.ts';
import { serveAsChild } from './lib/ipc.ts';

const config = loadConfig({
  NODE_ENV: 'development',
  LOG_LEVEL: 'warn',
  ...process.env,
  ISSUER: 'https://localhost:0',
  HOST: '127.0.0.1',
  PORT: '0',
  MTLS_PORT: '0',
  DEMO_SEED: 'false',
});
if (!config.databaseUrl) throw new Error('server-child needs DATABASE_URL (the benchmark database)');
const logger = createLogger(config.logLevel);
const server = await startServer({ config, logger });
// Why a request failed, in bench/results/server.log (oidc-provider keeps the detail out of the answer).
const failed = (event: string) => (_ctx: unknown, err: Error & { error_detail?: string }) => {
  logger.warn({ event, err: err.message, detail: err.error_detail }, 'bench: request failed');
};
server.provider().on('grant.error', failed('grant.error'));
server.provider().on('introspection.error', failed('introspection.error'));
await applySeed(server.db, server.provider(), server.secrets.clientSecretKey, benchSeed(Number(process.env.BENCH_LOGIN_USERS ?? 32)));

const info: ServerInfo = {
  issuer: server.issuer,
  mtlsBaseUrl: server.mtlsBaseUrl,
  tls: { certPem: server.tls.certPem, keyPem: server.tls.keyPem, caPem: server.tls.caPem, clientCaPem: server.tls.clientCaPem },
  pid: process.pid,
};
serveAsChild(info, () => server.stop());
