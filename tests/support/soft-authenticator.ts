// A software WebAuthn authenticator plus the browser-side client around it, for server tests.
// It answers the JSON options the server sends with the JSON a browser would post back, so tests
// can run real ceremonies without a browser, and its overrides (origin, rpId, challenge, type, UV,
// signCount) let negative tests forge exactly one thing at a time while the signature stays valid.
// ES256 only (P-256, ECDSA/SHA-256, DER signatures); attestation is always fmt "none".
import { createHash, generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto';

import { encodeCBOR, type CBORType } from '@levischuck/tiny-cbor';
import type {
  AuthenticationResponseJSON,
  PublicKeyCredentialCreationOptionsJSON,
  PublicKeyCredentialRequestOptionsJSON,
  RegistrationResponseJSON,
} from '@simplewebauthn/server';

export interface SoftCredential {
  /** base64url credential id */
  id: string;
  privateKey: KeyObject;
  /** The RP ID the credential was created for (the one hashed into its registration authData). */
  rpId: string;
  /** base64url, exactly as given in options.user.id */
  userHandle: string;
  signCount: number;
}

const ES256 = -7;

// authenticatorData flag bits (WebAuthn §6.1).
const FLAG_UP = 0x01;
const FLAG_UV = 0x04;
const FLAG_BE = 0x08;
const FLAG_BS = 0x10;
const FLAG_AT = 0x40;

const b64url = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64url');
const sha256 = (data: Uint8Array | string): Buffer => createHash('sha256').update(data).digest();

export class SoftAuthenticator {
  readonly credentials: SoftCredential[] = [];
  private readonly backupEligible: boolean;
  private readonly backedUp: boolean;
  private readonly aaguid: Buffer;

  /**
   * Defaults to a device-bound credential (BE=0, BS=0) and the all-zero AAGUID that "none"
   * attestation usually carries. BS without BE is allowed on purpose (the library rejects it).
   */
  constructor(options: { backupEligible?: boolean; backedUp?: boolean; aaguid?: string } = {}) {
    this.backupEligible = options.backupEligible ?? false;
    this.backedUp = options.backedUp ?? false;
    const hex = (options.aaguid ?? '00000000-0000-0000-0000-000000000000').replace(/-/g, '');
    if (!/^[0-9a-f]{32}$/i.test(hex)) throw new Error(`SoftAuthenticator: bad aaguid ${options.aaguid}`);
    this.aaguid = Buffer.from(hex, 'hex');
  }

  /** Answers PublicKeyCredentialCreationOptionsJSON like a browser at `origin`. Overrides make it wrong on purpose. */
  register(
    options: PublicKeyCredentialCreationOptionsJSON,
    at: { origin: string; rpId?: string; userVerified?: boolean; challenge?: string; type?: string },
  ): RegistrationResponseJSON {
    // A browser refuses outright when no offered algorithm is supported; mirror that.
    if (!options.pubKeyCredParams.some((p) => p.alg === ES256)) {
      throw new Error('SoftAuthenticator: options.pubKeyCredParams does not offer ES256 (-7)');
    }
    const rpId = at.rpId ?? options.rp.id ?? new URL(at.origin).hostname;
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const credentialId = randomBytes(32);
    const credential: SoftCredential = {
      id: b64url(credentialId),
      privateKey,
      rpId,
      userHandle: options.user.id,
      signCount: 0, // counter starts at 0; the first assertion reports 1
    };

    // COSE_Key EC2: {kty: EC2, alg: ES256, crv: P-256, x, y}. Map keeps insertion order, which is
    // the canonical CTAP2 order here, so the library's decode/re-encode round trip is byte-identical.
    const jwk = publicKey.export({ format: 'jwk' });
    const coseKey = new Map<number, CBORType>([
      [1, 2],
      [3, ES256],
      [-1, 1],
      [-2, Buffer.from(jwk.x ?? '', 'base64url')],
      [-3, Buffer.from(jwk.y ?? '', 'base64url')],
    ]);
    const idLength = Buffer.alloc(2);
    idLength.writeUInt16BE(credentialId.length);
    const authData = Buffer.concat([
      this.authDataHeader(rpId, FLAG_AT | this.uvFlag(at.userVerified), credential.signCount),
      this.aaguid,
      idLength,
      credentialId,
      encodeCBOR(coseKey),
    ]);
    const attestationObject = encodeCBOR(
      new Map<string, CBORType>([
        ['fmt', 'none'],
        ['attStmt', new Map()],
        ['authData', authData],
      ]),
    );
    const clientDataJSON = clientData(at.type ?? 'webauthn.create', at.challenge ?? options.challenge, at.origin);

    this.credentials.push(credential);
    return {
      id: credential.id,
      rawId: credential.id,
      type: 'public-key',
      authenticatorAttachment: 'platform',
      // A browser only reports credProps when asked (generateRegistrationOptions always asks);
      // the server does not verify client extension outputs, so this is purely cosmetic.
      clientExtensionResults: options.extensions?.credProps ? { credProps: { rk: true } } : {},
      response: {
        clientDataJSON: b64url(clientDataJSON),
        attestationObject: b64url(attestationObject),
        // The convenience fields browsers add in toJSON(); the library ignores them.
        authenticatorData: b64url(authData),
        transports: ['internal'],
        publicKeyAlgorithm: ES256,
        publicKey: b64url(publicKey.export({ format: 'der', type: 'spki' })),
      },
    };
  }

  /**
   * Answers PublicKeyCredentialRequestOptionsJSON. Picks `credentialId`, else the first
   * allowCredentials entry it holds, else (discoverable) its first credential for the rpId.
   * Increments signCount unless `signCount` is given. Includes userHandle (needed for passwordless).
   *
   * Credential lookup uses the rpId a browser would (options.rpId ?? origin host), not `at.rpId`:
   * the override only changes the hash signed into authData, so a wrong-rpId test still finds the key.
   * A given `signCount` is a forgery and leaves the stored counter alone.
   */
  authenticate(
    options: PublicKeyCredentialRequestOptionsJSON,
    at: {
      origin: string;
      rpId?: string;
      credentialId?: string;
      userVerified?: boolean;
      signCount?: number;
      challenge?: string;
      type?: string;
    },
  ): AuthenticationResponseJSON {
    const requestRpId = options.rpId ?? new URL(at.origin).hostname;
    const credential = this.pick(options, at.credentialId, requestRpId);

    let signCount: number;
    if (at.signCount === undefined) {
      credential.signCount += 1;
      signCount = credential.signCount;
    } else {
      signCount = at.signCount;
    }

    const authData = this.authDataHeader(at.rpId ?? requestRpId, this.uvFlag(at.userVerified), signCount);
    const clientDataJSON = clientData(at.type ?? 'webauthn.get', at.challenge ?? options.challenge, at.origin);
    // WebAuthn signs authData || sha256(clientDataJSON); node's default ECDSA encoding is DER, as required.
    const signature = sign('sha256', Buffer.concat([authData, sha256(clientDataJSON)]), credential.privateKey);

    return {
      id: credential.id,
      rawId: credential.id,
      type: 'public-key',
      authenticatorAttachment: 'platform',
      clientExtensionResults: {},
      response: {
        clientDataJSON: b64url(clientDataJSON),
        authenticatorData: b64url(authData),
        signature: b64url(signature),
        userHandle: credential.userHandle,
      },
    };
  }

  private pick(options: PublicKeyCredentialRequestOptionsJSON, credentialId: string | undefined, rpId: string): SoftCredential {
    const byId = (id: string) => this.credentials.find((c) => c.id === id);
    if (credentialId !== undefined) {
      const found = byId(credentialId);
      if (!found) throw new Error(`SoftAuthenticator: no credential ${credentialId}`);
      return found;
    }
    const allow = options.allowCredentials ?? [];
    // Like a browser: a non-empty allowCredentials restricts the choice; an empty one means discoverable.
    const found =
      allow.length > 0
        ? allow.map((d) => byId(d.id)).find((c) => c !== undefined)
        : this.credentials.find((c) => c.rpId === rpId);
    if (!found) throw new Error(`SoftAuthenticator: no matching credential for rpId ${rpId} (NotAllowedError)`);
    return found;
  }

  private uvFlag(userVerified: boolean | undefined): number {
    return userVerified === false ? 0 : FLAG_UV;
  }

  /** rpIdHash (32) || flags (1) || signCount (4, big-endian). UP is always set; BE/BS per constructor. */
  private authDataHeader(rpId: string, flags: number, signCount: number): Buffer {
    let all = flags | FLAG_UP;
    if (this.backupEligible) all |= FLAG_BE;
    if (this.backedUp) all |= FLAG_BS;
    const counter = Buffer.alloc(4);
    counter.writeUInt32BE(signCount);
    return Buffer.concat([sha256(rpId), Buffer.from([all]), counter]);
  }
}

/** CollectedClientData as a browser serialises it (same member order). */
function clientData(type: string, challenge: string, origin: string): Buffer {
  return Buffer.from(JSON.stringify({ type, challenge, origin, crossOrigin: false }));
}
