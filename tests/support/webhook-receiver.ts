// A privacy office's webhook endpoint for tests: plain HTTP on 127.0.0.1, records every POST.
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { randomBytes } from 'node:crypto';

import { Webhook } from 'standardwebhooks';

export interface ReceivedWebhook {
  headers: IncomingHttpHeaders;
  body: string;
}

export interface WebhookReceiver {
  url: string;
  /** A Standard Webhooks secret for the server under test to sign with. */
  secret: string;
  received: ReceivedWebhook[];
  /** Resolves once `count` notifications arrived (delivery is in the background), or after `timeoutMs`. */
  waitFor(count: number, timeoutMs?: number): Promise<void>;
  /** After waitFor: exactly one notification arrived; checks its Standard Webhooks signature, returns it and its payload. */
  onlyNotification(): Promise<{ delivery: ReceivedWebhook; verified: { type: string; data: Record<string, unknown> } }>;
  /** The server environment that sends break-glass notifications here. */
  env(): Record<string, string>;
  close(): Promise<void>;
}

export async function startWebhookReceiver(path = '/privacy-office'): Promise<WebhookReceiver> {
  const received: ReceivedWebhook[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => { body += chunk; });
    req.on('end', () => {
      received.push({ headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  const url = `http://127.0.0.1:${port}${path}`;
  const secret = `whsec_${randomBytes(32).toString('base64')}`;
  return {
    url,
    secret,
    received,
    async waitFor(count, timeoutMs = 10_000) {
      const until = Date.now() + timeoutMs;
      while (received.length < count && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    },
    async onlyNotification() {
      assert.equal(received.length, 1, 'one notification');
      const delivery = received[0]!;
      const verified = new Webhook(secret).verify(delivery.body, delivery.headers as Record<string, string>) as { type: string; data: Record<string, unknown> };
      return { delivery, verified };
    },
    env: () => ({ BREAK_GLASS_WEBHOOK_URL: url, BREAK_GLASS_WEBHOOK_SECRET: secret }),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
