// Baseline: koa hello world over HTTPS with the server's certificate (the floor under JWKS and discovery).
import https from 'node:https';
import type { AddressInfo } from 'node:net';

import Koa from 'koa';

import type { TlsSetup } from './lib/fixtures.ts';
import { serveAsChild } from './lib/ipc.ts';

const tls = JSON.parse(process.env.BENCH_TLS ?? 'null') as TlsSetup | null;
if (!tls) throw new Error('baseline-koa needs BENCH_TLS');

const app = new Koa();
app.use((ctx) => {
  ctx.body = 'hello world';
});
const server = https.createServer({ cert: tls.certPem, key: tls.keyPem, minVersion: 'TLSv1.2' }, app.callback());
await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address() as AddressInfo;

serveAsChild({ baseUrl: `https://localhost:${port}`, pid: process.pid }, () => new Promise<void>((resolve) => {
  server.close(() => resolve());
  server.closeAllConnections();
}));
