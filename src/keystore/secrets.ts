// Symmetric server secrets (cookie signing, client secret encryption, audit chain MAC) in <dir>/secrets.json.
// Generated only in development; production must provision the file (mode 0600) itself.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { z } from 'zod';
import { KeyMaterialError, describeIssues, parseJsonFile, readOptional, writeFileExclusive } from './files.ts';

export { KeyMaterialError } from './files.ts';

export interface ServerSecrets {
  dev: boolean;
  /** Newest first: oidc-provider signs cookies with the first key and accepts all of them. */
  cookieKeys: string[];
  clientSecretKey: string;
  auditKey: string;
}

const KEY_BYTES = 32;

const key32 = z.string().refine(isKey32, { message: `must be base64url of exactly ${KEY_BYTES} bytes` });

const SecretsSchema = z.object({
  dev: z.boolean(),
  cookieKeys: z.array(key32).min(1),
  clientSecretKey: key32,
  auditKey: key32,
});

export const SECRETS_FILE = 'secrets.json';

export async function loadOrCreateSecrets(dir: string, opts: { allowGenerate: boolean }): Promise<ServerSecrets> {
  const file = path.join(dir, SECRETS_FILE);
  let text = await readOptional(file);
  if (text === undefined) {
    if (!opts.allowGenerate) {
      throw new KeyMaterialError(`missing ${file}: provision server secrets (they are generated only in development)`);
    }
    // If another process created the file meanwhile, its secrets win and are read back below.
    await writeFileExclusive(file, `${JSON.stringify(generateSecrets(), null, 2)}\n`);
    text = await readOptional(file);
    if (text === undefined) throw new KeyMaterialError(`${file} vanished right after it was created`);
  }
  return parseSecrets(file, text);
}

/** Refuses development material when running in production. */
export function assertNotDev(what: string, dev: boolean): void {
  if (dev) throw new KeyMaterialError(`refusing to start in production with development ${what}`);
}

function generateSecrets(): ServerSecrets {
  return { dev: true, cookieKeys: [randomKey()], clientSecretKey: randomKey(), auditKey: randomKey() };
}

function parseSecrets(file: string, text: string): ServerSecrets {
  const parsed = SecretsSchema.safeParse(parseJsonFile(file, text));
  if (!parsed.success) throw new KeyMaterialError(describeIssues(file, parsed.error.issues));
  return parsed.data;
}

function randomKey(): string {
  return randomBytes(KEY_BYTES).toString('base64url');
}

function isKey32(value: string): boolean {
  // Round-trip check: Buffer.from() silently skips invalid characters, so compare the re-encoding.
  const bytes = Buffer.from(value, 'base64url');
  return bytes.length === KEY_BYTES && bytes.toString('base64url') === value;
}
