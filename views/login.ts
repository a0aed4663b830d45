import { html } from './html.ts';
import { layout } from './layout.ts';

export interface LoginView {
  action: string;
  abortAction: string;
  clientName: string;
  username?: string | undefined;
  error?: string | undefined;
}

export function loginPage(v: LoginView): string {
  return layout('Sign in', html`
<p>Sign in to continue to <strong>${v.clientName}</strong>.</p>
${v.error ? html`<p class="error" role="alert">${v.error}</p>` : ''}
<form method="post" action="${v.action}" autocomplete="on">
  <label for="username">Username</label>
  <input id="username" name="username" type="text" autocomplete="username" autocapitalize="none" spellcheck="false" required maxlength="63" value="${v.username ?? ''}" ${v.username ? '' : html`autofocus`}>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password" required maxlength="256" ${v.username ? html`autofocus` : ''}>
  <button type="submit">Sign in</button>
</form>
<form method="post" action="${v.abortAction}">
  <button type="submit" class="secondary">Cancel</button>
</form>`);
}
