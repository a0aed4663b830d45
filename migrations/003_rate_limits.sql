-- Shared rate-limit counters when Redis is not configured: rate-limiter-flexible's RateLimiterPostgres
-- schema (src/ratelimit/limiters.ts passes tableCreated: true, so the application role needs no DDL).
-- UNLOGGED: a counter is written on every limited request, and losing the counters in a crash or a
-- failover only restarts the current windows, so WAL and replication would be cost without benefit.
CREATE UNLOGGED TABLE rate_limits (
  key    varchar(255) PRIMARY KEY,
  points integer      NOT NULL DEFAULT 0,
  -- Milliseconds since the epoch when the window ends (set by the library from the writer's clock).
  expire bigint
);
-- The library deletes rows that expired an hour ago every five minutes.
CREATE INDEX rate_limits_expire ON rate_limits (expire);
