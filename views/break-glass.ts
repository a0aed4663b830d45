// The emergency access (break-glass) page: what will be opened, for whom, why, and the passkey.
import { BREAK_GLASS_REASONS } from '../src/break-glass/reasons.ts';
import { html, SafeHtml } from './html.ts';
import { layout } from './layout.ts';
import { passkeyForm, passkeyMessages, passkeyScripts } from './webauthn.ts';

export interface BreakGlassView {
  action: string;
  abortAction: string;
  /** Back to the normal consent page (care-team patients). */
  backUrl: string;
  clientName: string;
  userName: string;
  /** Plain-language lines for the read-only access that would be granted. */
  items: string[];
  /** Standalone launch: the clinician names the patient; EHR launch: the EHR's patient. */
  launch: 'standalone' | 'ehr';
  ttlMinutes: number;
  /** Passkey request options; absent when the form is not offered (refusal). */
  options?: unknown;
  /** Values to show again after a refusal of the form. */
  values?: { patient?: string | undefined; reason?: string | undefined; justification?: string | undefined } | undefined;
  error?: string | undefined;
}

const selected = (yes: boolean) => (yes ? new SafeHtml(' selected') : '');

function statementFields(v: BreakGlassView): SafeHtml {
  const values = v.values ?? {};
  return html`
  ${v.launch === 'standalone'
    ? html`<label for="bg-patient">Patient identifier</label>
  <input id="bg-patient" name="patient" type="text" required maxlength="64" autocomplete="off" value="${values.patient ?? ''}">`
    : html`<p>For the patient your EHR opened this app for.</p>`}
  <label for="bg-reason">Reason</label>
  <select id="bg-reason" name="reason" required>
    <option value=""${selected(!values.reason)}>Choose…</option>
    ${BREAK_GLASS_REASONS.map((r) => html`<option value="${r.code}"${selected(values.reason === r.code)}>${r.label} (${r.code})</option>`)}
  </select>
  <label for="bg-justification">Why do you need this record now?</label>
  <textarea id="bg-justification" name="justification" required minlength="10" maxlength="2000" rows="4">${values.justification ?? ''}</textarea>
  <label class="check"><input type="checkbox" name="acknowledge" value="yes" required> I understand that this access is recorded, that the privacy office is notified, and that it will be reviewed.</label>`;
}

export function breakGlassPage(v: BreakGlassView): string {
  return layout('Emergency access', html`
<p class="warning" role="note">Break the glass only when a patient needs care now and is not on your care team.</p>
<p>Signed in as <strong>${v.userName}</strong>. <strong>${v.clientName}</strong> would be able, for ${v.ttlMinutes} minutes and for this one patient only, to:</p>
<ul>${v.items.map((item) => html`<li>${item}</li>`)}</ul>
<p>Nothing can be changed or written, and the access cannot be renewed.</p>
${v.error ? html`<p class="error" role="alert">${v.error}</p>` : ''}
${v.options !== undefined ? html`${passkeyMessages()}
${passkeyForm({ action: v.action, mode: 'authenticate', options: v.options, label: 'Confirm with my passkey and open the record', fields: statementFields(v) })}` : ''}
<p><a href="${v.backUrl}">Back</a></p>
<form method="post" action="${v.abortAction}">
  <button type="submit" class="secondary">Cancel</button>
</form>
${v.options !== undefined ? passkeyScripts() : ''}`);
}
