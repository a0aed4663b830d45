// Several processes of the server as one system, for the scale-out test: N child processes (each the
// real startServer, tests/support/cluster-node.ts) on one PostgreSQL database and one KEYS_DIR, behind a
// TCP pass-through proxy that owns the issuer's ports. TLS ends in the processes, so client
// certificates (mTLS) reach them as they would behind haproxy in `mode tcp`. The test decides which
// process the next connections go to (`route`); every request opens its own connection (no
// keep-alive), so a route applies from the next request on, and the proxy counts what each process got.
import { fork, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { Agent, fetch as undiciFetch, type RequestInit } from 'undici';

import { TOKEN_EXCHANGE_GRANT } from '../../src/exchange/decision.ts';
import { ensureDevClientCertificate, loadOrCreateTls, type IssuedClientCertificate } from '../../src/keystore/pki.ts';
import { loadOrCreateSecrets } from '../../src/keystore/secrets.ts';
import { loadOrCreateSigningKeys } from '../../src/keystore/signing-keys.ts';
import { SeedSchema } from '../../src/seed/seed.ts';
import { devCa, issueClientCertificate, type KeyPairPem } from './pki.ts';
import { createTestDb, type TestDb } from './test-db.ts';
import { APP, FHIR, type TestServer } from './test-server.ts';

/** The AI orchestrator of DESIGN.md §2: a workload authenticated by its certificate (tls_client_auth). */
export const ORCHESTRATOR = 'orchestrator';

/** Applied by the first process after TEST_SEED: the orchestrator and its exchange policy. */
export const CLUSTER_EXTRA_SEED = SeedSchema.parse({
  clients: [{
    client_id: ORCHESTRATOR, token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: `CN=${ORCHESTRATOR}`,
    grant_types: [TOKEN_EXCHANGE_GRANT], response_types: [], redirect_uris: [],
  }],
  exchangePolicies: [
    { actor: ORCHESTRATOR, audience: FHIR, subjectClients: [APP.client_id], scope: 'patient/Observation.rs' },
  ],
});

export interface NodeInfo {
  pid: number;
  port: number;
  mtlsPort: number;
  issuer: string;
  mtlsBaseUrl: string;
}

export type ParentMessage = { type: 'stop' };
type ChildMessage = { type: 'ready'; info: NodeInfo } | { type: 'stopped' };

export interface NodeExit {
  node: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** From the stop request to the process's exit. */
  ms: number;
  stderr: string;
}

interface ClusterNode {
  info: NodeInfo;
  stop(): Promise<NodeExit>;
  kill(): void;
}

const STOP_TIMEOUT_MS = 20_000;
const STDERR_KEEP = 16 * 1024;

async function startNode(index: number, env: NodeJS.ProcessEnv): Promise<ClusterNode> {
  const child: ChildProcess = fork(new URL('./cluster-node.ts', import.meta.url), [], {
    execArgv: ['--import', 'tsx'],
    env,
    stdio: ['ignore', process.env.TEST_LOG_LEVEL ? 'inherit' : 'ignore', 'pipe', 'ipc'],
  });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => {
    stderr = (stderr + d).slice(-STDERR_KEEP);
    if (process.env.TEST_LOG_LEVEL) process.stderr.write(d);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  const info = await new Promise<NodeInfo>((resolve, reject) => {
    child.on('message', (msg: ChildMessage) => {
      if (msg.type === 'ready') resolve(msg.info);
    });
    void exited.then(({ code, signal }) => reject(new Error(`cluster node ${index} exited (${code ?? signal}) before it was ready:\n${stderr}`)));
  });
  let stopping: Promise<NodeExit> | undefined;
  return {
    info,
    stop() {
      stopping ??= (async () => {
        const started = performance.now();
        if (child.exitCode === null && child.signalCode === null && child.connected) child.send({ type: 'stop' } satisfies ParentMessage);
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        const { code, signal } = await exited;
        clearTimeout(timer);
        return { node: index, code, signal, ms: Math.round(performance.now() - started), stderr };
      })();
      return stopping;
    },
    kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/**
 * A TCP pass-through proxy on one address per listener (issuer, mTLS); each accepted connection goes
 * to the same listener of the process `route` names (round robin when it names several).
 */
class PassThroughProxy {
  private readonly servers: net.Server[] = [];
  private readonly sockets = new Set<net.Socket>();
  private backends: { port: number; mtlsPort: number }[] = [];
  private order: number[] = [0];
  private turn = 0;
  /** Connections handed to each process so far, both listeners together. */
  readonly counts: number[] = [];

  async listen(): Promise<{ port: number; mtlsPort: number }> {
    const [port, mtlsPort] = await Promise.all([this.listenOne('port'), this.listenOne('mtlsPort')]);
    return { port, mtlsPort };
  }

  setBackends(backends: { port: number; mtlsPort: number }[]): void {
    this.backends = backends;
    this.counts.length = 0;
    this.counts.push(...backends.map(() => 0));
  }

  route(nodes: number[]): void {
    if (nodes.length === 0 || nodes.some((n) => !Number.isInteger(n) || n < 0 || n >= this.backends.length)) {
      throw new RangeError(`route: no such node in ${JSON.stringify(nodes)}`);
    }
    this.order = nodes;
    this.turn = 0;
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await Promise.all(this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }

  private async listenOne(which: 'port' | 'mtlsPort'): Promise<number> {
    const server = net.createServer({ allowHalfOpen: true }, (client) => this.forward(client, which));
    this.servers.push(server);
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return (server.address() as net.AddressInfo).port;
  }

  private forward(client: net.Socket, which: 'port' | 'mtlsPort'): void {
    const node = this.order[this.turn++ % this.order.length]!;
    const backend = this.backends[node];
    if (!backend) {
      client.destroy();
      return;
    }
    this.counts[node]! += 1;
    const upstream = net.connect({ port: backend[which], host: '127.0.0.1', allowHalfOpen: true });
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => {
        this.sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  }
}

export interface Cluster {
  /** The issuer every process serves: the proxy's address. */
  issuer: string;
  mtlsBaseUrl: string;
  keysDir: string;
  caPem: string;
  testDb: TestDb;
  nodes: NodeInfo[];
  /** The environment the processes got (also what the admin CLI needs to act on this deployment). */
  env: NodeJS.ProcessEnv;
  /** Presented by `fetch` (and `dispatcher`) to listeners that ask: the dev client certificate of test-app. */
  clientCert: IssuedClientCertificate;
  /** tls_client_auth certificate of the orchestrator (CN=orchestrator, dev client CA). */
  orchestratorCert: KeyPairPem;
  /** Trusts the dev CA, presents clientCert, one connection per request (no keep-alive). */
  dispatcher: Agent;
  /** An agent presenting `cert` (or none), one connection per request; closed with the cluster. */
  agent(cert?: KeyPairPem): Agent;
  fetch(url: string | URL, init?: RequestInit): ReturnType<typeof undiciFetch>;
  /** The URL of an endpoint: token, introspection and revocation at the mTLS alias, the rest at the issuer. */
  endpoint(path: string): string;
  /** The next connections go to these processes (by index), in turn. */
  route(...nodes: number[]): void;
  /** Connections the proxy has handed to each process so far. */
  connections(): number[];
  /** The cluster as the TestServer the login and relying-party helpers take (issuer, fetch, dispatcher, endpoint only). */
  asTestServer(): TestServer;
  /** Asks every process to stop; resolves with how each one ended. */
  stopNodes(): Promise<NodeExit[]>;
  /** Stops everything that is left (processes, proxy, agents), drops the database, removes the keys. Idempotent. */
  close(): Promise<void>;
}

export interface ClusterOptions {
  size?: number;
  /** Extra environment for every process (rate limits, TTLs...). */
  env?: Record<string, string>;
}

export async function startCluster(options: ClusterOptions = {}): Promise<Cluster> {
  if (!process.env.DATABASE_URL) throw new Error('a cluster needs PostgreSQL (DATABASE_URL): processes cannot share the embedded database');
  const size = options.size ?? 3;
  const keysDir = await fs.mkdtemp(path.join(os.tmpdir(), 'authz-cluster-'));
  const proxy = new PassThroughProxy();
  const agents: Agent[] = [];
  const nodes: ClusterNode[] = [];
  let testDb: TestDb | undefined;
  let closed = false;

  const close = async () => {
    if (closed) return;
    closed = true;
    await proxy.close();
    await Promise.all(nodes.map((n) => n.stop()));
    await Promise.all(agents.map((a) => a.close().catch(() => {})));
    await testDb?.drop();
    await fs.rm(keysDir, { recursive: true, force: true });
  };

  try {
    // The key material every process shares, created once before any of them starts.
    await loadOrCreateSecrets(keysDir, { allowGenerate: true });
    const tls = await loadOrCreateTls(keysDir, { allowGenerate: true });
    await loadOrCreateSigningKeys(keysDir, { allowGenerate: true });
    const clientCert = await ensureDevClientCertificate(keysDir, 'test-client');
    const orchestratorCert = await issueClientCertificate(await devCa(keysDir), ORCHESTRATOR);
    testDb = await createTestDb();

    const { port, mtlsPort } = await proxy.listen();
    const issuer = `https://localhost:${port}`;
    const mtlsBaseUrl = `https://localhost:${mtlsPort}`;
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      // Not a test file itself: a child of the test runner must not report to it.
      NODE_TEST_CONTEXT: undefined,
      NODE_ENV: 'test',
      LOG_LEVEL: 'silent',
      ISSUER: issuer,
      MTLS_BASE_URL: mtlsBaseUrl,
      HOST: '127.0.0.1',
      PORT: '0',
      MTLS_PORT: '0',
      KEYS_DIR: keysDir,
      DATA_DIR: path.join(keysDir, 'data'),
      DATABASE_URL: testDb.url,
      DATABASE_POOL_SIZE: '5',
      DEMO_SEED: 'false',
      SEED_FILE: undefined,
      ...options.env,
    };
    // All at once, as replicas start: they race on the migrations (applied once, under a lock); the
    // first one seeds once it is up.
    const starting = Array.from({ length: size }, (_, i) => startNode(i, i === 0 ? { ...env, CLUSTER_SEED: '1' } : env));
    const settled = await Promise.allSettled(starting);
    for (const s of settled) if (s.status === 'fulfilled') nodes.push(s.value);
    const failed = settled.find((s) => s.status === 'rejected');
    if (failed) throw failed.reason;
    proxy.setBackends(nodes.map((n) => n.info));

    const agent = (cert?: KeyPairPem) => {
      const a = new Agent({ pipelining: 0, connect: { ca: tls.caPem, ...(cert ? { cert: cert.certPem, key: cert.keyPem } : {}) } });
      agents.push(a);
      return a;
    };
    const dispatcher = agent(clientCert);
    const fetch = (url: string | URL, init: RequestInit = {}) => undiciFetch(url, { redirect: 'manual', ...init, dispatcher });
    const endpoint = (p: string) => `${p.startsWith('/token') ? mtlsBaseUrl : issuer}${p}`;
    const cluster: Cluster = {
      issuer,
      mtlsBaseUrl,
      keysDir,
      caPem: tls.caPem,
      testDb,
      nodes: nodes.map((n) => n.info),
      env,
      clientCert,
      orchestratorCert,
      dispatcher,
      agent,
      fetch,
      endpoint,
      route: (...n) => proxy.route(n),
      connections: () => [...proxy.counts],
      asTestServer() {
        const present: Partial<TestServer> = { issuer, mtlsBaseUrl, fetch, dispatcher, endpoint, caPem: tls.caPem, clientCert, keysDir };
        // Anything else a helper reaches for (server, testDb...) belongs to one process: fail loudly.
        return new Proxy(present, {
          get(target, prop) {
            if (prop in target) return target[prop as keyof TestServer];
            if (prop === 'then') return undefined;
            throw new Error(`a cluster has no single-process TestServer.${String(prop)}`);
          },
        }) as TestServer;
      },
      async stopNodes() {
        return Promise.all(nodes.map((n) => n.stop()));
      },
      close,
    };
    return cluster;
  } catch (err) {
    for (const n of nodes) n.kill();
    await close().catch(() => {});
    throw err;
  }
}
