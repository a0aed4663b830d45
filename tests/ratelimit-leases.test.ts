// Point leases of the per-client limiter (src/ratelimit/leases.ts): several processes sharing one
// counter never allow more than the limit together, exactly one refusal is "the first", small budgets
// stay exact, a lease ends with its window.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { RateLimiterMemory } from 'rate-limiter-flexible';

import { leaseSize, MAX_LEASE, PointLeases } from '../src/ratelimit/leases.ts';

async function spend(leases: PointLeases, key: string, n: number, concurrency = 8) {
  const outcomes: Array<Awaited<ReturnType<PointLeases['consume']>>> = [];
  for (let done = 0; done < n; done += concurrency) {
    outcomes.push(...await Promise.all(Array.from({ length: Math.min(concurrency, n - done) }, () => leases.consume(key))));
  }
  return outcomes;
}

test('lease size: 1 % of the budget, at least 1, at most MAX_LEASE', () => {
  assert.equal(leaseSize(30), 1);
  assert.equal(leaseSize(199), 1);
  assert.equal(leaseSize(1_200), 12);
  assert.equal(leaseSize(100_000_000), MAX_LEASE);
});

test('three processes on one counter allow at most the limit together, and at most one lease each fewer', async () => {
  const points = 1_200;
  const shared = new RateLimiterMemory({ points, duration: 60 }); // the shared store (PostgreSQL or Redis in a deployment)
  const processes = [0, 1, 2].map(() => new PointLeases(shared, points));
  const outcomes = (await Promise.all(processes.map((p) => spend(p, 'c:ward-app', 600)))).flat();
  const allowed = outcomes.filter((o) => o.allowed).length;
  assert.ok(allowed <= points, `allowed ${allowed} > ${points}`);
  assert.ok(allowed >= points - 3 * (leaseSize(points) - 1) - 3 * leaseSize(points), `allowed only ${allowed}`);
  const crossings = outcomes.filter((o) => !o.allowed && o.crossedLimit).length;
  assert.equal(crossings, 1, 'exactly one refusal is the first (the one to audit)');
});

test('below the limit the shared counter moves a lease at a time: 100 requests take 9 leases of 12', async () => {
  const shared = new RateLimiterMemory({ points: 1_200, duration: 60 });
  const leases = new PointLeases(shared, 1_200);
  const outcomes = await spend(leases, 'k', 100, 16);
  assert.equal(outcomes.filter((o) => o.allowed).length, 100);
  assert.equal((await shared.get('k'))!.consumedPoints, 9 * 12, 'concurrent requests share a lease instead of each taking one');
});

test('a budget under 200 points is exact: the request after the limit is refused, and it is the first refusal', async () => {
  const shared = new RateLimiterMemory({ points: 30, duration: 60 });
  const a = new PointLeases(shared, 30);
  const b = new PointLeases(shared, 30);
  const first = [...await spend(a, 'k', 15), ...await spend(b, 'k', 15)];
  assert.equal(first.filter((o) => o.allowed).length, 30);
  const next = await a.consume('k');
  assert.equal(next.allowed, false);
  assert.equal(!next.allowed && next.crossedLimit, true);
  const after = await b.consume('k');
  assert.equal(!after.allowed && after.crossedLimit, false);
});

test('a lease ends with its window: points left over are not spent in the next one', async () => {
  const shared = new RateLimiterMemory({ points: 1_000, duration: 1 });
  const leases = new PointLeases(shared, 1_000);
  assert.equal((await leases.consume('k')).allowed, true); // takes a lease of 10
  assert.equal((await shared.get('k'))!.consumedPoints, 10);
  await sleep(1_100);
  assert.equal((await leases.consume('k')).allowed, true);
  assert.equal((await shared.get('k'))!.consumedPoints, 10, 'a new lease in the new window');
});
