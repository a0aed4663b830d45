import { html } from './html.ts';
import { layout } from './layout.ts';
import { passkeyForm, passkeyMessages, passkeyScripts } from './webauthn.ts';

export interface PasskeyPromptView {
  clientName: string;
  userName: string;
  /** Why the passkey is asked for. */
  reason: 'second_factor' | 'step_up';
  action: string;
  abortAction: string;
  options: unknown;
  error?: string | undefined;
}

export function passkeyPromptPage(v: PasskeyPromptView): string {
  return layout('Confirm with your passkey', html`
<p>${v.reason === 'step_up'
    ? html`<strong>${v.clientName}</strong> needs a stronger sign-in for this request.`
    : html`Your account is protected with a passkey.`} Signed in as <strong>${v.userName}</strong>.</p>
${v.error ? html`<p class="error" role="alert">${v.error}</p>` : ''}
${passkeyMessages()}
${passkeyForm({ action: v.action, mode: 'authenticate', options: v.options, label: 'Use my passkey' })}
<form method="post" action="${v.abortAction}">
  <button type="submit" class="secondary">Cancel</button>
</form>
${passkeyScripts()}`);
}

/** The request needs a passkey and the user has none: say how to get one, offer only cancel. */
export function passkeyMissingPage(v: { clientName: string; userName: string; accountUrl: string; abortAction: string }): string {
  return layout('A passkey is required', html`
<p><strong>${v.clientName}</strong> needs a sign-in with a passkey, and <strong>${v.userName}</strong> has none yet.</p>
<p>Register one on your <a href="${v.accountUrl}" target="_blank" rel="noopener">account page</a> (it opens in a new tab), then start again from the application.</p>
<form method="post" action="${v.abortAction}">
  <button type="submit" class="secondary">Cancel</button>
</form>`);
}
