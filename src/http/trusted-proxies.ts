// Forwarded headers are believed only from configured proxies. From any other peer they are removed
// before anything reads them, and the client address is the TCP peer: a client cannot choose the
// address that rate limits and audit records see, nor the scheme and host of generated URLs.
import { BlockList, isIPv4, isIPv6 } from 'node:net';

import type Koa from 'koa';

const FORWARDED_HEADERS = ['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host', 'x-forwarded-port', 'forwarded'];

function normalise(address: string): string {
  return address.startsWith('::ffff:') && isIPv4(address.slice(7)) ? address.slice(7) : address;
}

export function proxyList(entries: string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address, prefix] = entry.split('/');
    const type = isIPv4(address ?? '') ? 'ipv4' : isIPv6(address ?? '') ? 'ipv6' : undefined;
    if (!type || !address) throw new Error(`TRUSTED_PROXIES: not an address or CIDR range: ${entry}`);
    if (prefix === undefined) list.addAddress(address, type);
    else list.addSubnet(address, Number(prefix), type);
  }
  return list;
}

function isTrusted(list: BlockList, address: string): boolean {
  const a = normalise(address);
  return list.check(a, isIPv4(a) ? 'ipv4' : 'ipv6');
}

/** True when the TCP peer address (IPv4-mapped IPv6 normalised) is in the proxy list; false for non-addresses. */
export function isTrustedPeer(list: BlockList, address: string): boolean {
  const a = normalise(address);
  return (isIPv4(a) || isIPv6(a)) && isTrusted(list, a);
}

/** Sets ctx.request.ip to the real client address and strips forwarded headers from untrusted peers. */
export function trustedProxies(enabled: boolean, entries: string[]): Koa.Middleware {
  const list = proxyList(entries);
  return async (ctx, next) => {
    const peer = normalise(ctx.req.socket.remoteAddress ?? '');
    if (!enabled || !isTrusted(list, peer)) {
      for (const header of FORWARDED_HEADERS) delete ctx.req.headers[header];
      ctx.request.ip = peer;
      return next();
    }
    // Proxies append: walk from the right past our own proxies to the first address they did not add.
    const chain = (ctx.get('x-forwarded-for') || '').split(',').map((a) => normalise(a.trim())).filter(Boolean);
    let client = peer;
    for (let i = chain.length - 1; i >= 0; i -= 1) {
      client = chain[i]!;
      if (!isTrusted(list, client)) break;
    }
    ctx.request.ip = client;
    return next();
  };
}
