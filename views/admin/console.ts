// The admin console's frame (navigation, who is signed in) and what several of its pages show: times,
// audit event tables. Server-rendered, no script: every interaction is a link or a form.
import type { RecentAuditEvent } from '../../src/audit/recent.ts';
import { html, type SafeHtml } from '../html.ts';
import { layout } from '../layout.ts';

export interface ConsoleUser {
  name: string;
}

export type ConsoleSection = 'clients' | 'new-client' | 'break-glass' | 'users';

export function consolePage(title: string, user: ConsoleUser, section: ConsoleSection | undefined, body: SafeHtml): string {
  const link = (href: string, label: string, here: boolean) => (here
    ? html`<a href="${href}" aria-current="page">${label}</a>`
    : html`<a href="${href}">${label}</a>`);
  return layout(title, html`
<nav class="console" aria-label="Admin console">
  ${link('/admin', 'Clients', section === 'clients')}
  ${link('/admin/clients/new', 'Register a client', section === 'new-client')}
  ${link('/admin/break-glass', 'Break-glass reviews', section === 'break-glass')}
  <form method="get" action="/admin/users" class="inline" role="search">
    <label for="nav-user" class="visually-hidden">User id or username</label>
    <input id="nav-user" name="user" type="search" placeholder="User audit: id or username" maxlength="200" required>
    <button type="submit" class="secondary">Go</button>
  </form>
  <span class="who">Signed in as <strong>${user.name}</strong> · <a href="/session/end">Sign out</a></span>
</nav>
${body}`, { wide: true });
}

export const when = (d: Date | null | undefined) => (d ? `${d.toISOString().slice(0, 19).replace('T', ' ')} UTC` : '—');

function detailText(details: RecentAuditEvent['details']): string {
  return Object.entries(details)
    .map(([k, v]) => `${k}=${Array.isArray(v) ? v.join(',') : String(v)}`)
    .join(' ');
}

/** Recent audit events, newest first; patients appear as their pseudonyms only (that is all the log holds). */
export function auditTable(events: RecentAuditEvent[], userNames: Map<string, string>): SafeHtml {
  if (!events.length) return html`<p>No audit events yet.</p>`;
  const userLink = (id: string | null) => (id ? html`<a href="/admin/users/${encodeURIComponent(id)}/audit">${userNames.get(id) ?? id}</a>` : '');
  const clientLink = (id: string | null) => (id ? html`<a href="/admin/clients/${encodeURIComponent(id)}">${id}</a>` : '');
  return html`<div class="scroll"><table class="console-table audit">
<thead><tr><th>Time</th><th>Event</th><th>Outcome</th><th>User</th><th>Client</th><th>Target client</th><th>Audience</th><th>Patient (pseudonym)</th><th>Rule</th><th>Details</th></tr></thead>
<tbody>${events.map((e) => html`<tr class="severity-${e.severity}">
<td>${when(e.occurredAt)}</td><td><code>${e.type}</code></td><td>${e.outcome}${e.severity !== 'info' ? html` (${e.severity})` : ''}</td>
<td>${userLink(e.actorUser)}</td><td>${clientLink(e.actorClient)}</td><td>${clientLink(e.targetClient)}</td><td>${e.targetAudience ?? ''}</td>
<td>${e.patientPseudonym ? html`<code class="pseudonym">${e.patientPseudonym}</code>` : ''}</td><td>${e.rule ?? ''}</td>
<td class="details">${detailText(e.details)}</td></tr>`)}</tbody>
</table></div>`;
}
