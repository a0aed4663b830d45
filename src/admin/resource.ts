// The admin API as a resource server: its audience, scopes and the role that may hold them.
export const ADMIN_RESOURCE = 'urn:clinical-authz:admin';
export const ADMIN_READ = 'admin:read';
export const ADMIN_WRITE = 'admin:write';
export const ADMIN_ROLE = 'admin';
