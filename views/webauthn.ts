// The pieces every passkey page shares: the options for the browser, the scripts, the hidden form
// the script fills, and the messages for a browser without WebAuthn or an authenticator.
import { html, jsonData, type SafeHtml } from './html.ts';

export interface PasskeyForm {
  /** Where the answer is posted. */
  action: string;
  mode: 'register' | 'authenticate';
  /** PublicKeyCredentialCreationOptionsJSON or PublicKeyCredentialRequestOptionsJSON. */
  options: unknown;
  label: string;
  /** Extra hidden fields (csrf). */
  hidden?: Record<string, string> | undefined;
  /** Registration: ask for a name for the passkey. */
  askName?: boolean | undefined;
  secondary?: boolean | undefined;
  /** More fields posted with the answer (e.g. the break-glass statement), shown above the button. */
  fields?: SafeHtml | undefined;
}

export function passkeyForm(f: PasskeyForm): SafeHtml {
  return html`
${jsonData(`webauthn-options-${f.mode}`, f.options)}
<form method="post" action="${f.action}" class="passkey-form" data-webauthn="${f.mode}">
  ${Object.entries(f.hidden ?? {}).map(([name, value]) => html`<input type="hidden" name="${name}" value="${value}">`)}
  <input type="hidden" name="credential" value="">
  ${f.askName ? html`<label for="passkey-name">Name for this passkey</label>
  <input id="passkey-name" name="name" type="text" maxlength="64" required value="Passkey" autocomplete="off">` : ''}
  ${f.fields ?? ''}
  <button type="submit" class="${f.secondary ? 'secondary' : ''}">${f.label}</button>
</form>`;
}

/** Shown by the script, hidden otherwise: no authenticator, cancelled prompt, other failures. */
export function passkeyMessages(): SafeHtml {
  return html`
<p class="error" role="alert" id="webauthn-unsupported" hidden>This browser cannot use passkeys (WebAuthn is not available). Use a current browser on a device with a screen lock, or a security key.</p>
<p class="error" role="alert" id="webauthn-failed" hidden></p>`;
}

export function passkeyScripts(): SafeHtml {
  return html`<script src="/static/simplewebauthn-browser.js"></script>
<script src="/static/passkey.js"></script>`;
}
