import { html } from './html.ts';
import { layout } from './layout.ts';

export interface ConsentView {
  action: string;
  abortAction: string;
  clientName: string;
  userName: string;
  /** Plain-language lines, one per scope or claim being granted. */
  items: string[];
}

export function consentPage(v: ConsentView): string {
  return layout('Allow access?', html`
<p>Signed in as <strong>${v.userName}</strong>.</p>
<p><strong>${v.clientName}</strong> asks to:</p>
<ul>${v.items.map((item) => html`<li>${item}</li>`)}</ul>
<form method="post" action="${v.action}">
  <button type="submit">Allow</button>
</form>
<form method="post" action="${v.abortAction}">
  <button type="submit" class="secondary">Deny</button>
</form>`);
}
