// Step-up as data (DESIGN.md §6): which requests need a stronger or more recent sign-in. A rule names
// any of a SMART scope pattern, a client and an audience; it applies when every condition it names
// holds, and demands an acr level and, optionally, a maximum authentication age.
import { z } from 'zod';

import type { Queryable } from '../db/index.ts';
import { cacheableQuery } from '../db/read-cache.ts';
import { narrow, parseScope, type ResourceScope } from '../smart/scopes.ts';
import { ACR_VALUES, strictest, type AuthenticationRequirement } from './assurance.ts';

export interface StepUpRule {
  /** A SMART resource scope; a request overlapping it (e.g. `patient/*.cud`: any write) is covered. */
  scope?: string | undefined;
  /** Only tokens issued to this client. */
  clientId?: string | undefined;
  /** Only tokens for this resource server. */
  audience?: string | undefined;
  /** Acceptable acr values (documented values only); the weakest sets the level. */
  acrValues: string[];
  /** Maximum age of the authentication, seconds. */
  maxAge?: number | undefined;
}

/** What a token is about to carry, for matching rules. */
export interface StepUpSubject {
  clientId: string;
  audiences: readonly string[];
  scopes: readonly ResourceScope[];
}

export class StepUpRuleError extends Error {
  override name = 'StepUpRuleError';
}

const MAX_AGE_LIMIT = 30 * 24 * 3600;

function resourceScope(text: string): ResourceScope | undefined {
  const parsed = parseScope(text);
  return parsed.ok && parsed.scope.kind === 'resource' ? parsed.scope : undefined;
}

export const StepUpRuleSchema = z.strictObject({
  scope: z.string().refine((s) => resourceScope(s) !== undefined, 'one SMART resource scope').optional(),
  clientId: z.string().min(1).max(200).optional(),
  audience: z.url().optional(),
  acrValues: z.array(z.enum(ACR_VALUES)).min(1).max(ACR_VALUES.length),
  maxAge: z.number().int().positive().max(MAX_AGE_LIMIT).optional(),
}).refine((r) => r.scope !== undefined || r.clientId !== undefined || r.audience !== undefined, {
  message: 'a rule names at least one of scope, clientId, audience',
});

/** Adds or replaces the rule with the same conditions. */
export async function setStepUpRule(db: Queryable, input: StepUpRule): Promise<void> {
  const checked = StepUpRuleSchema.safeParse(input);
  if (!checked.success) throw new StepUpRuleError(checked.error.issues.map((i) => `${i.path.join('.') || 'rule'}: ${i.message}`).join('; '));
  const rule = checked.data;
  const scope = rule.scope === undefined ? null : resourceScope(rule.scope)!.text;
  await db.query(
    `INSERT INTO step_up_rules (scope, client_id, audience, acr_values, max_age) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT ((coalesce(scope, '')), (coalesce(client_id, '')), (coalesce(audience, '')))
     DO UPDATE SET acr_values = EXCLUDED.acr_values, max_age = EXCLUDED.max_age, updated_at = now()`,
    [scope, rule.clientId ?? null, rule.audience ?? null, [...new Set(rule.acrValues)], rule.maxAge ?? null],
  );
}

const LIST_RULES = cacheableQuery('SELECT scope, client_id, audience, acr_values, max_age FROM step_up_rules ORDER BY id', ['step_up_rules']);

export async function listStepUpRules(db: Queryable): Promise<StepUpRule[]> {
  const { rows } = await db.query<{ scope: string | null; client_id: string | null; audience: string | null; acr_values: string[]; max_age: number | null }>(
    LIST_RULES,
  );
  return rows.map((r) => ({
    ...(r.scope !== null ? { scope: r.scope } : {}),
    ...(r.client_id !== null ? { clientId: r.client_id } : {}),
    ...(r.audience !== null ? { audience: r.audience } : {}),
    acrValues: r.acr_values,
    ...(r.max_age !== null ? { maxAge: Number(r.max_age) } : {}),
  }));
}

function applies(rule: StepUpRule, subject: StepUpSubject): boolean {
  if (rule.clientId !== undefined && rule.clientId !== subject.clientId) return false;
  if (rule.audience !== undefined && !subject.audiences.includes(rule.audience)) return false;
  if (rule.scope !== undefined) {
    const pattern = resourceScope(rule.scope);
    // Overlap, not containment: a wider request (patient/*.rs) cannot slip past a narrow rule.
    if (!pattern || narrow(subject.scopes, [pattern]).length === 0) return false;
  }
  return true;
}

/** The strictest requirement of the rules that apply, or undefined when none does. */
export function stepUpRequirement(rules: readonly StepUpRule[], subject: StepUpSubject): AuthenticationRequirement | undefined {
  return strictest(rules.filter((rule) => applies(rule, subject)));
}
