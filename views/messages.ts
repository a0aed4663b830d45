import { html, SafeHtml } from './html.ts';
import { layout } from './layout.ts';

export function errorPage(error: string, description: string | undefined): string {
  return layout('Something went wrong', html`
<p class="error" role="alert"><code>${error}</code></p>
${description ? html`<p>${description}</p>` : ''}`);
}

/** logoutForm is oidc-provider's own hidden form (id op.logoutForm, action, xsrf token), trusted. */
export function logoutPage(logoutForm: string): string {
  return layout('Sign out', html`
<p>Do you want to sign out?</p>
${new SafeHtml(logoutForm)}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
<button type="submit" form="op.logoutForm" class="secondary">Stay signed in</button>`);
}

export function loggedOutPage(clientName: string | undefined): string {
  return layout('Signed out', html`<p>You are signed out${clientName ? html` of ${clientName}` : ''}.</p>`);
}
