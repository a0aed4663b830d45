import { html, SafeHtml } from './html.ts';
import { layout } from './layout.ts';

export interface ConsentView {
  action: string;
  abortAction: string;
  clientName: string;
  userName: string;
  /** Plain-language lines, one per scope or claim being granted. */
  items: string[];
  /** Standalone SMART launch: the care-team patients to choose from (form field `patient`). */
  patients?: Array<{ patientId: string; displayName: string }> | undefined;
  /** EHR launch: the patient the EHR put in context. */
  launchPatient?: boolean | undefined;
  /** EHR launch for a patient outside the clinician's care team: no normal access to offer. */
  launchOutsideCareTeam?: boolean | undefined;
  /** Where emergency (break-glass) access starts, when this app may receive it. */
  breakGlassUrl?: string | undefined;
  error?: string | undefined;
}

function patientPicker(v: ConsentView) {
  if (v.launchPatient && v.launchOutsideCareTeam) return html`<p class="error">The patient your EHR opened this app for is not on your care team.</p>`;
  if (v.launchPatient) return html`<p>For the patient your EHR opened this app for.</p>`;
  if (!v.patients) return '';
  if (!v.patients.length) return html`<p class="error">No patient is on your care team right now.</p>`;
  return html`<fieldset>
    <legend>Patient</legend>
    ${v.patients.map((p, i) => html`<label><input type="radio" name="patient" value="${p.patientId}" required${i === 0 ? new SafeHtml(' checked') : ''}> ${p.displayName}</label>`)}
  </fieldset>`;
}

export function consentPage(v: ConsentView): string {
  return layout('Allow access?', html`
<p>Signed in as <strong>${v.userName}</strong>.</p>
<p><strong>${v.clientName}</strong> asks to:</p>
<ul>${v.items.map((item) => html`<li>${item}</li>`)}</ul>
${v.error ? html`<p class="error" role="alert">${v.error}</p>` : ''}
<form method="post" action="${v.action}">
  ${patientPicker(v)}
  <button type="submit"${(v.patients && !v.patients.length) || v.launchOutsideCareTeam ? new SafeHtml(' disabled') : ''}>Allow</button>
</form>
${v.breakGlassUrl ? html`<a class="emergency" href="${v.breakGlassUrl}">${v.launchPatient ? 'Emergency access to this patient (break the glass)' : 'Patient not listed? Emergency access (break the glass)'}</a>` : ''}
<form method="post" action="${v.abortAction}">
  <button type="submit" class="secondary">Deny</button>
</form>`);
}
