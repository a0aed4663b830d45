// oidc-provider's router matches paths ASCII case-insensitively and tolerates one trailing slash, so
// every check we make in front of it must compare the same normal form (`/TOKEN/` is `/token`).
export function providerEndpoint(path: string): string {
  const trimmed = path.length > 1 && path.endsWith('/') ? path.slice(0, -1) : path;
  return trimmed.replace(/[A-Z]/g, (c) => c.toLowerCase());
}
