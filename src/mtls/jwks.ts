// self_signed_tls_client_auth (RFC 8705 §2.2): the certificate's key is one the client registered.
import { createPublicKey, type JsonWebKey, type X509Certificate } from 'node:crypto';

export interface ClientJwks {
  keys: ReadonlyArray<JsonWebKey & { x5c?: string[]; use?: string }>;
}

/**
 * True when the leaf's public key (SPKI) equals one of the registered keys. A key that carries `x5c`
 * must also have the presented certificate as its first element; a key with `use` other than `sig`,
 * or that cannot be imported, matches nothing.
 * (oidc-provider's own check compares `x5t#S256` of the JWKS's x5c only, so it needs x5c registered.)
 */
export function matchesJwks(leaf: X509Certificate, jwks: ClientJwks | undefined): boolean {
  const spki = leaf.publicKey.export({ type: 'spki', format: 'der' });
  for (const jwk of jwks?.keys ?? []) {
    if (jwk.use !== undefined && jwk.use !== 'sig') continue;
    if (jwk.kty === 'oct' || jwk.kty === undefined) continue;
    let keySpki: Buffer;
    try {
      const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...publicJwk } = jwk; // never treat a private key as registered key material
      keySpki = createPublicKey({ key: publicJwk, format: 'jwk' }).export({ type: 'spki', format: 'der' });
    } catch {
      continue;
    }
    if (!keySpki.equals(spki)) continue;
    if (jwk.x5c !== undefined) {
      const first = jwk.x5c[0];
      if (typeof first !== 'string' || !x5cEquals(first, leaf)) continue;
    }
    return true;
  }
  return false;
}

function x5cEquals(x5c: string, leaf: X509Certificate): boolean {
  // x5c members are standard base64 DER (RFC 7517 §4.7), not base64url.
  return /^[A-Za-z0-9+/]+={0,2}$/.test(x5c) && Buffer.from(x5c, 'base64').equals(leaf.raw);
}
