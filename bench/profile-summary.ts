// Summarises a V8 .cpuprofile of the server (BENCH_CPU_PROF=1 npm run bench):
//   node --import tsx bench/profile-summary.ts bench/results/server-<stamp>.cpuprofile [top=20]
//   PROFILE_LAST_SECONDS=10 ...   only the last 10 s of the profile (the load, without start-up and seeding)
// Self time by function and by area (our src/ files, each npm package, node internals, GC), and
// inclusive time by area (a sample counts once for every area on its stack) and by function of ours.
import fs from 'node:fs/promises';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string };
  children?: number[];
}
interface Profile { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number }

const [file, topArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: profile-summary.ts <file.cpuprofile> [top]');
  process.exit(2);
}
const top = Number(topArg ?? 20);
const profile = JSON.parse(await fs.readFile(file, 'utf8')) as Profile;

const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);

function area(node: ProfileNode): string {
  const { url, functionName } = node.callFrame;
  if (!url) return functionName.startsWith('(') ? functionName : '(native)';
  if (url.startsWith('node:')) return url;
  const at = url.lastIndexOf('node_modules/');
  const pkg = at >= 0 ? /^node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url.slice(at)) : null;
  if (pkg) return pkg[1]!;
  const src = /\/((?:src|views|bench)\/.*)$/.exec(url);
  return src ? src[1]! : url;
}
// No line numbers: under tsx they are those of the transpiled module, not of the source.
const label = (n: ProfileNode) => `${n.callFrame.functionName || '(anonymous)'}  ${area(n)}`;

const selfByFunction = new Map<string, number>();
const selfByArea = new Map<string, number>();
const inclusiveByArea = new Map<string, number>();
const inclusiveOurs = new Map<string, number>();
let total = 0;
let idle = 0;
const add = (m: Map<string, number>, k: string, v: number) => m.set(k, (m.get(k) ?? 0) + v);

// Sample i was taken at startTime + the sum of timeDeltas[0..i].
const lastSeconds = Number(process.env.PROFILE_LAST_SECONDS ?? 0);
const from = lastSeconds > 0 ? profile.endTime - lastSeconds * 1e6 : -Infinity;
let at = profile.startTime;
const sampledAt = profile.timeDeltas.map((dt) => (at += dt));

profile.samples.forEach((id, i) => {
  if (sampledAt[i]! < from) return;
  const dt = profile.timeDeltas[i + 1] ?? 0;
  const node = byId.get(id)!;
  if (node.callFrame.functionName === '(idle)') {
    idle += dt;
    return;
  }
  total += dt;
  add(selfByFunction, label(node), dt);
  add(selfByArea, area(node), dt);
  const seen = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const a = area(byId.get(cur)!);
    if (a === '(root)' || seen.has(a)) continue;
    seen.add(a);
    add(inclusiveByArea, a, dt);
  }
  const ours = new Set<string>();
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const n = byId.get(cur)!;
    if (/^(src|views)\//.test(area(n))) ours.add(label(n));
  }
  for (const l of ours) add(inclusiveOurs, l, dt);
});

const pct = (v: number) => `${((100 * v) / total).toFixed(1).padStart(5)} %`;
const print = (title: string, m: Map<string, number>) => {
  console.log(`\n${title}`);
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(v)}  ${k}`);
};
const wall = lastSeconds > 0 ? Math.min(lastSeconds, (profile.endTime - profile.startTime) / 1e6) : (profile.endTime - profile.startTime) / 1e6;
console.log(`${file}: ${wall.toFixed(1)} s wall, ${(total / 1e6).toFixed(1)} s busy, ${(idle / 1e6).toFixed(1)} s idle (percentages of busy time)`);
print('self time by function', selfByFunction);
print('self time by area', selfByArea);
print('inclusive time by area (stack contains it)', inclusiveByArea);
print('inclusive time by function of ours (src/, views/)', inclusiveOurs);
