// `audit export`: audit events of a time range as JSON lines (for a SIEM) or as a FHIR R4 Bundle of
// AuditEvent resources, streamed page by page to stdout or to a file.
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';

import { loadConfig } from '../../config.ts';
import { CliError, expectPositionals, parseCommandArgs, UsageError, withDatabase, type Command } from '../context.ts';
import { instantOption } from '../instant.ts';

const OPTIONS = {
  since: { type: 'string' },
  until: { type: 'string' },
  format: { type: 'string' },
  out: { type: 'string' },
} as const;

const FORMATS = ['jsonl', 'fhir'] as const;
type Format = (typeof FORMATS)[number];

/** Writes with backpressure; rejects when the stream fails (a closed pipe, a full disk). */
async function write(stream: Writable, chunk: string): Promise<void> {
  if (stream.destroyed) throw new Error('output closed');
  if (stream.write(chunk)) return;
  await new Promise<void>((resolve, reject) => {
    const settle = (err?: Error) => {
      stream.off('drain', onDrain).off('close', onClose).off('error', settle);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => settle();
    const onClose = () => settle(new Error('output closed'));
    stream.on('drain', onDrain).on('close', onClose).on('error', settle);
  });
}

export const auditExportCommand: Command = {
  name: 'audit export',
  synopsis: '--since ISO8601 [--until ISO8601] [--format jsonl|fhir] [--out FILE]',
  description: [
    'Write the audit events that occurred in [--since, --until) in chain order, as the log stood when the export',
    'started: one JSON object per line (every stored column in camelCase, hash and prevHash included), or with',
    '--format fhir one FHIR R4 Bundle (type collection) of AuditEvent resources. Patients appear only as pseudonyms.',
  ],
  options: [
    ['--since ISO8601', 'first instant, inclusive (required): 2025-01-31 (UTC midnight) or 2025-01-31T08:00:00+01:00'],
    ['--until ISO8601', 'end instant, exclusive (default: no end)'],
    ['--format jsonl|fhir', 'JSON lines (default) or a FHIR R4 Bundle of AuditEvent'],
    ['--out FILE', 'write to FILE (mode 0600, replaced only when complete) instead of stdout'],
  ],
  output: 'the export itself on stdout; with --out {"out":"FILE","format":"jsonl|fhir","count":N}',
  async run(args) {
    const { values, positionals } = parseCommandArgs(this.name, args, OPTIONS);
    expectPositionals(this.name, positionals, []);
    if (values.since === undefined) throw new UsageError(`${this.name}: --since is required (ISO 8601, e.g. 2025-01-31T00:00:00Z)`);
    const since = instantOption(this.name, '--since', values.since)!;
    const until = instantOption(this.name, '--until', values.until);
    if (until && until.getTime() <= since.getTime()) throw new UsageError(`${this.name}: --until must be later than --since`);
    const format = (values.format ?? 'jsonl') as Format;
    if (!FORMATS.includes(format)) throw new UsageError(`${this.name}: --format must be jsonl or fhir`);
    if (values.out === '') throw new UsageError(`${this.name}: --out needs a file name`);
    const config = loadConfig();
    const [{ readAuditEvents, jsonLine }, { FhirBundleWriter }] = await Promise.all([
      import('../../audit/export-jsonl.ts'), import('../../audit/export-fhir.ts'),
    ]);

    const out = values.out === undefined ? undefined : path.resolve(values.out);
    // A file is written beside its final name and renamed when complete: no half export under that name.
    const partial = out && path.join(path.dirname(out), `.${path.basename(out)}.${process.pid}.partial`);
    const stream: Writable = partial ? createWriteStream(partial, { flags: 'wx', mode: 0o600 }) : process.stdout;
    const failed = new Promise<never>((_, reject) => {
      stream.once('error', (err: NodeJS.ErrnoException) => {
        reject(new CliError(`cannot write the export to ${out ?? 'stdout'}: ${err.code ?? err.message}`));
      });
    });
    failed.catch(() => {});

    let count = 0;
    const exportAll = withDatabase(config, async (db) => {
      const bundle = format === 'fhir' ? new FhirBundleWriter() : undefined;
      if (bundle) await write(stream, bundle.head());
      for await (const event of readAuditEvents(db, { since, until })) {
        await write(stream, bundle ? bundle.entry(event) : jsonLine(event));
        count += 1;
      }
      if (bundle) await write(stream, bundle.tail());
    });
    try {
      await Promise.race([exportAll, failed]);
      if (partial) {
        stream.end();
        await Promise.race([once(stream, 'finish'), failed]);
        await rename(partial, out!);
      }
    } catch (err) {
      if (partial) {
        stream.end();
        await rm(partial, { force: true });
      }
      await exportAll.catch(() => {}); // let the database close first
      // A failed output surfaces in the export too; the stream's own error says what happened.
      throw stream.errored ? await failed.catch((e: unknown) => e) : err;
    }
    return out ? { out, format, count } : undefined;
  },
};
