// One process of the scale-out cluster (tests/support/cluster.ts forks three of these): the real
// startServer from the environment the parent hands over (same ISSUER, MTLS_BASE_URL, KEYS_DIR and
// DATABASE_URL in every process, listeners on random ports). The first process seeds the database.
//
// IPC with the parent: `ready` (ports, pid) once listening; on `stop` the server stops, the IPC channel
// is closed and the process is expected to end by itself: anything still holding the event loop open
// (a timer, a socket, a pool) is a shutdown bug, reported on stderr with exit code 3.
import { loadConfig } from '../../src/config.ts';
import { createLogger } from '../../src/log.ts';
import { applySeed } from '../../src/seed/seed.ts';
import { startServer, type RunningServer } from '../../src/server.ts';
import { CLUSTER_EXTRA_SEED, type NodeInfo, type ParentMessage } from './cluster.ts';
import { TEST_SEED } from './test-server.ts';

const NATURAL_EXIT_MS = 10_000;

const send = (msg: unknown) => new Promise<void>((resolve) => {
  if (!process.send) return resolve();
  process.send(msg, undefined, {}, () => resolve());
});

async function main(): Promise<void> {
  const config = loadConfig(process.env);
  if (!config.databaseUrl) throw new Error('cluster-node needs DATABASE_URL: the processes share one PostgreSQL database');
  const logger = createLogger(process.env.TEST_LOG_LEVEL ?? config.logLevel);
  const server: RunningServer = await startServer({ config, logger });
  if (process.env.CLUSTER_SEED === '1') {
    await applySeed(server.db, server.provider(), server.secrets.clientSecretKey, TEST_SEED);
    await applySeed(server.db, server.provider(), server.secrets.clientSecretKey, CLUSTER_EXTRA_SEED);
  }

  let stopping = false;
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    try {
      await server.stop();
    } catch (err) {
      console.error(`cluster-node ${process.pid}: stop failed: ${(err as Error).message}`);
      process.exitCode = 2;
    }
    // Only reported if something keeps the process alive after stop() (the timer itself does not).
    setTimeout(() => {
      const handles = process.getActiveResourcesInfo();
      console.error(`cluster-node ${process.pid}: still running ${NATURAL_EXIT_MS} ms after stop: ${handles.join(', ')}`);
      process.exit(3);
    }, NATURAL_EXIT_MS).unref();
    if (process.connected) {
      await send({ type: 'stopped' });
      process.disconnect();
    }
  };
  process.on('message', (msg: ParentMessage) => {
    if (msg.type === 'stop') void stop();
  });
  // The parent went away (test runner killed): do not linger.
  process.on('disconnect', () => void stop());

  const info: NodeInfo = {
    pid: process.pid,
    port: server.port,
    mtlsPort: server.mtlsPort,
    issuer: server.issuer,
    mtlsBaseUrl: server.mtlsBaseUrl,
  };
  await send({ type: 'ready', info });
}

main().catch((err: Error) => {
  console.error(`cluster-node ${process.pid}: ${err.stack ?? err.message}`);
  process.exit(1);
});
