// The current request's correlation id and source address, available to code deep below the HTTP
// layer (the storage adapter records audit events in its own transactions).
import { AsyncLocalStorage } from 'node:async_hooks';

import type { AuditRequestContext } from './event.ts';

const storage = new AsyncLocalStorage<AuditRequestContext>();

export function runWithRequestContext<T>(context: AuditRequestContext, fn: () => T): T {
  return storage.run(context, fn);
}

export function currentRequestContext(): AuditRequestContext | undefined {
  return storage.getStore();
}
