// Log messages tests/support/outage-server.ts writes and tests/db-outage.test.ts treats as a crash or
// a 500 (a module of their own: importing the server entry would start a server).
export const CRASH_MARKERS = {
  uncaught: 'outage-server: uncaught exception',
  providerServerError: 'outage-server: provider server_error',
} as const;
