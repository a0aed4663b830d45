// RFC 8705 §2.1.2 tls_client_auth: does the certificate carry the registered subject DN or SAN?
// Synchronous: oidc-provider's certificateSubjectMatches(ctx, property, expected) is.
//
// Certificate side: the DER subject and SAN extension are decoded by @peculiar/x509 (never node's
// `subject` text, which is newline-separated and in the opposite order of RFC 4514).
// Registered side: RFC 4514 strings are parsed here, strictly. @peculiar/x509's `Name(string)` parser is
// not used for them because it silently skips what it does not understand and mis-decodes escapes
// (`\2C` -> "2C", `\\,` ends nowhere, `O=b\nCN=a` -> O="" + CN=a), which is not acceptable for matching.
import 'reflect-metadata'; // must precede @peculiar/x509
import type { X509Certificate } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import * as x509 from '@peculiar/x509';

import { peculiarView, perCertificate } from './parsed.ts';

export type SubjectProperty =
  | 'tls_client_auth_subject_dn'
  | 'tls_client_auth_san_dns'
  | 'tls_client_auth_san_uri'
  | 'tls_client_auth_san_ip'
  | 'tls_client_auth_san_email';

/** One RDN: its attributes as `oid=normalised value`, sorted (attribute order inside an RDN is not significant). */
export type DistinguishedName = string[][];

// RFC 4514 §3 keywords plus the usual extras (OpenSSL / @peculiar names), matched case-insensitively.
const ATTRIBUTE_TYPES = new Map<string, string>(Object.entries({
  CN: '2.5.4.3', COMMONNAME: '2.5.4.3',
  SN: '2.5.4.4', SURNAME: '2.5.4.4',
  SERIALNUMBER: '2.5.4.5',
  C: '2.5.4.6', COUNTRYNAME: '2.5.4.6',
  L: '2.5.4.7', LOCALITYNAME: '2.5.4.7',
  ST: '2.5.4.8', S: '2.5.4.8', STATEORPROVINCENAME: '2.5.4.8',
  STREET: '2.5.4.9', STREETADDRESS: '2.5.4.9',
  O: '2.5.4.10', ORGANIZATIONNAME: '2.5.4.10',
  OU: '2.5.4.11', ORGANIZATIONALUNITNAME: '2.5.4.11',
  T: '2.5.4.12', TITLE: '2.5.4.12',
  POSTALCODE: '2.5.4.17',
  G: '2.5.4.42', GN: '2.5.4.42', GIVENNAME: '2.5.4.42',
  I: '2.5.4.43', INITIALS: '2.5.4.43',
  GENERATIONQUALIFIER: '2.5.4.44',
  DNQUALIFIER: '2.5.4.46',
  PSEUDONYM: '2.5.4.65',
  ORGANIZATIONIDENTIFIER: '2.5.4.97',
  DC: '0.9.2342.19200300.100.1.25', DOMAINCOMPONENT: '0.9.2342.19200300.100.1.25',
  UID: '0.9.2342.19200300.100.1.1', USERID: '0.9.2342.19200300.100.1.1',
  E: '1.2.840.113549.1.9.1', EMAIL: '1.2.840.113549.1.9.1', EMAILADDRESS: '1.2.840.113549.1.9.1',
}));

const KEYWORD = /[A-Za-z][A-Za-z0-9-]*/y;
const NUMERIC_OID = /(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+/y;
const HEXSTRING = /#((?:[0-9A-Fa-f]{2})+)/y;
const SPECIALS = '\\"+,;<> #=';
const MUST_ESCAPE = '"+,;<>\\';

function attributeOid(type: string): string | undefined {
  if (/^[0-9]/.test(type)) return type;
  return ATTRIBUTE_TYPES.get(type.toUpperCase());
}

/** caseIgnoreMatch, simplified (RFC 4518): compatibility-normalised, trimmed, inner spaces collapsed, lowercased. */
function normaliseValue(value: string): string {
  return value.normalize('NFKC').trim().replace(/\s+/g, ' ').toLowerCase();
}

function attribute(oid: string, value: string, hex: boolean): string {
  return `${oid}=${hex ? `#${value.toLowerCase()}` : normaliseValue(value)}`;
}

/**
 * Parses an RFC 4514 string (most specific RDN first) into comparable form, in the same order.
 * Tolerates spaces after `,` and `+` (a common way of writing DNs); anything else not in RFC 4514
 * (unknown keyword, unescaped special, bad escape, invalid UTF-8, control character) gives undefined.
 */
export function parseDistinguishedName(dn: string): DistinguishedName | undefined {
  const rdns: DistinguishedName = [];
  if (dn.trim() === '') return rdns;
  let rdn: string[] = [];
  let pos = 0;
  const skipSpaces = () => {
    while (dn[pos] === ' ') pos += 1;
  };
  for (;;) {
    skipSpaces();
    NUMERIC_OID.lastIndex = pos;
    KEYWORD.lastIndex = pos;
    const typeMatch = NUMERIC_OID.exec(dn) ?? KEYWORD.exec(dn);
    if (!typeMatch) return undefined;
    const oid = attributeOid(typeMatch[0]);
    if (oid === undefined) return undefined;
    pos += typeMatch[0].length;
    if (dn[pos] !== '=') return undefined;
    pos += 1;

    HEXSTRING.lastIndex = pos;
    const hex = dn[pos] === '#' ? HEXSTRING.exec(dn) : null;
    if (hex) {
      pos += hex[0].length;
      rdn.push(attribute(oid, hex[1]!, true));
    } else {
      const bytes: number[] = [];
      while (pos < dn.length && dn[pos] !== ',' && dn[pos] !== '+') {
        const ch = dn[pos]!;
        if (ch === '\\') {
          const next = dn[pos + 1];
          const pair = dn.slice(pos + 1, pos + 3);
          if (/^[0-9A-Fa-f]{2}$/.test(pair)) {
            bytes.push(Number.parseInt(pair, 16));
            pos += 3;
          } else if (next !== undefined && SPECIALS.includes(next)) {
            bytes.push(next.charCodeAt(0));
            pos += 2;
          } else {
            return undefined;
          }
        } else {
          if (MUST_ESCAPE.includes(ch)) return undefined;
          const codePoint = dn.codePointAt(pos)!;
          const text = String.fromCodePoint(codePoint);
          bytes.push(...Buffer.from(text, 'utf8'));
          pos += text.length;
        }
      }
      let value: string;
      try {
        value = new TextDecoder('utf-8', { fatal: true }).decode(Uint8Array.from(bytes));
      } catch {
        return undefined;
      }
      if (/[\u0000-\u001f\u007f]/.test(value)) return undefined;
      rdn.push(attribute(oid, value, false));
    }

    if (pos >= dn.length) break;
    const separator = dn[pos];
    pos += 1;
    if (separator === ',') {
      rdns.push(rdn.sort());
      rdn = [];
    }
  }
  rdns.push(rdn.sort());
  return rdns;
}

/** True when `dn` is an RFC 4514 string this module can match (use it to validate registrations). */
export function isValidSubjectDn(dn: string): boolean {
  return parseDistinguishedName(dn) !== undefined;
}

/** The certificate's subject in comparable form, RFC 4514 order (most specific RDN first). */
export const certificateSubject = perCertificate((leaf: X509Certificate): DistinguishedName =>
  peculiarView(leaf).subjectName
    .toJSON()
    .reverse()
    .map((rdn) =>
      Object.entries(rdn)
        .flatMap(([type, values]) => {
          const oid = attributeOid(type) ?? type; // @peculiar names the types it knows, else gives the OID
          return values.map((value) => (value.startsWith('#') ? attribute(oid, value.slice(1), true) : attribute(oid, value, false)));
        })
        .sort(),
    ));

function sameDn(a: DistinguishedName, b: DistinguishedName): boolean {
  return a.length === b.length && a.every((rdn, i) => {
    const other = b[i]!;
    return rdn.length === other.length && rdn.every((atv, j) => atv === other[j]);
  });
}

/** The certificate's SAN entries of one kind (empty when there is no SAN or it cannot be decoded). */
function sanValues(leaf: X509Certificate, type: 'dns' | 'url' | 'ip' | 'email'): string[] {
  try {
    const san = peculiarView(leaf).getExtension(x509.SubjectAlternativeNameExtension);
    return (san?.names.items ?? []).filter((name) => name.type === type).map((name) => name.value);
  } catch {
    return []; // an undecodable SAN matches nothing
  }
}

/** RFC 5952 form for IPv6, dotted quad for IPv4; undefined for anything else. */
export function canonicalIp(ip: string): string | undefined {
  const trimmed = ip.trim();
  if (isIPv4(trimmed)) return trimmed;
  if (isIPv6(trimmed) && !trimmed.includes('%')) return new URL(`http://[${trimmed}]/`).hostname.slice(1, -1);
  return undefined;
}

function canonicalEmail(email: string): string {
  const at = email.lastIndexOf('@');
  return at < 0 ? email : `${email.slice(0, at)}@${email.slice(at + 1).toLowerCase()}`;
}

/**
 * RFC 8705 §2.1.2: the registered value of `property` matches the certificate.
 * Subject DN: RFC 4514 compared attribute by attribute (types as OIDs, values case- and space-insensitive,
 * RDN order significant). SANs: dns case-insensitive, ip canonicalised, uri exact, email with a
 * case-insensitive domain. Anything unparsable matches nothing.
 */
export function subjectMatches(leaf: X509Certificate, property: SubjectProperty, expected: string): boolean {
  switch (property) {
    case 'tls_client_auth_subject_dn': {
      const wanted = parseDistinguishedName(expected);
      return wanted !== undefined && wanted.length > 0 && sameDn(certificateSubject(leaf), wanted);
    }
    case 'tls_client_auth_san_dns':
      return expected !== '' && sanValues(leaf, 'dns').some((name) => name.toLowerCase() === expected.toLowerCase());
    case 'tls_client_auth_san_uri':
      return expected !== '' && sanValues(leaf, 'url').includes(expected);
    case 'tls_client_auth_san_ip': {
      const wanted = canonicalIp(expected);
      return wanted !== undefined && sanValues(leaf, 'ip').some((ip) => canonicalIp(ip) === wanted);
    }
    case 'tls_client_auth_san_email':
      return expected.includes('@') && sanValues(leaf, 'email').some((email) => canonicalEmail(email) === canonicalEmail(expected));
    default:
      return false;
  }
}
