// The console's break-glass review queue: each open emergency access with the clinician's
// justification (the review item is the one place it lives), the tokens that followed, and a form to
// close the review with an outcome and a note.
import { REVIEW_OUTCOMES } from '../../src/break-glass/events.ts';
import { html, SafeHtml } from '../html.ts';
import { consolePage, when, type ConsoleUser } from './console.ts';

export interface ReviewItemView {
  id: string;
  userId: string;
  userName: string;
  clientId: string;
  patientPseudonym: string;
  reasonCode: string;
  justification: string;
  launchKind: string;
  scope: string;
  createdAt: Date;
  expiresAt: Date;
  revokedAt: Date | null;
  tokens: Array<{ tokenRef: string; kind: string; clientId: string; audience: string | null; scope: string; issuedAt: Date; expiresAt: Date }>;
}

export interface ReviewFormState {
  /** The item the error (and the values) belong to. */
  id: string;
  outcome: string;
  note: string;
  error: string;
}

const selected = (yes: boolean) => (yes ? new SafeHtml(' selected') : '');

export function breakGlassReviewsPage(user: ConsoleUser, v: { items: ReviewItemView[]; csrf: string; message?: string | undefined; error?: ReviewFormState | undefined }): string {
  const form = (item: ReviewItemView) => {
    const state = v.error?.id === item.id ? v.error : undefined;
    return html`<form method="post" action="/admin/break-glass/${encodeURIComponent(item.id)}/close" class="review-form">
  <input type="hidden" name="csrf" value="${v.csrf}">
  <label for="outcome-${item.id}">Outcome</label>
  <select id="outcome-${item.id}" name="outcome" required>
    <option value=""${selected(!state?.outcome)}>Choose…</option>
    ${REVIEW_OUTCOMES.map((o) => html`<option value="${o}"${selected(state?.outcome === o)}>${o}</option>`)}
  </select>
  <label for="note-${item.id}">Review note</label>
  <textarea id="note-${item.id}" name="note" rows="2" maxlength="2000" required${state ? html` aria-invalid="true" aria-describedby="error-${item.id}"` : ''}>${state?.note ?? ''}</textarea>
  ${state ? html`<p class="field-error" id="error-${item.id}" role="alert">${state.error}</p>` : ''}
  <button type="submit">Close the review</button>
</form>`;
  };
  return consolePage('Break-glass reviews', user, 'break-glass', html`
${v.message ? html`<p class="notice" role="status">${v.message}</p>` : ''}
${v.error && !v.items.some((i) => i.id === v.error!.id) ? html`<p class="error" role="alert">${v.error.error}</p>` : ''}
<p>Emergency accesses waiting for review, oldest first. Viewing this page is recorded in the audit log.</p>
${v.items.length ? v.items.map((item) => html`<section class="review" id="review-${item.id}">
<h2>${item.reasonCode} · <a href="/admin/users/${encodeURIComponent(item.userId)}/audit">${item.userName}</a> · ${when(item.createdAt)}</h2>
<dl class="facts">
  <dt>Review item</dt><dd><code>${item.id}</code></dd>
  <dt>Client</dt><dd><a href="/admin/clients/${encodeURIComponent(item.clientId)}">${item.clientId}</a> (${item.launchKind} launch)</dd>
  <dt>Patient (pseudonym)</dt><dd><code class="pseudonym">${item.patientPseudonym}</code></dd>
  <dt>Scope</dt><dd><code>${item.scope}</code></dd>
  <dt>Access</dt><dd>until ${when(item.expiresAt)}${item.revokedAt ? html`, revoked ${when(item.revokedAt)}` : ''}</dd>
  <dt>Justification</dt><dd class="justification">${item.justification}</dd>
</dl>
${item.tokens.length ? html`<div class="scroll"><table class="console-table tokens">
<thead><tr><th>Token</th><th>Kind</th><th>Client</th><th>Audience</th><th>Scope</th><th>Issued</th><th>Expires</th></tr></thead>
<tbody>${item.tokens.map((t) => html`<tr><td><code>${t.tokenRef}</code></td><td>${t.kind}</td><td>${t.clientId}</td><td>${t.audience ?? ''}</td><td><code>${t.scope}</code></td><td>${when(t.issuedAt)}</td><td>${when(t.expiresAt)}</td></tr>`)}</tbody>
</table></div>` : html`<p>No token was issued for this access.</p>`}
${form(item)}
</section>`) : html`<p class="notice">No open reviews.</p>`}`);
}
