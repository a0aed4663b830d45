// A user's recent audit events (what they did, and administrative changes made to them), and the
// console's refusals.
import type { RecentAuditEvent } from '../../src/audit/recent.ts';
import { html } from '../html.ts';
import { layout } from '../layout.ts';
import { auditTable, consolePage, type ConsoleUser } from './console.ts';

export function userAuditPage(user: ConsoleUser, v: {
  target: { id: string; username: string; displayName: string | null; roles: string[]; disabled: boolean };
  events: RecentAuditEvent[]; userNames: Map<string, string>;
}): string {
  const t = v.target;
  return consolePage(`Audit events of ${t.username}`, user, 'users', html`
<dl class="facts">
  <dt>User id</dt><dd><code>${t.id}</code></dd>
  ${t.displayName ? html`<dt>Name</dt><dd>${t.displayName}</dd>` : ''}
  <dt>Roles</dt><dd>${t.roles.length ? t.roles.join(', ') : 'none'}</dd>
  <dt>State</dt><dd>${t.disabled ? 'disabled' : 'active'}</dd>
</dl>
<h2>Recent audit events</h2>
${auditTable(v.events, v.userNames)}`);
}

export function consoleMessagePage(user: ConsoleUser, title: string, message: string): string {
  return consolePage(title, user, undefined, html`<p class="error" role="alert">${message}</p>`);
}

/** Signed in, but not someone who may use the console (no admin role, or a disabled account). */
export function consoleForbiddenPage(userName: string | undefined, reason: string): string {
  return layout('Administration', html`
<p class="error" role="alert"><code>access_denied</code></p>
<p>${reason}</p>
${userName ? html`<p>Signed in as <strong>${userName}</strong>. <a href="/session/end">Sign out</a> to use another account.</p>` : ''}`);
}

/** A form posted without a usable sign-in: confirm identity (passkey) and come back. */
export function consoleSignInPage(message: string, signInUrl: string): string {
  return layout('Administration', html`
<p class="error" role="alert">${message}</p>
<p><a href="${signInUrl}">Sign in with your passkey</a>, then submit the form again.</p>`);
}
