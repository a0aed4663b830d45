// Per-client budgets are large (1,200 requests a minute by default) and checked on every token,
// introspection and revocation request: one shared-counter round trip each would be a large part of
// those requests' cost. A process instead takes points from the shared counter a lease at a time
// (1 % of the budget, at most MAX_LEASE) and spends them locally until the lease runs out or the
// counter's window ends. Leased points are counted when they are taken, so all processes together
// never allow more than the limit; what a process leased and did not use is lost with the window, so
// a client may be refused up to one lease per process early (under 1 % of its budget each).
// Budgets under 200 points get single-point leases: exactly the shared counter, as before.
import { RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';

export const MAX_LEASE = 50;
/** Keys with a live lease remembered at most (a lease is a few numbers); the oldest goes first. */
const MAX_KEYS = 10_000;

export function leaseSize(points: number): number {
  return Math.max(1, Math.min(MAX_LEASE, Math.floor(points / 100)));
}

interface Lease {
  remaining: number;
  /** When the shared counter's window (and so the lease) ends, ms since the epoch. */
  endsAt: number;
}

export type LeaseOutcome = { allowed: true } | { allowed: false; rejection: RateLimiterRes; crossedLimit: boolean };

export class PointLeases {
  private readonly leases = new Map<string, Lease>();
  private readonly pending = new Map<string, Promise<LeaseOutcome>>();
  readonly size: number;

  constructor(private readonly limiter: RateLimiterAbstract, private readonly points: number) {
    this.size = leaseSize(points);
  }

  /** Takes one point for `key`; rejects with the store's error when the shared counter cannot answer. */
  async consume(key: string): Promise<LeaseOutcome> {
    for (;;) {
      const lease = this.leases.get(key);
      if (lease && lease.remaining > 0 && Date.now() < lease.endsAt) {
        lease.remaining -= 1;
        return { allowed: true };
      }
      // Requests for one key arriving together share one lease request, then spend from it.
      const inFlight = this.pending.get(key);
      if (!inFlight) break;
      const outcome = await inFlight;
      // Only the request that took the lease can be the one that crossed the limit.
      if (!outcome.allowed) return { ...outcome, crossedLimit: false };
    }
    const request = this.lease(key);
    this.pending.set(key, request);
    try {
      return await request;
    } finally {
      this.pending.delete(key);
    }
  }

  private async lease(key: string): Promise<LeaseOutcome> {
    this.leases.delete(key);
    try {
      const res = await this.limiter.consume(key, this.size);
      if (this.leases.size >= MAX_KEYS) this.leases.delete(this.leases.keys().next().value!);
      this.leases.set(key, { remaining: this.size - 1, endsAt: Date.now() + res.msBeforeNext });
      return { allowed: true };
    } catch (rejection) {
      if (!(rejection instanceof RateLimiterRes)) throw rejection;
      // The counter is atomic: exactly one lease request anywhere crosses points + 1.
      const crossedLimit = rejection.consumedPoints - this.size < this.points + 1 && rejection.consumedPoints >= this.points + 1;
      return { allowed: false, rejection, crossedLimit };
    }
  }
}
