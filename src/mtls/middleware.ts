// Finds the client certificate of a request, once, before anything else looks at it:
// - the TLS handshake on our own listener (always wins: a header never overrides a real handshake);
// - else, only from a configured TLS-terminating proxy and only when enabled, a certificate header.
// Certificate headers are then removed from the request in every case, so nothing downstream can
// read a client-supplied value; presentedCertificate(req) is the single source of truth, readable
// synchronously (oidc-provider's features.mTLS.getCertificate(ctx) is synchronous).
import type { X509Certificate } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls';

import type Koa from 'koa';

import { currentRequestContext } from '../audit/request-context.ts';
import { isTrustedPeer, proxyList } from '../http/trusted-proxies.ts';
import { MAX_PRESENTED_CHAIN, certificateFromDer, presented, type PresentedCertificate } from './certificate.ts';
import {
  DEFAULT_NGINX_CERT_HEADER,
  MalformedCertificateHeader,
  RFC9440_CERT_HEADER,
  RFC9440_CHAIN_HEADER,
  parseNginxEscapedPem,
  parseRfc9440,
  type HeaderCertificates,
} from './proxy-headers.ts';

export type CertificateHeaderFormat = 'rfc9440' | 'nginx';
export type CertificateProblem = 'malformed_certificate_header';

export interface ClientCertificateOptions {
  /** Believe certificate headers from `trustedProxies`. Default false: only the TLS socket counts. */
  fromHeaders?: boolean;
  /** Proxy addresses / CIDR ranges (TRUSTED_PROXIES syntax). */
  trustedProxies?: string[];
  /**
   * Which header the proxy sets: RFC 9440 `Client-Cert` (+ `Client-Cert-Chain`), or nginx's
   * `$ssl_client_escaped_cert` in `nginxHeader`. Only that one is read; the others are dropped.
   * Default 'rfc9440'.
   */
  headerFormat?: CertificateHeaderFormat;
  /** Header name for the nginx format. Default `x-ssl-client-cert`. */
  nginxHeader?: string;
  /** Certificate headers arrived from a peer that is not a trusted proxy (they have been removed). Called once per request. */
  onUntrustedHeader?: (ctx: Koa.Context, headerNames: string[]) => void | Promise<void>;
  /** A trusted proxy sent a certificate header that does not parse (the request continues without certificate). */
  onMalformedHeader?: (ctx: Koa.Context, headerNames: string[], error: MalformedCertificateHeader) => void | Promise<void>;
}

interface Extraction {
  certificate?: PresentedCertificate | undefined;
  problem?: CertificateProblem | undefined;
}

const extractions = new WeakMap<IncomingMessage, Extraction>();

/** The client certificate found for this request by clientCertificates(), if any. */
export function presentedCertificate(req: IncomingMessage): PresentedCertificate | undefined {
  return extractions.get(req)?.certificate;
}

/** Why a trusted proxy's certificate header was ignored, if it was. */
export function certificateProblem(req: IncomingMessage): CertificateProblem | undefined {
  return extractions.get(req)?.problem;
}

export function clientCertificates(options: ClientCertificateOptions = {}): Koa.Middleware {
  const proxies = proxyList(options.trustedProxies ?? []);
  const format = options.headerFormat ?? 'rfc9440';
  const nginxHeader = (options.nginxHeader ?? DEFAULT_NGINX_CERT_HEADER).toLowerCase();
  if (!/^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(nginxHeader)) throw new Error(`not a header name: ${options.nginxHeader}`);
  const certificateHeaders = [...new Set([RFC9440_CERT_HEADER, RFC9440_CHAIN_HEADER, nginxHeader])];
  const readHeaders = format === 'rfc9440' ? [RFC9440_CERT_HEADER, RFC9440_CHAIN_HEADER] : [nginxHeader];

  return async (ctx, next) => {
    const req = ctx.req;
    const present = certificateHeaders.filter((name) => req.headers[name] !== undefined);
    const fromProxy = options.fromHeaders === true && isTrustedPeer(proxies, req.socket.remoteAddress ?? '');
    const values = new Map<string, string>();
    if (fromProxy) for (const name of readHeaders) if (req.headers[name] !== undefined) values.set(name, headerValue(req, name));
    for (const name of present) delete req.headers[name];

    const extraction: Extraction = {};
    extractions.set(req, extraction);
    if (present.length > 0 && !fromProxy) await options.onUntrustedHeader?.(ctx, present);

    extraction.certificate = socketCertificate(req);
    if (extraction.certificate === undefined && values.size > 0) {
      try {
        const found = headerCertificates(values, format, nginxHeader);
        if (found) extraction.certificate = presented('header', found.leaf, found.chain);
      } catch (err) {
        if (!(err instanceof MalformedCertificateHeader)) throw err;
        extraction.problem = 'malformed_certificate_header';
        await options.onMalformedHeader?.(ctx, [...values.keys()], err);
      }
    }

    const audit = currentRequestContext();
    if (audit && extraction.certificate) audit.certThumbprint = extraction.certificate.thumbprint;
    return next();
  };
}

/** Repeated header lines: node joins unknown headers with ", " already; set-cookie style arrays are joined the same way. */
function headerValue(req: IncomingMessage, name: string): string {
  const value = req.headers[name];
  return Array.isArray(value) ? value.join(', ') : (value ?? '');
}

function headerCertificates(values: Map<string, string>, format: CertificateHeaderFormat, nginxHeader: string): HeaderCertificates | undefined {
  if (format === 'rfc9440') {
    const cert = values.get(RFC9440_CERT_HEADER);
    const chain = values.get(RFC9440_CHAIN_HEADER);
    if (cert === undefined || cert.trim() === '') {
      // A chain without its leaf is a proxy bug, not "no certificate".
      if (chain !== undefined && chain.trim() !== '') throw new MalformedCertificateHeader(RFC9440_CHAIN_HEADER, 'chain without Client-Cert');
      return undefined;
    }
    return parseRfc9440(cert, chain);
  }
  const value = values.get(nginxHeader);
  if (value === undefined || value.trim() === '') return undefined; // nginx sends an empty value without a certificate
  return parseNginxEscapedPem(nginxHeader, value);
}

/**
 * The certificate of our own TLS handshake, with the chain the peer sent (issuer links, until a self-reference).
 * Node 24 quirk: when OpenSSL verified the client against the listener's `ca`, getPeerCertificate(true) has
 * no issuerCertificate at all, even if the client sent intermediates; the chain is then empty here.
 */
function socketCertificate(req: IncomingMessage): PresentedCertificate | undefined {
  const socket = req.socket as Partial<TLSSocket>;
  if (typeof socket.getPeerCertificate !== 'function') return undefined; // plain HTTP listener
  // A connection's certificate is fixed once its handshake is done (our listeners refuse
  // renegotiation: SSL_OP_NO_RENEGOTIATION), so keep-alive requests reuse the first request's reading.
  const known = perConnection.get(req.socket);
  if (known !== undefined) return known ?? undefined;
  const found = readSocketCertificate(socket);
  perConnection.set(req.socket, found ?? null);
  return found;
}

/** Each TLS connection's certificate as read on its first request (null: it sent none). */
const perConnection = new WeakMap<object, PresentedCertificate | null>();

function readSocketCertificate(socket: Partial<TLSSocket>): PresentedCertificate | undefined {
  const peer = socket.getPeerCertificate!(true) as Partial<DetailedPeerCertificate> | null;
  if (!peer?.raw || peer.raw.length === 0) return undefined; // {} when the client sent no certificate
  const leaf = certificateFromDer(peer.raw);
  const chain: X509Certificate[] = [];
  let link = peer as DetailedPeerCertificate;
  while (chain.length < MAX_PRESENTED_CHAIN) {
    const issuer = link.issuerCertificate as DetailedPeerCertificate | undefined;
    if (!issuer?.raw || issuer === link || issuer.raw.equals(link.raw)) break;
    chain.push(certificateFromDer(issuer.raw));
    link = issuer;
  }
  return presented('socket', leaf, chain, socket.authorized === true);
}
