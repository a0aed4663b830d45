// File helpers for key material: private files are 0600, writes are atomic (temp file + rename)
// so a crash or a concurrent reader never sees a half-written key file.
import { randomBytes } from 'node:crypto';
import { link, mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';

import { formatIssues } from '../validation.ts';

/** Key material is missing, malformed or unfit for the current mode. Startup should stop with the message. */
export class KeyMaterialError extends Error {
  override name = 'KeyMaterialError';
}

export const PRIVATE_MODE = 0o600;
export const PUBLIC_MODE = 0o644;
const DIR_MODE = 0o700;

export async function ensureDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: DIR_MODE });
}

export async function fileExists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return false;
    throw err;
  }
}

/** Contents of `file`, or undefined when it does not exist (other errors propagate). */
export async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if (isErrno(err, 'ENOENT')) return undefined;
    throw err;
  }
}

/** Contents of `file`; a missing file is a KeyMaterialError naming it. */
export async function readRequired(file: string, hint = ''): Promise<string> {
  const text = await readOptional(file);
  if (text === undefined) throw new KeyMaterialError(`missing key material file ${file}${hint ? ` (${hint})` : ''}`);
  return text;
}

/** Replaces `file` atomically; the temp file is created with `mode` so the data is never readable by others. */
export async function writeFileAtomic(file: string, data: string, mode = PRIVATE_MODE): Promise<void> {
  const tmp = await writeTemp(file, data, mode);
  try {
    await rename(tmp, file);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/**
 * Creates `file` only if it does not exist yet, atomically (link() fails on an existing target).
 * Returns false when another writer got there first: callers then read the winner's file.
 */
export async function writeFileExclusive(file: string, data: string, mode = PRIVATE_MODE): Promise<boolean> {
  const tmp = await writeTemp(file, data, mode);
  try {
    await link(tmp, file);
    return true;
  } catch (err) {
    if (isErrno(err, 'EEXIST')) return false;
    throw err;
  } finally {
    await rm(tmp, { force: true });
  }
}

async function writeTemp(file: string, data: string, mode: number): Promise<string> {
  await ensureDir(path.dirname(file));
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  const handle = await open(tmp, 'wx', mode);
  try {
    await handle.writeFile(data, 'utf8');
    await handle.chmod(mode); // open() mode is filtered by the umask; make the intended mode explicit
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(tmp, { force: true });
    throw err;
  }
  await handle.close();
  return tmp;
}

export function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && (err as NodeJS.ErrnoException).code === code;
}

/** Parses JSON, turning a syntax error into a KeyMaterialError naming the file. */
export function parseJsonFile(file: string, text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new KeyMaterialError(`${file} is not valid JSON`);
  }
}

/** One-line description of zod issues, naming the offending field (e.g. `keys.0.jwk.kid`). */
export function describeIssues(file: string, issues: ReadonlyArray<{ path: PropertyKey[]; message: string }>): string {
  return `invalid ${file}: ${formatIssues(issues)}`;
}
