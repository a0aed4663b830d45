// Entry point: start the server, print how to try it, stop cleanly on SIGTERM/SIGINT.
import path from 'node:path';

import { ConfigError, loadConfig } from './config.ts';
import { DatabaseInUseError } from './db/pglite.ts';
import { KeyMaterialError } from './keystore/secrets.ts';
import { createLogger } from './log.ts';
import { startServer, StartupError } from './server.ts';
import { DEMO_CLIENT_CERTIFICATES, tryItGuide } from './try-it.ts';
import { ensureDevClientCertificate } from './keystore/pki.ts';

async function main() {
  const config = loadConfig();
  const logger = createLogger(config.logLevel);
  const server = await startServer({ config, logger });
  logger.info({ issuer: server.issuer, mtls: server.mtlsBaseUrl, database: server.db.kind }, 'listening');
  if (server.seededDemo) {
    // Client certificates for the demo clients, so the guide's mTLS calls work as printed.
    for (const name of DEMO_CLIENT_CERTIFICATES) await ensureDevClientCertificate(config.keysDir, name);
    process.stdout.write(tryItGuide(server, path.relative(process.cwd(), config.keysDir) || '.'));
  }

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    server.stop().then(() => process.exit(0), () => process.exit(1));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  // One line, no stack: configuration and start-up problems are the operator's to fix.
  const known = err instanceof ConfigError || err instanceof StartupError || err instanceof KeyMaterialError
    || err instanceof DatabaseInUseError;
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`clinical-authz: ${known ? '' : 'failed to start: '}${message}\n`);
  process.exit(1);
});
