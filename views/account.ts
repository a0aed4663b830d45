import { html } from './html.ts';
import { layout } from './layout.ts';
import { passkeyForm, passkeyMessages, passkeyScripts } from './webauthn.ts';

export interface AccountPasskey {
  id: string;
  name: string;
  kind: string;
  createdAt: Date;
  lastUsedAt: Date | undefined;
}

export interface AccountView {
  userName: string;
  passkeys: AccountPasskey[];
  csrf: string;
  /** Registration options when the sign-in is recent and strong enough to add a passkey. */
  registration?: unknown;
  /** Removal allowed (recent passkey sign-in). */
  canRemove: boolean;
  /** Where to confirm identity again, when adding or removing is not allowed yet. */
  reauthUrl: string;
  signOutUrl: string;
  message?: string | undefined;
  error?: string | undefined;
}

const day = (d: Date | undefined) => (d ? d.toISOString().slice(0, 16).replace('T', ' ') + ' UTC' : 'never');

export function accountPage(v: AccountView): string {
  return layout('Your account', html`
<p>Signed in as <strong>${v.userName}</strong>.</p>
${v.message ? html`<p class="notice" role="status">${v.message}</p>` : ''}
${v.error ? html`<p class="error" role="alert">${v.error}</p>` : ''}
<h2>Passkeys</h2>
${v.passkeys.length ? html`<table class="passkeys">
<thead><tr><th>Name</th><th>Kind</th><th>Added</th><th>Last used</th><th></th></tr></thead>
<tbody>${v.passkeys.map((p) => html`<tr>
<td>${p.name}</td><td>${p.kind}</td><td>${day(p.createdAt)}</td><td>${day(p.lastUsedAt)}</td>
<td>${v.canRemove ? html`<form method="post" action="/account/passkeys/delete">
<input type="hidden" name="csrf" value="${v.csrf}"><input type="hidden" name="id" value="${p.id}">
<button type="submit" class="secondary">Remove</button></form>` : ''}</td></tr>`)}</tbody>
</table>` : html`<p>No passkey yet. A passkey lets you sign in without a password and is required for sensitive data.</p>`}
${v.registration ? html`${passkeyMessages()}
${passkeyForm({ action: '/account/passkeys', mode: 'register', options: v.registration, label: 'Add a passkey', hidden: { csrf: v.csrf }, askName: true })}
${passkeyScripts()}` : html`<p class="notice">To add or remove a passkey, confirm it is you first.</p>
<form method="get" action="${v.reauthUrl}"><input type="hidden" name="reauth" value="1"><button type="submit">Confirm it's me</button></form>`}
<p><a href="${v.signOutUrl}">Sign out</a></p>`, { wide: true });
}
