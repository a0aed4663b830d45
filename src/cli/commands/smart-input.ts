// Shared by the SMART data commands (patient, care team, launch, role): bad input is exit 1 with its
// message, and each change and its audit event commit together or not at all.
import { loadConfig } from '../../config.ts';
import type { Queryable } from '../../db/index.ts';
import type { AuditLog } from '../../audit/log.ts';
import { SmartDataError } from '../../smart/patients.ts';
import { CliError, createAuditLog, loadKeyMaterial, withDatabase } from '../context.ts';

/** SmartDataError → CliError (exit 1 with its message); other errors unchanged. */
export function asCliError(err: unknown): unknown {
  return err instanceof SmartDataError ? new CliError(err.message) : err;
}

/** Runs fn, turning SmartDataError into CliError. */
export function smartInput<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw asCliError(err);
  }
}

/** Opens the configured database and runs `change` in one transaction with the audit log at hand. */
export async function auditedChange<T>(change: (tx: Queryable, audit: AuditLog) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const material = await loadKeyMaterial(config);
  return withDatabase(config, async (db) => {
    const audit = await createAuditLog(db, material);
    try {
      return await db.transaction((tx) => change(tx, audit));
    } catch (err) {
      throw asCliError(err);
    }
  });
}
