// What the privacy office's webhook hears about an emergency access: who, which client, which patient
// pseudonym, why (the code), for how long, where to review. Never the justification (free text that may
// hold clinical detail: it stays in the review item) and never a raw patient id or a token.
import type { User } from '../accounts/users.ts';
import type { Queryable } from '../db/index.ts';
import { enqueueWebhook, type WebhookDispatcher } from '../notifications/webhook.ts';
import type { BreakGlassEvent } from './events.ts';
import { PURPOSE_OF_USE_SYSTEM } from './reasons.ts';

export const BREAK_GLASS_TOPIC = 'break_glass.opened';

export function breakGlassNotification(event: BreakGlassEvent, user: User): Record<string, unknown> {
  return {
    break_glass_id: event.id,
    user_id: user.id,
    username: user.username,
    client_id: event.clientId,
    patient_pseudonym: event.patientPseudonym,
    purpose_of_use: { system: PURPOSE_OF_USE_SYSTEM, code: event.reasonCode },
    scope: event.scope,
    launch: event.launchKind,
    created_at: event.createdAt.toISOString(),
    expires_at: event.expiresAt.toISOString(),
    review: { status: event.review.status, how: 'npm run cli -- break-glass list' },
  };
}

export interface BreakGlassNotifier {
  notify(tx: Queryable, event: BreakGlassEvent, user: User): Promise<void>;
  afterGrant(): void;
}

/** Queues in the grant's transaction, sends after it: a slow or down receiver never delays a clinician. */
export function breakGlassNotifier(webhook: { url: string } | undefined, dispatcher: WebhookDispatcher | undefined): BreakGlassNotifier {
  if (!webhook || !dispatcher) return { notify: async () => undefined, afterGrant: () => undefined };
  return {
    notify: async (tx, event, user) => {
      await enqueueWebhook(tx, { topic: BREAK_GLASS_TOPIC, url: webhook.url, payload: breakGlassNotification(event, user) });
    },
    afterGrant: () => dispatcher.kick(),
  };
}
