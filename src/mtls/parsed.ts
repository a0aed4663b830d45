// One @peculiar/x509 view per certificate object. Parsing DER with asn1js is the costly part of path
// validation and subject matching; a certificate object (a connection's leaf, a trust anchor) is
// immutable, so its parsed view is kept as long as the object lives.
import 'reflect-metadata'; // must precede @peculiar/x509
import type { X509Certificate } from 'node:crypto';
import * as x509 from '@peculiar/x509';

const views = new WeakMap<X509Certificate, x509.X509Certificate>();

export function peculiarView(cert: X509Certificate): x509.X509Certificate {
  let view = views.get(cert);
  if (!view) {
    view = new x509.X509Certificate(cert.raw);
    views.set(cert, view);
  }
  return view;
}

/** Memoises a pure function of a certificate object. */
export function perCertificate<T>(compute: (cert: X509Certificate) => T): (cert: X509Certificate) => T {
  const results = new WeakMap<X509Certificate, T>();
  return (cert) => {
    if (results.has(cert)) return results.get(cert)!;
    const value = compute(cert);
    results.set(cert, value);
    return value;
  };
}
