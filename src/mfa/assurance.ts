// Authentication assurance: the documented `acr` values, their order, and RFC 8176 `amr` values.
//
// acr values (ordered, weakest first; a requirement is met by its level or a stronger one):
//   urn:clinical-authz:acr:pwd  password only (single factor)
//   urn:clinical-authz:acr:phr  phishing-resistant multi-factor: a WebAuthn passkey with user
//                               verification, after a password or on its own (possession + PIN/biometric)

/** Password only (single factor). */
export const ACR_PASSWORD = 'urn:clinical-authz:acr:pwd';
/** Phishing-resistant MFA: a WebAuthn assertion with user verification (origin-bound, so not phishable). */
export const ACR_PHISHING_RESISTANT = 'urn:clinical-authz:acr:phr';
export const ACR_VALUES = [ACR_PASSWORD, ACR_PHISHING_RESISTANT] as const;
export const AMR_PASSWORD = ['pwd'] as const;

const LEVEL: Record<string, number> = { [ACR_PASSWORD]: 1, [ACR_PHISHING_RESISTANT]: 2 };

/** 0 for anything we do not issue: an unknown acr satisfies no requirement. */
export function acrLevel(acr: string | undefined): number {
  return acr ? LEVEL[acr] ?? 0 : 0;
}

/** The known acr values of a request (acr_values, a rule), weakest first; unknown values are dropped. */
export function knownAcrValues(values: Iterable<string>): string[] {
  return [...new Set(values)].filter((v) => acrLevel(v) > 0).sort((a, b) => acrLevel(a) - acrLevel(b));
}

/** Met when `acr` is at least as strong as the weakest acceptable value (an empty list asks nothing). */
export function acrSatisfies(acr: string | undefined, acceptable: readonly string[]): boolean {
  const known = knownAcrValues(acceptable);
  if (!acceptable.length) return true;
  if (!known.length) return acr !== undefined && acceptable.includes(acr);
  return acrLevel(acr) >= acrLevel(known[0]);
}

/** How a WebAuthn credential is kept: device-bound keys count as hardware, synced passkeys as software. */
export type PasskeyKind = 'singleDevice' | 'multiDevice';

/** RFC 8176 amr for a sign-in that ended with a user-verified passkey assertion. */
export function passkeyAmr(kind: PasskeyKind, withPassword: boolean): string[] {
  return [...(withPassword ? ['pwd'] : []), kind === 'singleDevice' ? 'hwk' : 'swk', 'user', 'mfa'];
}

/** What a step-up rule or an authorization request demands of a sign-in. */
export interface AuthenticationRequirement {
  /** Acceptable acr values (the weakest known one sets the level). */
  acrValues: string[];
  /** Maximum age of the authentication, seconds. */
  maxAge?: number | undefined;
}

export interface Authentication {
  acr?: string | undefined;
  /** Seconds since the epoch. */
  authTime?: number | undefined;
}

/** Why an authentication does not meet a requirement, or undefined when it does. */
export function unmetBy(requirement: AuthenticationRequirement, auth: Authentication, nowSeconds = Math.floor(Date.now() / 1000)):
  'acr' | 'max_age' | undefined {
  if (!acrSatisfies(auth.acr, requirement.acrValues)) return 'acr';
  if (requirement.maxAge !== undefined && (auth.authTime === undefined || nowSeconds - auth.authTime > requirement.maxAge)) return 'max_age';
  return undefined;
}

/** Every acr value we issue at `level` or stronger (what a challenge tells the client to ask for). */
export function acrValuesAtLeast(level: number): string[] {
  return ACR_VALUES.filter((v) => acrLevel(v) >= level);
}

/** The strictest of several requirements: the strongest level, the shortest age. */
export function strictest(requirements: readonly AuthenticationRequirement[]): AuthenticationRequirement | undefined {
  if (!requirements.length) return undefined;
  let level = 0;
  let maxAge: number | undefined;
  for (const r of requirements) {
    const weakest = knownAcrValues(r.acrValues)[0];
    level = Math.max(level, acrLevel(weakest));
    if (r.maxAge !== undefined) maxAge = maxAge === undefined ? r.maxAge : Math.min(maxAge, r.maxAge);
  }
  return { acrValues: level ? acrValuesAtLeast(level) : [], ...(maxAge !== undefined ? { maxAge } : {}) };
}
