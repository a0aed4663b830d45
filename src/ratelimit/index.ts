export { checkLoginRateLimit, type LoginRateLimitInput, type LoginRateLimitResult } from './login-limit.ts';
export { claimedClient, claimedClientId, clientRateLimit, CLIENT_LIMITED_PATHS, limitedEndpoint } from './client-limit.ts';
export {
  consumePoint, counterKey, createRateLimiters, RATE_LIMIT_TABLE, RateLimitUnavailableError,
  type ConsumeOutcome, type RateLimitBackend, type RateLimiterName, type RateLimiterOptions, type RateLimiters,
} from './limiters.ts';
