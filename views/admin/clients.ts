// The console's client pages: the list with its search box, the registration form (errors shown next
// to their field), the registered client with its secret (shown this once), and a client's details.
import type { RecentAuditEvent } from '../../src/audit/recent.ts';
import {
  FORM_APPLICATION_TYPES, FORM_AUTH_METHODS, FORM_GRANTS, type ClientFormErrors, type ClientFormField, type ClientFormValues,
} from '../../src/admin/console/client-form.ts';
import { html, SafeHtml } from '../html.ts';
import { auditTable, consolePage, when, type ConsoleUser } from './console.ts';

export interface ClientSummary {
  clientId: string;
  name: string | undefined;
  authMethod: string;
  grantTypes: string[];
  disabled: boolean;
  createdAt: Date;
}

export function clientListPage(user: ConsoleUser, v: { query: string; clients: ClientSummary[]; limit: number }): string {
  return consolePage('Clients', user, 'clients', html`
<form method="get" action="/admin" class="search" role="search">
  <label for="q">Search clients (id or name)</label>
  <input id="q" name="q" type="search" value="${v.query}" maxlength="100">
  <button type="submit">Search</button>
</form>
<p>${v.clients.length === v.limit ? `The first ${v.limit} clients` : `${v.clients.length} client${v.clients.length === 1 ? '' : 's'}`}${v.query ? html` matching <strong>${v.query}</strong>` : ''}.</p>
${v.clients.length ? html`<div class="scroll"><table class="console-table clients">
<thead><tr><th>Client id</th><th>Name</th><th>Authentication</th><th>Grant types</th><th>State</th><th>Registered</th></tr></thead>
<tbody>${v.clients.map((c) => html`<tr>
<td><a href="/admin/clients/${encodeURIComponent(c.clientId)}">${c.clientId}</a></td><td>${c.name ?? ''}</td><td><code>${c.authMethod}</code></td>
<td>${c.grantTypes.join(', ')}</td><td>${c.disabled ? html`<span class="badge off">disabled</span>` : html`<span class="badge on">active</span>`}</td><td>${when(c.createdAt)}</td></tr>`)}</tbody>
</table></div>` : ''}
<p><a href="/admin/clients/new">Register a client</a></p>`);
}

const checked = (yes: boolean) => (yes ? new SafeHtml(' checked') : '');
const selected = (yes: boolean) => (yes ? new SafeHtml(' selected') : '');

export function clientFormPage(user: ConsoleUser, v: { values: ClientFormValues; errors: ClientFormErrors; csrf: string; formId: string }): string {
  const { values, errors } = v;
  const invalid = (field: ClientFormField) => (errors[field] ? html` aria-invalid="true" aria-describedby="error-${field}"` : '');
  const error = (field: ClientFormField) => (errors[field] ? html`<p class="field-error" id="error-${field}" role="alert">${errors[field]}</p>` : '');
  const hint = (text: string) => html`<p class="hint">${text}</p>`;
  const text = (field: 'client_id' | 'client_name' | 'scope' | 'resource_scope' | 'tls_client_auth_subject_dn' | 'jwks_uri', label: string, extra: SafeHtml | string = '') => html`
  <label for="${field}">${label}</label>
  <input id="${field}" name="${field}" type="text" value="${values[field]}" maxlength="2000" autocomplete="off" spellcheck="false"${invalid(field)}>
  ${extra}${error(field)}`;
  return consolePage('Register a client', user, 'new-client', html`
${errors.form ? html`<p class="error" role="alert">${errors.form}</p>` : ''}
<form method="post" action="/admin/clients" class="client-form" novalidate>
  <input type="hidden" name="csrf" value="${v.csrf}">
  <input type="hidden" name="form_id" value="${v.formId}">
  ${text('client_id', 'Client id (optional)', hint('3-128 characters of A-Z a-z 0-9 . _ -; left empty, one is generated.'))}
  ${text('client_name', 'Name shown to users')}
  <label for="token_endpoint_auth_method">How the client authenticates</label>
  <select id="token_endpoint_auth_method" name="token_endpoint_auth_method"${invalid('token_endpoint_auth_method')}>
    ${FORM_AUTH_METHODS.map((m) => html`<option value="${m}"${selected(values.token_endpoint_auth_method === m)}>${m}</option>`)}
  </select>
  ${hint('client_secret_basic: a secret generated now and shown once; private_key_jwt: its keys (jwks_uri); tls_client_auth: its certificate (subject DN); none: a public app.')}
  ${error('token_endpoint_auth_method')}
  <label for="application_type">Application type</label>
  <select id="application_type" name="application_type"${invalid('application_type')}>
    ${FORM_APPLICATION_TYPES.map((t) => html`<option value="${t}"${selected(values.application_type === t)}>${t}</option>`)}
  </select>
  ${error('application_type')}
  <label for="redirect_uris">Redirect URIs (one per line)</label>
  <textarea id="redirect_uris" name="redirect_uris" rows="3" spellcheck="false"${invalid('redirect_uris')}>${values.redirect_uris}</textarea>
  ${hint('Exact https URIs. None for a workload without the authorization_code grant.')}
  ${error('redirect_uris')}
  <fieldset id="grant_types"${invalid('grant_types')}>
    <legend>Grant types</legend>
    ${FORM_GRANTS.map((g) => html`<label class="check"><input type="checkbox" name="${g.name}" value="on"${checked(values.grant_types.includes(g.grant))}> ${g.label}</label>`)}
    ${hint('Without authorization_code the client has no response types: a workload that only asks the token endpoint.')}
  </fieldset>
  ${error('grant_types')}
  ${text('scope', 'OpenID scopes', hint('e.g. openid fhirUser launch/patient offline_access; empty for a workload.'))}
  ${text('resource_scope', 'Resource scope ceiling', hint('SMART or API scopes the client may ever get, e.g. patient/Observation.rs or system/Patient.rs.'))}
  ${text('tls_client_auth_subject_dn', 'Certificate subject DN (tls_client_auth)', hint('e.g. CN=my-workload'))}
  ${text('jwks_uri', 'JWKS URI (private_key_jwt)')}
  <label class="check"><input type="checkbox" id="break_glass_allowed" name="break_glass_allowed" value="on"${checked(values.break_glass_allowed)}${invalid('break_glass_allowed')}> Clinicians may break the glass in this app (emergency access)</label>
  ${error('break_glass_allowed')}
  <button type="submit">Register the client</button>
</form>`);
}

function metadataRows(metadata: Record<string, unknown>): SafeHtml {
  const shown = (value: unknown) => (typeof value === 'string' ? value : JSON.stringify(value));
  return html`<table class="console-table metadata"><tbody>${Object.keys(metadata).sort().map((k) => html`<tr><th>${k}</th><td><code>${shown(metadata[k])}</code></td></tr>`)}</tbody></table>`;
}

export function clientCreatedPage(user: ConsoleUser, v: {
  clientId: string; representation: Record<string, unknown>; secret: string | undefined; hasSecret?: boolean; replayed?: boolean;
}): string {
  return consolePage('Client registered', user, 'new-client', html`
<p class="notice" role="status">Client <strong>${v.clientId}</strong> is registered.</p>
${v.replayed ? html`<p class="notice">This form was already submitted: nothing new was registered${v.hasSecret ? ' and the secret, shown the first time, is not shown again' : ''}.</p>` : ''}
${v.secret ? html`<div class="secret">
<p><strong>Client secret</strong> (shown this once: only a digest is stored; copy it now into the client's secret store):</p>
<p><code id="client-secret">${v.secret}</code></p>
</div>` : html`<p>This client has no secret: it proves itself with ${v.representation.token_endpoint_auth_method === 'none' ? 'nothing (a public app, PKCE)' : 'its certificate or keys'}.</p>`}
${metadataRows(v.representation)}
<p><a href="/admin/clients/${encodeURIComponent(v.clientId)}">Client details</a> · <a href="/admin">All clients</a></p>`);
}

export function clientDetailsPage(user: ConsoleUser, v: {
  clientId: string; representation: Record<string, unknown>; events: RecentAuditEvent[]; userNames: Map<string, string>;
}): string {
  return consolePage(`Client ${v.clientId}`, user, 'clients', html`
${metadataRows(v.representation)}
<h2>Recent audit events</h2>
${auditTable(v.events, v.userNames)}`);
}
