// Real-browser harness (playwright-core + Debian's /usr/bin/chromium) with a CDP virtual WebAuthn authenticator.
//
// TLS, checked empirically with Chromium 156 headless against the dev PKI (self-signed dev CA, leaf for localhost):
// - Chromium rejects WebAuthn on pages with certificate errors ("NotAllowedError: WebAuthn is not supported on sites
//   with TLS certificate errors."), e.g. a non-localhost host opened with Playwright's `ignoreHTTPSErrors`.
//   That check is skipped for localhost, and skipped whenever a CDP virtual authenticator is attached, so
//   `ignoreHTTPSErrors` alone happens to work for these tests, but only thanks to those exemptions.
// - We use `--ignore-certificate-errors-spki-list=<base64 SHA-256 of the leaf's SubjectPublicKeyInfo>` instead:
//   Chromium then treats the connection as valid (no cert error, isSecureContext true), so create/get work on
//   https://localhost:<port> (and any other host name with that key), with or without an authenticator, while
//   every other certificate is still verified. No NSS database/certutil (extra apt package) is needed.
// - Without any trust, page.goto fails with net::ERR_CERT_AUTHORITY_INVALID.
import { X509Certificate, createHash } from 'node:crypto';
import { existsSync } from 'node:fs';

import { chromium, type Browser, type CDPSession, type Page } from 'playwright-core';

export type { Browser, Page };

// playwright-core's package "exports" hide its `Protocol` typings, so derive the credential type from
// CDPSession.send (a type-only declaration: nothing exists at runtime). Same shape as Protocol.WebAuthn.Credential.
declare const cdpSession: CDPSession;
export type WebAuthnCredential = Awaited<ReturnType<typeof cdpSession.send<'WebAuthn.getCredentials'>>>['credentials'][number];

export const CHROMIUM_PATH = '/usr/bin/chromium';

/** Tests skip (with this as the reason) when false: `test(..., { skip: browserAvailable() ? false : NO_BROWSER })`. */
export function browserAvailable(): boolean {
  return existsSync(CHROMIUM_PATH);
}
export const NO_BROWSER = `no Chromium at ${CHROMIUM_PATH} (apt-get install chromium)`;

/** base64 SHA-256 of the certificate's DER SubjectPublicKeyInfo: the `--ignore-certificate-errors-spki-list` format. */
export function spkiHash(certPem: string): string {
  const spki = new X509Certificate(certPem).publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(spki).digest('base64');
}

export async function launchBrowser(options: { trustCertificatePem?: string[] } = {}): Promise<Browser> {
  const trusted = (options.trustCertificatePem ?? []).map(spkiHash);
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-quic',
      '--no-first-run',
      '--disable-component-update',
      '--disable-sync',
      ...(trusted.length > 0 ? [`--ignore-certificate-errors-spki-list=${trusted.join(',')}`] : []),
    ],
  });
}

export interface VirtualAuthenticator {
  cdp: CDPSession;
  authenticatorId: string;
  credentials(): Promise<WebAuthnCredential[]>;
  setUserVerified(v: boolean): Promise<void>;
  remove(): Promise<void>;
}

/** A platform (internal transport) CTAP2 authenticator on this page's target; presence is simulated automatically. */
export async function addVirtualAuthenticator(
  page: Page,
  options: { residentKeys?: boolean; userVerification?: boolean; backupEligible?: boolean } = {},
): Promise<VirtualAuthenticator> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      ctap2Version: 'ctap2_1',
      transport: 'internal',
      hasResidentKey: options.residentKeys ?? true,
      hasUserVerification: options.userVerification ?? true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
      ...(options.backupEligible === undefined ? {} : { defaultBackupEligibility: options.backupEligible }),
    },
  });
  return {
    cdp,
    authenticatorId,
    credentials: async () => (await cdp.send('WebAuthn.getCredentials', { authenticatorId })).credentials,
    setUserVerified: async (isUserVerified) => {
      await cdp.send('WebAuthn.setUserVerified', { authenticatorId, isUserVerified });
    },
    remove: async () => {
      await cdp.send('WebAuthn.removeVirtualAuthenticator', { authenticatorId });
      await cdp.detach();
    },
  };
}
