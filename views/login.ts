import { html } from './html.ts';
import { layout } from './layout.ts';
import { passkeyForm, passkeyMessages, passkeyScripts } from './webauthn.ts';

export interface LoginView {
  action: string;
  abortAction: string;
  clientName: string;
  username?: string | undefined;
  error?: string | undefined;
  /** Passwordless sign-in with a discoverable passkey (options for the browser). */
  passkey?: { action: string; options: unknown } | undefined;
  /** Why the user is asked again (step-up, max_age). */
  notice?: string | undefined;
}

export function loginPage(v: LoginView): string {
  return layout('Sign in', html`
<p>Sign in to continue to <strong>${v.clientName}</strong>.</p>
${v.notice ? html`<p class="notice">${v.notice}</p>` : ''}
${v.error ? html`<p class="error" role="alert">${v.error}</p>` : ''}
<form method="post" action="${v.action}" autocomplete="on">
  <label for="username">Username</label>
  <input id="username" name="username" type="text" autocomplete="username" autocapitalize="none" spellcheck="false" required maxlength="63" value="${v.username ?? ''}" ${v.username ? '' : html`autofocus`}>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required maxlength="256" ${v.username ? html`autofocus` : ''}>
  <button type="submit">Sign in</button>
</form>
${v.passkey ? html`<p class="or">or</p>
${passkeyMessages()}
${passkeyForm({ action: v.passkey.action, mode: 'authenticate', options: v.passkey.options, label: 'Sign in with a passkey', secondary: true })}
${passkeyScripts()}` : ''}
<form method="post" action="${v.abortAction}">
  <button type="submit" class="secondary">Cancel</button>
</form>`);
}
