// The server of tests/db-outage.test.ts, in its own process: the real startServer on the disposable
// cluster in DATABASE_URL, seeded with the benchmark's clients, user and exchange policy, talking to the
// test over bench/lib/ipc.ts. Everything the test later searches for goes to stdout/stderr as JSON
// lines: provider `server_error` events (oidc-provider's 500s), why token requests failed, and any
// uncaught exception or unhandled rejection (which then still ends the process, as in production).
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import { applySeed } from '../../src/seed/seed.ts';
import { startServer } from '../../src/server.ts';
import { benchSeed, type ServerInfo } from '../../bench/lib/fixtures.ts';
import { serveAsChild } from '../../bench/lib/ipc.ts';
import { CRASH_MARKERS } from './outage-markers.ts';

// Only ever a forked child of the test (it would otherwise start a server on whatever DATABASE_URL says).
if (!process.send) throw new Error('tests/support/outage-server.ts runs as a child process of tests/db-outage.test.ts');

process.on('uncaughtExceptionMonitor', (err, origin) => {
  // Written synchronously: the process is about to die and pino's stream may not flush.
  process.stderr.write(`${JSON.stringify({ level: 60, msg: CRASH_MARKERS.uncaught, origin, err: err?.stack ?? String(err) })}\n`);
});

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
if (!config.databaseUrl) throw new Error('outage-server needs DATABASE_URL (the disposable cluster)');
const logger = createLogger(config.logLevel);
const server = await startServer({ config, logger });
const provider = server.provider();
provider.on('server_error', (_ctx: unknown, err: Error) => {
  logger.error({ err: { name: err.name, message: err.message, stack: err.stack } }, CRASH_MARKERS.providerServerError);
});
const failed = (event: string) => (_ctx: unknown, err: Error & { error_detail?: string; status?: number }) => {
  logger.warn({ event, err: err.message, status: err.status, detail: err.error_detail }, 'outage-server: request failed');
};
provider.on('grant.error', failed('grant.error'));
provider.on('introspection.error', failed('introspection.error'));
// A second server on the same database (OUTAGE_SEED=false) finds it seeded by the first.
if (process.env.OUTAGE_SEED !== 'false') await applySeed(server.db, provider, server.secrets.clientSecretKey, benchSeed(0));

const info: ServerInfo = {
  issuer: server.issuer,
  mtlsBaseUrl: server.mtlsBaseUrl,
  tls: { certPem: server.tls.certPem, keyPem: server.tls.keyPem, caPem: server.tls.caPem, clientCaPem: server.tls.clientCaPem },
  pid: process.pid,
};
serveAsChild(info, () => server.stop());
