// Which scopes need a stronger sign-in (acr), as data. The WebAuthn issue adds the ceremonies that
// produce the stronger levels; until then a rule simply names the acr values that are good enough.
import { z } from 'zod';

import type { Queryable } from '../db/index.ts';
import { narrow, parseScope, type ResourceScope } from '../smart/scopes.ts';

export interface StepUpRule {
  /** A SMART resource scope; any requested scope overlapping it needs one of acrValues. */
  scope: string;
  acrValues: string[];
}

const ACR = /^[\x21-\x7e]{1,200}$/;

export class StepUpRuleError extends Error {
  override name = 'StepUpRuleError';
}

function resourceScope(text: string): ResourceScope {
  const parsed = parseScope(text);
  if (!parsed.ok || parsed.scope.kind !== 'resource') throw new StepUpRuleError(`step-up scope must be one SMART resource scope: ${text.slice(0, 100)}`);
  return parsed.scope;
}

export const StepUpRuleSchema = z.strictObject({
  scope: z.string().refine((s) => parseScope(s).ok && (parseScope(s) as { scope?: { kind: string } }).scope?.kind === 'resource', 'one SMART resource scope'),
  acrValues: z.array(z.string().regex(ACR, 'acr value: printable ASCII, no spaces')).min(1).max(16),
});

export async function setStepUpRule(db: Queryable, rule: StepUpRule): Promise<void> {
  const scope = resourceScope(rule.scope).text;
  if (!rule.acrValues.length || !rule.acrValues.every((v) => ACR.test(v))) throw new StepUpRuleError('acrValues: one or more printable acr values');
  await db.query(
    `INSERT INTO step_up_rules (scope, acr_values) VALUES ($1, $2)
     ON CONFLICT (scope) DO UPDATE SET acr_values = EXCLUDED.acr_values, updated_at = now()`,
    [scope, [...new Set(rule.acrValues)]],
  );
}

export async function listStepUpRules(db: Queryable): Promise<StepUpRule[]> {
  const { rows } = await db.query<{ scope: string; acr_values: string[] }>('SELECT scope, acr_values FROM step_up_rules ORDER BY scope');
  return rows.map((r) => ({ scope: r.scope, acrValues: r.acr_values }));
}

/**
 * The first rule the requested scopes fall under that the given acr does not satisfy, if any.
 * "Falls under" is overlap (a non-empty SMART intersection), so a wider request cannot slip past.
 */
export function unmetStepUp(rules: readonly StepUpRule[], requested: readonly ResourceScope[], acr: string | undefined): StepUpRule | undefined {
  for (const rule of rules) {
    const parsed = parseScope(rule.scope);
    if (!parsed.ok || parsed.scope.kind !== 'resource') continue;
    const overlaps = narrow(requested, [parsed.scope]).length > 0;
    if (overlaps && (acr === undefined || !rule.acrValues.includes(acr))) return rule;
  }
  return undefined;
}
