// Authentication assurance: documented `acr` values and RFC 8176 `amr` values.
/** Password only (single factor). */
export const ACR_PASSWORD = 'urn:clinical-authz:acr:pwd';
export const AMR_PASSWORD = ['pwd'] as const;
