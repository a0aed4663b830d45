// The console's "register a client" form: what it posts, the client metadata it becomes, and which
// field a validation message is about (our policy and oidc-provider name the field first).
import { TOKEN_EXCHANGE_GRANT } from '../../exchange/decision.ts';

export const FORM_AUTH_METHODS = ['client_secret_basic', 'private_key_jwt', 'tls_client_auth', 'none'] as const;
export const FORM_APPLICATION_TYPES = ['web', 'native'] as const;
/** Checkbox name → grant type (one name each: repeated form fields are refused). */
export const FORM_GRANTS = [
  { name: 'grant_authorization_code', grant: 'authorization_code', label: 'authorization_code (a user signs in)' },
  { name: 'grant_refresh_token', grant: 'refresh_token', label: 'refresh_token' },
  { name: 'grant_client_credentials', grant: 'client_credentials', label: 'client_credentials (a workload acting for itself)' },
  { name: 'grant_token_exchange', grant: TOKEN_EXCHANGE_GRANT, label: 'token exchange (RFC 8693, mTLS clients only)' },
] as const;

/** The form's fields, in the order they are shown: a message about one of them is shown next to it. */
export const CLIENT_FORM_FIELDS = [
  'client_id', 'client_name', 'token_endpoint_auth_method', 'application_type', 'redirect_uris', 'grant_types', 'scope',
  'resource_scope', 'tls_client_auth_subject_dn', 'jwks_uri', 'break_glass_allowed',
] as const;
export type ClientFormField = (typeof CLIENT_FORM_FIELDS)[number];

/** What the form shows (and shows again, as typed, after a refusal). */
export interface ClientFormValues {
  client_id: string;
  client_name: string;
  token_endpoint_auth_method: string;
  application_type: string;
  redirect_uris: string;
  grant_types: string[];
  scope: string;
  resource_scope: string;
  tls_client_auth_subject_dn: string;
  jwks_uri: string;
  break_glass_allowed: boolean;
}

export type ClientFormErrors = Partial<Record<ClientFormField | 'form', string>>;

export const EMPTY_CLIENT_FORM: ClientFormValues = {
  client_id: '', client_name: '', token_endpoint_auth_method: 'client_secret_basic', application_type: 'web', redirect_uris: '',
  grant_types: ['authorization_code'], scope: 'openid', resource_scope: '', tls_client_auth_subject_dn: '', jwks_uri: '',
  break_glass_allowed: false,
};

const MAX_TEXT = 2000;
const MAX_REDIRECT_URIS = 20;
// C0/C1 controls: every field is one line (redirect URIs one per line).
const CONTROLS = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** The posted form as typed (trimmed), whatever it holds. */
export function clientFormValues(form: Map<string, string>): ClientFormValues {
  const text = (name: string) => (form.get(name) ?? '').trim();
  return {
    client_id: text('client_id'),
    client_name: text('client_name'),
    token_endpoint_auth_method: text('token_endpoint_auth_method'),
    application_type: text('application_type') || 'web',
    redirect_uris: (form.get('redirect_uris') ?? '').replace(/\r\n?/g, '\n').trim(),
    grant_types: FORM_GRANTS.filter((g) => form.has(g.name)).map((g) => g.grant),
    scope: text('scope').split(/\s+/).filter(Boolean).join(' '),
    resource_scope: text('resource_scope').split(/\s+/).filter(Boolean).join(' '),
    tls_client_auth_subject_dn: text('tls_client_auth_subject_dn'),
    jwks_uri: text('jwks_uri'),
    break_glass_allowed: form.has('break_glass_allowed'),
  };
}

/**
 * The client metadata the form asks for, or the errors found before oidc-provider and our policy
 * look at it (the form's own rules: a choice from the list, one line, a length). Without the
 * authorization_code grant the client has no response types: a workload with no redirect URIs.
 */
export function clientMetadataFrom(v: ClientFormValues): { metadata: Record<string, unknown> } | { errors: ClientFormErrors } {
  const errors: ClientFormErrors = {};
  const lines = v.redirect_uris ? v.redirect_uris.split('\n').map((l) => l.trim()).filter(Boolean) : [];
  for (const field of ['client_id', 'client_name', 'scope', 'resource_scope', 'tls_client_auth_subject_dn', 'jwks_uri'] as const) {
    if (v[field].length > MAX_TEXT) errors[field] = `${field} must be at most ${MAX_TEXT} characters`;
    else if (CONTROLS.test(v[field])) errors[field] = `${field} must be one line without control characters`;
  }
  if (!(FORM_AUTH_METHODS as readonly string[]).includes(v.token_endpoint_auth_method)) {
    errors.token_endpoint_auth_method = `token_endpoint_auth_method must be one of ${FORM_AUTH_METHODS.join(', ')}`;
  }
  if (!(FORM_APPLICATION_TYPES as readonly string[]).includes(v.application_type)) errors.application_type = 'application_type must be web or native';
  if (lines.length > MAX_REDIRECT_URIS) errors.redirect_uris = `redirect_uris must list at most ${MAX_REDIRECT_URIS} URIs`;
  else if (lines.some((l) => l.length > MAX_TEXT || CONTROLS.test(l))) errors.redirect_uris = 'redirect_uris must be one URI per line';
  if (!v.grant_types.length) errors.grant_types = 'grant_types: choose at least one';
  if (Object.keys(errors).length) return { errors };

  const code = v.grant_types.includes('authorization_code');
  const metadata: Record<string, unknown> = {
    ...(v.client_id ? { client_id: v.client_id } : {}),
    ...(v.client_name ? { client_name: v.client_name } : {}),
    token_endpoint_auth_method: v.token_endpoint_auth_method,
    application_type: v.application_type,
    grant_types: v.grant_types,
    response_types: code ? ['code'] : [],
    redirect_uris: lines,
    ...(v.scope ? { scope: v.scope } : {}),
    ...(v.resource_scope ? { resource_scope: v.resource_scope } : {}),
    ...(v.tls_client_auth_subject_dn ? { tls_client_auth_subject_dn: v.tls_client_auth_subject_dn } : {}),
    ...(v.jwks_uri ? { jwks_uri: v.jwks_uri } : {}),
    ...(v.break_glass_allowed ? { break_glass_allowed: true } : {}),
  };
  return { metadata };
}

/** Metadata names that are shown on the form under another field. */
const SHOWN_AS: Record<string, ClientFormField> = {
  response_types: 'grant_types',
  tls_client_auth: 'tls_client_auth_subject_dn',
  tls_client_certificate_bound_access_tokens: 'token_endpoint_auth_method',
  client_secret: 'token_endpoint_auth_method',
};

/**
 * The field a validation message is about: the name it starts with (our policy and registration
 * messages do), else the first form field it names; undefined for a message about the whole client.
 */
export function fieldOfMessage(message: string): ClientFormField | undefined {
  const first = /^([a-z][a-z0-9_]*)\b/.exec(message)?.[1];
  if (first && (CLIENT_FORM_FIELDS as readonly string[]).includes(first)) return first as ClientFormField;
  if (/^client \S+ already exists/.test(message)) return 'client_id';
  const named = CLIENT_FORM_FIELDS.find((f) => new RegExp(`\\b${f}\\b`).test(message));
  if (named) return named;
  return first ? SHOWN_AS[first] : undefined;
}
