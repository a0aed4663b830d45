// Parent <-> child plumbing: each server under test runs in its own process (forked with tsx), says
// `ready` with what the load generator needs, samples its own RSS on request and stops on request.
import { fork, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';

type ParentMessage = { type: 'rss-start' } | { type: 'rss-stop' } | { type: 'stop' };
type ChildMessage<T> = { type: 'ready'; info: T } | { type: 'rss'; samples: number[]; heapUsed: number[] };

/** RSS and V8 heapUsed (bytes), sampled together every 250 ms. */
export interface MemorySamples { rss: number[]; heapUsed: number[] }

const RSS_INTERVAL_MS = 250;

/** In the child: announce readiness, answer RSS sampling requests, stop cleanly (so --cpu-prof is written). */
export function serveAsChild(info: unknown, stop: () => Promise<void>): void {
  let samples: number[] = [];
  let heapUsed: number[] = [];
  let timer: NodeJS.Timeout | undefined;
  const sample = () => {
    const m = process.memoryUsage();
    samples.push(m.rss);
    heapUsed.push(m.heapUsed);
  };
  const send = (msg: ChildMessage<unknown>) => process.send?.(msg);
  process.on('message', (msg: ParentMessage) => {
    if (msg.type === 'rss-start') {
      clearInterval(timer);
      samples = [];
      heapUsed = [];
      sample();
      timer = setInterval(sample, RSS_INTERVAL_MS);
    } else if (msg.type === 'rss-stop') {
      clearInterval(timer);
      sample();
      send({ type: 'rss', samples, heapUsed });
    } else if (msg.type === 'stop') {
      clearInterval(timer);
      const timeout = setTimeout(() => process.exit(1), 10_000);
      stop().catch((err: Error) => console.error(`stop failed: ${err.message}`)).finally(() => {
        clearTimeout(timeout);
        process.exit(0);
      });
    }
  });
  // The parent went away (Ctrl-C, crash): do not linger.
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready', info });
}

export interface Child<T> {
  info: T;
  pid: number;
  rssStart(): void;
  rssStop(): Promise<MemorySamples>;
  stop(): Promise<void>;
}

/** In the parent: forks `script` under tsx and waits for its `ready`. stdout goes to `logFile` (or nowhere). */
export async function startChild<T>(
  script: URL, opts: { env?: NodeJS.ProcessEnv; execArgv?: string[]; logFile?: string } = {},
): Promise<Child<T>> {
  const out = opts.logFile ? fs.openSync(opts.logFile, 'a') : 'ignore';
  const child: ChildProcess = fork(script, [], {
    execArgv: ['--import', 'tsx', ...(opts.execArgv ?? [])],
    env: { ...process.env, ...opts.env },
    stdio: ['ignore', out, 'inherit', 'ipc'],
  });
  if (typeof out === 'number') fs.closeSync(out);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const info = await new Promise<T>((resolve, reject) => {
    const onMessage = (msg: ChildMessage<T>) => {
      if (msg.type === 'ready') {
        child.off('message', onMessage);
        resolve(msg.info);
      }
    };
    child.on('message', onMessage);
    void exited.then((code) => reject(new Error(`${script.pathname} exited with ${code} before it was ready`)));
  });
  return {
    info,
    pid: child.pid!,
    rssStart: () => child.send({ type: 'rss-start' } satisfies ParentMessage),
    rssStop: () => new Promise<MemorySamples>((resolve, reject) => {
      const timeout = setTimeout(() => reject(new Error('no RSS samples from the child')), 10_000);
      const onMessage = (msg: ChildMessage<T>) => {
        if (msg.type !== 'rss') return;
        clearTimeout(timeout);
        child.off('message', onMessage);
        resolve({ rss: msg.samples, heapUsed: msg.heapUsed });
      };
      child.on('message', onMessage);
      child.send({ type: 'rss-stop' } satisfies ParentMessage);
    }),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.send({ type: 'stop' } satisfies ParentMessage);
      const timeout = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(timeout);
    },
  };
}
