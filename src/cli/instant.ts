// ISO 8601 instants in CLI options (audit export ranges, care-team windows).
import { UsageError } from './context.ts';

// 2025-01-31, or 2025-01-31T08:00[:00[.000]] with Z or an offset (a time without a zone is ambiguous).
const ISO_8601 = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?([Zz]|[+-]\d{2}:?\d{2}))?$/;

/** The instant an ISO 8601 date (UTC midnight) or date-time with zone stands for; undefined if invalid. */
export function parseInstant(text: string): Date | undefined {
  const m = ISO_8601.exec(text);
  if (!m) return undefined;
  const [, y, mo, d, h = '00', mi = '00', s = '00', fraction = '', zone = 'Z'] = m;
  const day = new Date(Date.UTC(Number(y), Number(mo) - 1, Number(d)));
  if (day.getUTCFullYear() !== Number(y) || day.getUTCMonth() !== Number(mo) - 1 || day.getUTCDate() !== Number(d)) return undefined;
  if (Number(h) > 23 || Number(mi) > 59 || Number(s) > 59) return undefined;
  const offset = zone.toUpperCase() === 'Z' ? '+00:00' : `${zone.slice(0, 3)}:${zone.slice(-2)}`;
  if (Number(offset.slice(1, 3)) > 23 || Number(offset.slice(-2)) > 59) return undefined;
  const millis = fraction.padEnd(3, '0').slice(0, 3);
  const instant = new Date(`${y}-${mo}-${d}T${h}:${mi}:${s}.${millis}${offset}`);
  return Number.isNaN(instant.getTime()) ? undefined : instant;
}

/** The value of a date/time option (undefined when absent); a usage error (exit 2) when malformed. */
export function instantOption(command: string, flag: string, value: string | undefined): Date | undefined {
  if (value === undefined) return undefined;
  const instant = parseInstant(value);
  if (!instant) {
    throw new UsageError(`${command}: ${flag} '${value}' is not an ISO 8601 date or date-time with zone (e.g. 2025-01-31 or 2025-01-31T08:00:00Z)`);
  }
  return instant;
}
