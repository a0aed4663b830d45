// WebAuthn ceremonies on @simplewebauthn/server: registration and authentication with user
// verification required, challenges from our single-use store, counters checked by us (so a clone is
// named as such), and every refusal with a reason an audit event can carry.
import {
  generateAuthenticationOptions,
  generateRegistrationOptions,
  verifyAuthenticationResponse,
  verifyRegistrationResponse,
  type AuthenticationResponseJSON,
  type PublicKeyCredentialCreationOptionsJSON,
  type PublicKeyCredentialRequestOptionsJSON,
  type RegistrationResponseJSON,
} from '@simplewebauthn/server';
import { decodeClientDataJSON } from '@simplewebauthn/server/helpers';
import { z } from 'zod';

import type { Queryable } from '../db/index.ts';
import { consumeChallenge, issueChallenge, type Ceremony, type ConsumedChallenge } from './challenges.ts';
import { addCredential, findCredential, MAX_CREDENTIALS_PER_USER, recordUse, type StoredCredential } from './credentials.ts';

export interface RelyingParty {
  rpId: string;
  rpName: string;
  origins: string[];
  challengeTtlSeconds: number;
}

export type WebAuthnRefusal =
  | 'malformed' // not a WebAuthn answer we can read
  | 'challenge_invalid' // unknown, expired, reused (replay), or issued elsewhere
  | 'unknown_credential'
  | 'wrong_user' // a credential of another user than the one signing in
  | 'verification_failed' // origin, RP id, signature, user verification
  | 'counter_regression' // the authenticator's counter went backwards: a cloned key
  | 'credential_exists'
  | 'too_many_credentials';

export class WebAuthnError extends Error {
  override name = 'WebAuthnError';
  readonly reason: WebAuthnRefusal;
  /** The credential concerned, when known (audit). */
  readonly credentialId: string | undefined;
  /** The challenge this answer used up, when it was a valid one (who was signing in, in which step). */
  issued: ConsumedChallenge | undefined;

  constructor(reason: WebAuthnRefusal, message: string, credentialId?: string, issued?: ConsumedChallenge) {
    super(message);
    this.reason = reason;
    this.credentialId = credentialId;
    this.issued = issued;
  }
}

const B64URL = z.string().regex(/^[A-Za-z0-9_-]+={0,2}$/).max(16_384);
// Only the shape is checked here; the library does the WebAuthn parsing and verification.
const RegistrationJson = z.object({
  id: B64URL, rawId: B64URL, type: z.literal('public-key'),
  response: z.object({ clientDataJSON: B64URL, attestationObject: B64URL, transports: z.array(z.string().max(32)).max(8).optional() }).loose(),
}).loose();
const AuthenticationJson = z.object({
  id: B64URL, rawId: B64URL, type: z.literal('public-key'),
  response: z.object({ clientDataJSON: B64URL, authenticatorData: B64URL, signature: B64URL, userHandle: B64URL.optional() }).loose(),
}).loose();

/** Parses the JSON a page posted (a form field); anything else is `malformed`. */
export function parseRegistration(text: string | undefined): RegistrationResponseJSON {
  return parseJson(text, RegistrationJson) as unknown as RegistrationResponseJSON;
}
export function parseAuthentication(text: string | undefined): AuthenticationResponseJSON {
  return parseJson(text, AuthenticationJson) as unknown as AuthenticationResponseJSON;
}

function parseJson<T>(text: string | undefined, schema: z.ZodType<T>): T {
  if (!text || text.length > 64_000) throw new WebAuthnError('malformed', 'no passkey answer was received');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw new WebAuthnError('malformed', 'the passkey answer is not valid JSON');
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new WebAuthnError('malformed', 'the passkey answer is not a WebAuthn credential');
  return parsed.data;
}

function challengeOf(clientDataJSON: string): string {
  try {
    return decodeClientDataJSON(clientDataJSON).challenge;
  } catch {
    throw new WebAuthnError('malformed', 'the passkey answer is not a WebAuthn credential');
  }
}

export async function registrationOptions(db: Queryable, rp: RelyingParty, input: {
  binding: string; user: { id: string; username: string; displayName: string | undefined }; existing: readonly StoredCredential[];
}): Promise<PublicKeyCredentialCreationOptionsJSON> {
  if (input.existing.length >= MAX_CREDENTIALS_PER_USER) {
    throw new WebAuthnError('too_many_credentials', `at most ${MAX_CREDENTIALS_PER_USER} passkeys per user`);
  }
  const { bytes: challenge } = await issueChallenge(db, { ceremony: 'registration', binding: input.binding, userId: input.user.id, ttlSeconds: rp.challengeTtlSeconds });
  return generateRegistrationOptions({
    rpName: rp.rpName,
    rpID: rp.rpId,
    // The user handle is our opaque user id: no name or e-mail in the authenticator's handle.
    userID: new TextEncoder().encode(input.user.id),
    userName: input.user.username,
    userDisplayName: input.user.displayName ?? input.user.username,
    challenge,
    timeout: rp.challengeTtlSeconds * 1000,
    attestationType: 'none',
    excludeCredentials: input.existing.map((c) => ({ id: c.id, transports: c.transports as never })),
    authenticatorSelection: { residentKey: 'required', userVerification: 'required' },
    supportedAlgorithmIDs: [-7, -8, -257],
  });
}

/** Verifies and stores a new passkey for `userId`; the challenge must have been issued for that user here. */
export async function verifyRegistration(db: Queryable, rp: RelyingParty, input: {
  binding: string; userId: string; response: RegistrationResponseJSON; name: string;
}): Promise<StoredCredential> {
  const challenge = challengeOf(input.response.response.clientDataJSON);
  const issued = await consumeChallenge(db, challenge, ['registration'], input.binding);
  if (!issued || issued.userId !== input.userId) throw new WebAuthnError('challenge_invalid', 'the passkey request expired or was already used; try again');
  let verification;
  try {
    verification = await verifyRegistrationResponse({
      response: input.response,
      expectedChallenge: challenge,
      expectedOrigin: rp.origins,
      expectedRPID: rp.rpId,
      requireUserVerification: true,
    });
  } catch {
    throw new WebAuthnError('verification_failed', 'the passkey could not be verified');
  }
  if (!verification.verified) throw new WebAuthnError('verification_failed', 'the passkey could not be verified');
  const info = verification.registrationInfo;
  const credential = {
    id: info.credential.id,
    userId: input.userId,
    publicKey: info.credential.publicKey,
    signCount: info.credential.counter,
    transports: (input.response.response.transports ?? []).slice(0, 8),
    deviceType: info.credentialDeviceType,
    backedUp: info.credentialBackedUp,
    aaguid: info.aaguid,
    name: input.name,
  };
  if (!await addCredential(db, credential)) throw new WebAuthnError('credential_exists', 'this passkey is already registered', credential.id);
  return { ...credential, createdAt: new Date(), lastUsedAt: undefined };
}

export async function authenticationOptions(db: Queryable, rp: RelyingParty, input: {
  ceremony: Exclude<Ceremony, 'registration'>; binding: string; userId?: string | undefined; allow: readonly StoredCredential[];
}): Promise<PublicKeyCredentialRequestOptionsJSON> {
  const { bytes: challenge } = await issueChallenge(db, { ceremony: input.ceremony, binding: input.binding, userId: input.userId, ttlSeconds: rp.challengeTtlSeconds });
  return generateAuthenticationOptions({
    rpID: rp.rpId,
    challenge,
    timeout: rp.challengeTtlSeconds * 1000,
    userVerification: 'required',
    // Empty for passwordless: the authenticator offers its discoverable credentials for this RP.
    allowCredentials: input.allow.map((c) => ({ id: c.id, transports: c.transports as never })),
  });
}

export interface VerifiedAssertion {
  credential: StoredCredential;
  userId: string;
  ceremony: Ceremony;
}

/**
 * Verifies an assertion for one of `ceremonies` issued at `binding`. When the challenge named a user,
 * the credential must be that user's; passwordless challenges name none and the credential decides.
 */
export async function verifyAssertion(db: Queryable, rp: RelyingParty, input: {
  ceremonies: readonly Exclude<Ceremony, 'registration'>[]; binding: string; response: AuthenticationResponseJSON;
}): Promise<VerifiedAssertion> {
  const challenge = challengeOf(input.response.response.clientDataJSON);
  // Burnt before anything else: a challenge gets one answer, right or wrong.
  const issued = await consumeChallenge(db, challenge, input.ceremonies, input.binding);
  if (!issued) throw new WebAuthnError('challenge_invalid', 'the passkey request expired or was already used; try again');
  const refuse = (reason: WebAuthnRefusal, message: string, credentialId?: string) => new WebAuthnError(reason, message, credentialId, issued);
  const credential = await findCredential(db, input.response.id);
  if (!credential) throw refuse('unknown_credential', 'this passkey is not registered here');
  if (issued.userId !== undefined && credential.userId !== issued.userId) {
    throw refuse('wrong_user', 'this passkey belongs to another account', credential.id);
  }
  let verification;
  try {
    verification = await verifyAuthenticationResponse({
      response: input.response,
      expectedChallenge: challenge,
      expectedOrigin: rp.origins,
      expectedRPID: rp.rpId,
      // Counter 0 here turns off the library's own check: ours below names a regression as a clone.
      credential: { id: credential.id, publicKey: credential.publicKey, counter: 0, transports: credential.transports as never },
      requireUserVerification: true,
    });
  } catch {
    throw refuse('verification_failed', 'the passkey could not be verified', credential.id);
  }
  const { verified, authenticationInfo } = verification;
  if (!verified || !authenticationInfo.userVerified) throw refuse('verification_failed', 'the passkey could not be verified', credential.id);
  const next = authenticationInfo.newCounter;
  // WebAuthn §6.1.1: an authenticator that counts must count up; 0 and 0 means it does not count.
  if ((next > 0 || credential.signCount > 0) && next <= credential.signCount) {
    throw refuse('counter_regression', 'this passkey reported an old signature counter and may have been copied', credential.id);
  }
  if (!await recordUse(db, credential.id, credential.signCount, next, authenticationInfo.credentialBackedUp)) {
    throw refuse('counter_regression', 'this passkey was used twice at once', credential.id);
  }
  return { credential: { ...credential, signCount: next }, userId: credential.userId, ceremony: issued.ceremony };
}
