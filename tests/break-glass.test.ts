// Break-glass over real HTTPS against the real pages, with openid-client as the app and a software
// authenticator: the grant (read-only, one patient, short, no refresh token, purpose of use), its review
// item, audit event and signed webhook; every refusal with its status and audited rule; exchange of an
// emergency token by allowed and refused actors; instant revocation.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import * as oidc from 'openid-client';
import { Webhook } from 'standardwebhooks';
import { Agent, fetch as undiciFetch } from 'undici';

import { findUserByUsername } from '../src/accounts/users.ts';
import { endUserBreakGlass, listBreakGlassEvents, listBreakGlassTokens, openBreakGlassEvent, setBreakGlassDisabled } from '../src/break-glass/events.ts';
import { TOKEN_EXCHANGE_GRANT, TOKEN_TYPE_ACCESS_TOKEN } from '../src/exchange/decision.ts';
import { revokeWholeGrant } from '../src/oidc/adapter.ts';
import { applySeed, SeedSchema } from '../src/seed/seed.ts';
import { createLaunch } from '../src/smart/launch-contexts.ts';
import { webhookDeliveries } from '../src/notifications/webhook.ts';
import { Browser, enrolPasskey, pageOptions, type PasskeyAnswerer, type Step } from './support/login-flow.ts';
import { devCa, issueClientCertificate, type KeyPairPem } from './support/pki.ts';
import { relyingParty } from './support/relying-party.ts';
import { startWebhookReceiver, type WebhookReceiver } from './support/webhook-receiver.ts';
import { SoftAuthenticator } from './support/soft-authenticator.ts';
import { CARE_TEAM_PATIENTS, CLINICIAN, OUTSIDE_PATIENT, startTestServer, APP, type TestServer } from './support/test-server.ts';

const BG_FHIR = 'https://bg-fhir.test/r4';
const BG_APP = { client_id: 'bg-app', client_secret: 'bg-app-secret-0123456789-0123456789ab', redirect_uri: 'https://bg.test/callback' };
const ALLOWED_ACTOR = 'bg-orchestrator';
const REFUSED_ACTOR = 'plain-orchestrator';
const BARRED = { username: 'dr.barred', password: 'barred-password-123456' };
const BUSY = { username: 'dr.busy', password: 'busy-password-1234567' };
const TTL = 120;
const LIMIT = 3;
const JUSTIFICATION = 'Unconscious patient in resus, allergy history needed before induction';
const ASKED = 'openid fhirUser offline_access launch/patient patient/Observation.cruds patient/Patient.rs user/Observation.rs';

describe('break-glass emergency access', () => {
  let ts: TestServer;
  let bgApp: oidc.Configuration;
  let receiver: WebhookReceiver;
  let allowedActor: KeyPairPem;
  let refusedActor: KeyPairPem;
  const agents: Agent[] = [];
  const clinicianKey = new SoftAuthenticator();
  let origin: string;
  const answerer: PasskeyAnswerer = (options) => clinicianKey.authenticate(options, { origin });

  async function audits(type: string) {
    const { rows } = await ts.testDb.db.query<{ rule: string; severity: string; details: Record<string, unknown>; patient_pseudonym: string | null }>(
      'SELECT rule, severity, details, patient_pseudonym FROM audit_events WHERE type = $1 ORDER BY seq', [type],
    );
    return rows;
  }

  /** Starts an authorization of the break-glass app and signs in: returns the consent page and its flow. */
  async function toConsent(username: string, password: string, opts: { scope?: string; clientId?: string; passkey?: PasskeyAnswerer; extra?: Record<string, string> } = {}) {
    const browser = new Browser(ts);
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const config = opts.clientId === APP.client_id ? await relyingParty(ts) : bgApp;
    const url = oidc.buildAuthorizationUrl(config, {
      redirect_uri: opts.clientId === APP.client_id ? APP.redirect_uri : BG_APP.redirect_uri,
      scope: opts.scope ?? ASKED, resource: opts.clientId === APP.client_id ? 'https://fhir.test/r4' : BG_FHIR, state, prompt: 'consent',
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256', ...opts.extra,
    });
    const loginAnswers: unknown[] = [];
    const passkey = opts.passkey && ((options: Parameters<PasskeyAnswerer>[0]) => {
      const answer = opts.passkey!(options);
      loginAnswers.push(answer);
      return answer;
    });
    const consent = await browser.signIn(await browser.follow(await browser.get(url)), username, password, passkey);
    assert.equal(consent.status, 200, consent.body.slice(0, 400));
    const uid = /action="\/interaction\/([^/"]+)\/confirm"/.exec(consent.body)?.[1];
    assert.ok(uid, `a consent page: ${consent.body.slice(0, 300)}`);
    return { browser, consent, uid, verifier, state, loginAnswers, breakGlassUrl: new URL(`/interaction/${uid}/break-glass`, ts.issuer) };
  }

  /** The emergency form, filled as a clinician would; `credential` answers the page's own challenge unless given. */
  async function submit(flow: Awaited<ReturnType<typeof toConsent>>, fields: Record<string, string | undefined>, page?: Step): Promise<Step> {
    const form = page ?? await flow.browser.get(flow.breakGlassUrl);
    const values: Record<string, string> = {};
    const base: Record<string, string | undefined> = {
      patient: OUTSIDE_PATIENT.id, reason: 'ETREAT', justification: JUSTIFICATION, acknowledge: 'yes',
      credential: 'credential' in fields ? undefined : JSON.stringify(answerer(pageOptions(form.body, 'authenticate'))),
      ...fields,
    };
    for (const [k, v] of Object.entries(base)) if (v !== undefined) values[k] = v;
    return flow.browser.post(flow.breakGlassUrl, values);
  }

  async function refusedWith(step: Step, status: number, rule: string, message: RegExp) {
    assert.equal(step.status, status, step.body.slice(0, 400));
    assert.match(step.body, message);
    assert.equal(step.location, null, 'no redirect to the app');
    const last = (await audits('break_glass.refused')).at(-1);
    assert.equal(last?.rule, rule);
  }

  function agent(cert: KeyPairPem): Agent {
    const a = new Agent({ connect: { ca: ts.caPem, cert: cert.certPem, key: cert.keyPem } });
    agents.push(a);
    return a;
  }

  async function post(url: string, params: Record<string, string>, cert: KeyPairPem) {
    const res = await undiciFetch(url, {
      method: 'POST', body: new URLSearchParams(params).toString(), dispatcher: agent(cert),
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    return { status: res.status, body: await res.json() as Record<string, unknown> };
  }

  const exchange = (subjectToken: string, actor: string, cert: KeyPairPem, scope: string) => post(ts.endpoint('/token'), {
    grant_type: TOKEN_EXCHANGE_GRANT, client_id: actor, subject_token: subjectToken, subject_token_type: TOKEN_TYPE_ACCESS_TOKEN,
    resource: BG_FHIR, scope,
  }, cert);

  const introspect = (token: string, actor: string, cert: KeyPairPem) =>
    post(ts.endpoint('/token/introspection'), { token, client_id: actor }, cert);

  before(async () => {
    receiver = await startWebhookReceiver();
    ts = await startTestServer({
      env: {
        BREAK_GLASS_TTL: String(TTL),
        BREAK_GLASS_DAILY_LIMIT: String(LIMIT),
        ...receiver.env(),
      },
    });
    origin = new URL(ts.issuer).origin;
    const ca = await devCa(ts.keysDir);
    allowedActor = await issueClientCertificate(ca, ALLOWED_ACTOR);
    refusedActor = await issueClientCertificate(ca, REFUSED_ACTOR);
    const workload = (id: string) => ({
      client_id: id, token_endpoint_auth_method: 'tls_client_auth', tls_client_auth_subject_dn: `CN=${id}`,
      grant_types: [TOKEN_EXCHANGE_GRANT], response_types: [], redirect_uris: [],
    });
    await applySeed(ts.testDb.db, ts.server.provider(), ts.server.secrets.clientSecretKey, SeedSchema.parse({
      users: [
        { username: BARRED.username, password: BARRED.password, roles: ['clinician'] },
        { username: BUSY.username, password: BUSY.password, roles: ['clinician'] },
      ],
      resourceServers: [{ identifier: BG_FHIR, name: 'FHIR (writes too)', scope: 'patient/Observation.cruds patient/Patient.rs user/Observation.rs' }],
      clients: [
        {
          client_id: BG_APP.client_id, client_secret: BG_APP.client_secret, client_name: 'Emergency Viewer',
          grant_types: ['authorization_code', 'refresh_token'], redirect_uris: [BG_APP.redirect_uri],
          scope: 'openid fhirUser offline_access launch launch/patient',
          resource_scope: 'patient/Observation.cruds patient/Patient.rs user/Observation.rs',
          break_glass_allowed: true,
        },
        workload(ALLOWED_ACTOR), workload(REFUSED_ACTOR),
      ],
      exchangePolicies: [
        // The ceiling allows writes: the break-glass rule, not the policy, keeps the exchange read-only.
        { actor: ALLOWED_ACTOR, audience: BG_FHIR, subjectClients: [BG_APP.client_id], scope: 'patient/Observation.cruds', maxTtlSeconds: 3600, allowBreakGlass: true },
        { actor: REFUSED_ACTOR, audience: BG_FHIR, subjectClients: [BG_APP.client_id], scope: 'patient/Observation.rs', allowBreakGlass: false },
      ],
    }));
    bgApp = await relyingParty(ts, BG_APP.client_id, BG_APP.client_secret);
    const enrolled = await enrolPasskey(ts, CLINICIAN.username, CLINICIAN.password, (options) => clinicianKey.register(options, { origin }));
    assert.equal(enrolled.status, 303);
  });
  after(async () => {
    await Promise.all(agents.map((a) => a.close()));
    await ts?.stop();
    await receiver?.close();
  });

  let emergencyToken = '';
  let emergencyExpiresAt = 0;
  let emergencySession: Browser | undefined;

  test('a patient outside the care team: fresh passkey, reason, justification → read-only, short, labelled token; review, audit, webhook', async () => {
    const flow = await toConsent(CLINICIAN.username, CLINICIAN.password, { passkey: answerer });
    assert.match(flow.consent.body, /Patient not listed\? Emergency access \(break the glass\)/);
    assert.doesNotMatch(flow.consent.body, new RegExp(OUTSIDE_PATIENT.name), 'the picker offers the care team only');

    const page = await flow.browser.get(flow.breakGlassUrl);
    assert.equal(page.status, 200, page.body.slice(0, 300));
    assert.match(page.body, /Read and search Observation records of the patient in context/);
    const offered = /<ul>([\s\S]*?)<\/ul>/.exec(page.body)![1]!;
    assert.doesNotMatch(offered, /create|update|delete|user|you can access/i, 'no write access, no other patient');
    assert.match(page.body, /for 2 minutes and for this one patient only/);
    for (const code of ['ETREAT', 'BTG', 'PATSFTY', 'TREAT']) assert.match(page.body, new RegExp(`value="${code}"`));
    const options = pageOptions(page.body, 'authenticate');
    assert.deepEqual(options.allowCredentials?.map((c) => c.id), [clinicianKey.credentials[0]!.id], 'only the signed-in clinician\'s passkey');

    const done = await flow.browser.follow(await submit(flow, {}, page));
    assert.ok(done.location?.startsWith(BG_APP.redirect_uri), `redirected to the app: ${done.status} ${done.body.slice(0, 300)}`);
    const tokens = await oidc.authorizationCodeGrant(bgApp, new URL(done.location!), { pkceCodeVerifier: flow.verifier, expectedState: flow.state });

    assert.equal(tokens.refresh_token, undefined, 'no refresh token although offline_access was asked');
    // The access token's scope: the read-only part of patient/Observation.cruds + patient/Patient.rs; user/ dropped.
    assert.deepEqual(new Set(tokens.scope!.split(' ')), new Set(['patient/Observation.rs', 'patient/Patient.rs']));
    assert.ok(tokens.id_token, 'openid kept');
    assert.ok(tokens.expires_in! <= TTL && tokens.expires_in! >= TTL - 10, `lives ${tokens.expires_in}s`);
    assert.equal(tokens.patient, OUTSIDE_PATIENT.id);
    const info = await oidc.tokenIntrospection(bgApp, tokens.access_token);
    assert.equal(info.active, true);
    assert.equal(info.purpose_of_use, 'ETREAT');
    assert.equal(info.break_glass, true);
    assert.equal(info.patient, OUTSIDE_PATIENT.id);
    emergencyToken = tokens.access_token;
    emergencySession = flow.browser;
    emergencyExpiresAt = Number(info.exp);

    // The review item: who, which patient (pseudonym), why, the justification, which tokens followed.
    const user = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    const [event] = await listBreakGlassEvents(ts.testDb.db, { userId: user.id });
    assert.ok(event);
    assert.equal(event.reasonCode, 'ETREAT');
    assert.equal(event.justification, JUSTIFICATION);
    assert.equal(event.patientPseudonym, ts.server.audit.pseudonym('patient', OUTSIDE_PATIENT.id));
    assert.equal(event.clientId, BG_APP.client_id);
    assert.equal(event.review.status, 'open');
    assert.equal(event.credentialId, clinicianKey.credentials[0]!.id);
    assert.equal(String(info.break_glass_id), event.id);
    const followed = await listBreakGlassTokens(ts.testDb.db, event.id);
    assert.equal(followed.length, 1);
    assert.equal(followed[0]!.kind, 'access_token');
    assert.equal(followed[0]!.scope, 'patient/Observation.rs patient/Patient.rs');

    // Loud audit, never the justification or the raw patient id anywhere in the audit log.
    const [granted] = await audits('break_glass.granted');
    assert.equal(granted?.severity, 'high');
    assert.equal(granted?.rule, 'break_glass');
    assert.equal(granted?.details.purpose_of_use, 'ETREAT');
    assert.equal(granted?.details.break_glass_id, event.id);
    assert.equal(granted?.patient_pseudonym, event.patientPseudonym);
    const { rows: all } = await ts.testDb.db.query<{ row: string }>('SELECT to_jsonb(a)::text AS row FROM audit_events a');
    assert.ok(all.every((r) => !r.row.includes('resus') && !r.row.includes(`"${OUTSIDE_PATIENT.id}"`)), 'no justification or raw patient id in the audit log');

    // The privacy office's webhook: delivered in the background, signed, without free text.
    await receiver.waitFor(1);
    const { delivery, verified } = await receiver.onlyNotification();
    assert.equal(verified.type, 'break_glass.opened');
    assert.equal(verified.data.break_glass_id, event.id);
    assert.equal(verified.data.patient_pseudonym, event.patientPseudonym);
    assert.deepEqual(verified.data.purpose_of_use, { system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'ETREAT' });
    assert.ok(!delivery.body.includes('resus') && !delivery.body.includes(`"${OUTSIDE_PATIENT.id}"`), 'no justification, no raw patient id');
    assert.throws(() => new Webhook(receiver.secret).verify(delivery.body.replace('ETREAT', 'TREAT'), delivery.headers as Record<string, string>));
    const [stored] = await webhookDeliveries(ts.testDb.db, 'break_glass.opened');
    assert.ok(stored?.deliveredAt);
  });

  test('the same app, same session, afterwards: an ordinary grant of its own (the emergency grant is never reused)', async () => {
    assert.ok(emergencySession);
    const verifier = oidc.randomPKCECodeVerifier();
    const state = oidc.randomState();
    const url = oidc.buildAuthorizationUrl(bgApp, {
      redirect_uri: BG_APP.redirect_uri, scope: 'openid offline_access launch/patient patient/Observation.rs', resource: BG_FHIR, state, prompt: 'consent',
      code_challenge: await oidc.calculatePKCECodeChallenge(verifier), code_challenge_method: 'S256',
    });
    const callback = await emergencySession.authorize(url, CLINICIAN.username, CLINICIAN.password, { patient: CARE_TEAM_PATIENTS[0]!.id, passkey: answerer });
    const tokens = await oidc.authorizationCodeGrant(bgApp, callback, { pkceCodeVerifier: verifier, expectedState: state });
    assert.ok(tokens.refresh_token, 'an ordinary grant may refresh');
    assert.equal(tokens.patient, CARE_TEAM_PATIENTS[0]!.id);
    const info = await oidc.tokenIntrospection(bgApp, tokens.access_token);
    assert.equal(info.purpose_of_use, undefined);
    assert.equal(info.break_glass, undefined);
    assert.notEqual(info.break_glass_id, (await oidc.tokenIntrospection(bgApp, emergencyToken)).break_glass_id);
  });

  test('refusals: no fresh passkey (none, the login\'s, a spent challenge), no reason, no justification, no acknowledgement', async () => {
    const flow = await toConsent(CLINICIAN.username, CLINICIAN.password, { passkey: answerer });
    await refusedWith(await submit(flow, { credential: undefined }), 401, 'passkey_required', /Confirm with your passkey/);
    // The login's own assertion cannot open the glass: its challenge was for signing in, and is spent.
    await refusedWith(await submit(flow, { credential: JSON.stringify(flow.loginAnswers[0]) }), 401, 'passkey_challenge_invalid', /passkey check failed/);
    // A challenge gets one answer: a wrong one (foreign origin) burns it, a right one after that is refused.
    const page = await flow.browser.get(flow.breakGlassUrl);
    const options = pageOptions(page.body, 'authenticate');
    const foreign = clinicianKey.authenticate(options, { origin: 'https://evil.example' });
    await refusedWith(await submit(flow, { credential: JSON.stringify(foreign) }), 401, 'passkey_verification_failed', /passkey check failed/);
    await refusedWith(await submit(flow, { credential: JSON.stringify(answerer(options)) }), 401, 'passkey_challenge_invalid', /passkey check failed/);
    // The statement is checked before the passkey (a refused form burns no challenge).
    await refusedWith(await submit(flow, { reason: '' }), 400, 'reason_missing', /Choose the reason/);
    await refusedWith(await submit(flow, { reason: 'CURIOSITY' }), 400, 'reason_missing', /Choose the reason/);
    await refusedWith(await submit(flow, { justification: '  ' }), 400, 'justification_missing', /Explain in a sentence/);
    await refusedWith(await submit(flow, { justification: 'x'.repeat(2001) }), 400, 'justification_too_long', /longer than 2000/);
    // Multi-byte text near the limit is judged by its length, not cut off by the form size (9 bytes per character encoded).
    await refusedWith(await submit(flow, { justification: '患'.repeat(2001) }), 400, 'justification_too_long', /longer than 2000/);
    await refusedWith(await submit(flow, { acknowledge: undefined }), 400, 'acknowledgement_missing', /logged and reviewed/);
    await refusedWith(await submit(flow, { patient: CARE_TEAM_PATIENTS[0]!.id }), 400, 'not_needed', /on your care team/);
    await refusedWith(await submit(flow, { patient: 'nobody-here' }), 400, 'patient_unknown', /No patient has this identifier/);
    await refusedWith(await submit(flow, { patient: '' }), 400, 'patient_missing', /Enter the patient/);
    const user = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    assert.equal((await listBreakGlassEvents(ts.testDb.db, { userId: user.id })).length, 1, 'no refusal opened anything');
    assert.equal(receiver.received.length, 1, 'no refusal notified anyone');
  });

  test('refusals: client not allowed, only write scopes asked, user switched off, daily limit', async () => {
    const plain = await toConsent(CLINICIAN.username, CLINICIAN.password, { clientId: APP.client_id, passkey: answerer, scope: 'openid launch/patient patient/Observation.rs' });
    assert.doesNotMatch(plain.consent.body, /Emergency access/, 'not offered to an app that may not receive it');
    const shown = await plain.browser.get(plain.breakGlassUrl);
    assert.equal(shown.status, 403);
    assert.match(shown.body, /not allowed emergency \(break-glass\) access/);
    await refusedWith(await plain.browser.post(plain.breakGlassUrl, { patient: OUTSIDE_PATIENT.id, reason: 'ETREAT', justification: JUSTIFICATION, acknowledge: 'yes', credential: '{}' }),
      403, 'client_not_allowed', /not allowed emergency/);

    const writesOnly = await toConsent(CLINICIAN.username, CLINICIAN.password, { passkey: answerer, scope: 'openid launch/patient patient/Observation.cud' });
    const writePage = await writesOnly.browser.get(writesOnly.breakGlassUrl);
    assert.equal(writePage.status, 403);
    await refusedWith(await writesOnly.browser.post(writesOnly.breakGlassUrl, { patient: OUTSIDE_PATIENT.id, reason: 'ETREAT', justification: JUSTIFICATION, acknowledge: 'yes', credential: '{}' }),
      403, 'no_read_scope', /Emergency access is read-only/);

    const barred = (await findUserByUsername(ts.testDb.db, BARRED.username))!;
    assert.equal(await setBreakGlassDisabled(ts.testDb.db, barred.id, true), true);
    const barredFlow = await toConsent(BARRED.username, BARRED.password);
    await refusedWith(await barredFlow.browser.post(barredFlow.breakGlassUrl, { patient: OUTSIDE_PATIENT.id, reason: 'ETREAT', justification: JUSTIFICATION, acknowledge: 'yes', credential: '{}' }),
      403, 'user_disabled', /disabled for your account/);
    assert.equal((await audits('break_glass.refused')).at(-1)?.severity, 'high');

    const busy = (await findUserByUsername(ts.testDb.db, BUSY.username))!;
    for (let i = 0; i < LIMIT; i++) {
      await ts.testDb.db.transaction((tx) => openBreakGlassEvent(tx, {
        userId: busy.id, clientId: BG_APP.client_id, patientPseudonym: 'x', reasonCode: 'BTG', justification: 'earlier emergency today',
        launchKind: 'standalone', grantId: `earlier-${i}`, scope: 'patient/Observation.rs', credentialId: 'c', lifetimeSeconds: 60, dailyLimit: LIMIT,
      }));
    }
    const busyFlow = await toConsent(BUSY.username, BUSY.password);
    const busyPage = await busyFlow.browser.get(busyFlow.breakGlassUrl);
    assert.equal(busyPage.status, 429);
    await refusedWith(await busyFlow.browser.post(busyFlow.breakGlassUrl, { patient: OUTSIDE_PATIENT.id, reason: 'ETREAT', justification: JUSTIFICATION, acknowledge: 'yes', credential: '{}' }),
      429, 'limit_exceeded', /limit of 3 emergency accesses in 24 hours/);
  });

  test('EHR launch for a patient outside the care team: no Allow, emergency access for the EHR\'s patient', async () => {
    const user = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    const { launch } = await createLaunch(ts.testDb.db, { patientId: OUTSIDE_PATIENT.id, clientId: BG_APP.client_id, userId: user.id, ttlSeconds: 300 });
    const flow = await toConsent(CLINICIAN.username, CLINICIAN.password, {
      passkey: answerer, scope: 'openid launch patient/Observation.rs', extra: { launch },
    });
    assert.match(flow.consent.body, /not on your care team/);
    assert.match(flow.consent.body, /<button type="submit" disabled>Allow<\/button>/);
    assert.match(flow.consent.body, /Emergency access to this patient \(break the glass\)/);
    const page = await flow.browser.get(flow.breakGlassUrl);
    assert.doesNotMatch(page.body, /name="patient"/, 'the EHR chose the patient');
    const done = await flow.browser.follow(await submit(flow, { patient: undefined, reason: 'TREAT' }, page));
    assert.ok(done.location?.startsWith(BG_APP.redirect_uri), `${done.status} ${done.body.slice(0, 300)}`);
    const tokens = await oidc.authorizationCodeGrant(bgApp, new URL(done.location!), { pkceCodeVerifier: flow.verifier, expectedState: flow.state });
    assert.equal(tokens.patient, OUTSIDE_PATIENT.id);
    assert.equal(tokens.need_patient_banner, false);
    assert.equal((await oidc.tokenIntrospection(bgApp, tokens.access_token)).purpose_of_use, 'TREAT');
    const events = await listBreakGlassEvents(ts.testDb.db, { userId: user.id });
    assert.deepEqual(events.map((e) => [e.launchKind, e.reasonCode]), [['standalone', 'ETREAT'], ['ehr', 'TREAT']]);
  });

  test('revoked between the emergency form and the resume: the app gets access_denied, no ordinary consent', async () => {
    const user = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    const flow = await toConsent(CLINICIAN.username, CLINICIAN.password, { passkey: answerer });
    const opened = await submit(flow, {});
    assert.equal(opened.status, 303, opened.body.slice(0, 300));
    const [live] = (await listBreakGlassEvents(ts.testDb.db, { userId: user.id })).filter((e) => !e.revokedAt && e.expiresAt > new Date()).slice(-1);
    // What `break-glass revoke` does, for this one access only (the exchange test below needs the first).
    await ts.testDb.db.query('UPDATE break_glass_events SET revoked_at = now() WHERE id = $1', [live!.id]);
    await revokeWholeGrant(ts.testDb.db, live!.grantId);
    const done = await flow.browser.follow(opened);
    assert.ok(done.location?.startsWith(BG_APP.redirect_uri), `${done.status} ${done.body.slice(0, 300)}`);
    const callback = new URL(done.location!);
    assert.equal(callback.searchParams.get('error'), 'access_denied');
    assert.equal(callback.searchParams.get('error_description'), 'the emergency access has ended');
    assert.equal(callback.searchParams.get('code'), null);

    // The same for an ordinary launch: a patient chosen for a grant that is gone is chosen again.
    const ordinary = await toConsent(CLINICIAN.username, CLINICIAN.password, { passkey: answerer, scope: 'openid launch/patient patient/Observation.rs' });
    const confirm = await ordinary.browser.post(new URL(`/interaction/${ordinary.uid}/confirm`, ts.issuer), { patient: CARE_TEAM_PATIENTS[0]!.id });
    assert.equal(confirm.status, 303);
    const { rows: [grant] } = await ts.testDb.db.query<{ grant_id: string }>('SELECT grant_id FROM grant_launch_contexts ORDER BY created_at DESC LIMIT 1');
    await revokeWholeGrant(ts.testDb.db, grant!.grant_id);
    const again = await ordinary.browser.follow(confirm);
    assert.equal(again.status, 200, again.body.slice(0, 300));
    assert.match(again.body, /name="patient"/, 'the picker again, not an Allow without a patient');
  });

  test('exchange: refused for an actor not allowed, read-only and never longer for an allowed one; recorded for the review', async () => {
    assert.ok(emergencyToken, 'the first test issued an emergency token');
    const refused = await exchange(emergencyToken, REFUSED_ACTOR, refusedActor, 'patient/Observation.rs');
    assert.equal(refused.status, 400);
    assert.equal(refused.body.error, 'invalid_grant');
    assert.match(String(refused.body.error_description), /break-glass tokens may not be exchanged by this actor/);
    const { rows: [last] } = await ts.testDb.db.query<{ rule: string }>("SELECT rule FROM audit_events WHERE type = 'exchange.refused' ORDER BY seq DESC LIMIT 1");
    assert.equal(last?.rule, 'break_glass_not_allowed');

    for (const widening of ['patient/Observation.cruds', 'patient/Observation.u']) {
      const res = await exchange(emergencyToken, ALLOWED_ACTOR, allowedActor, widening);
      assert.equal(res.status, 400);
      assert.equal(res.body.error, 'invalid_scope');
      assert.match(String(res.body.error_description), /patient read scopes only/);
    }

    const ok = await exchange(emergencyToken, ALLOWED_ACTOR, allowedActor, 'patient/Observation.rs');
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.equal(ok.body.refresh_token, undefined);
    const info = await introspect(String(ok.body.access_token), ALLOWED_ACTOR, allowedActor);
    assert.equal(info.body.active, true);
    assert.ok(Number(info.body.exp) <= emergencyExpiresAt, 'no longer than the emergency access (policy allows an hour)');
    assert.equal(info.body.purpose_of_use, 'ETREAT');
    assert.equal(info.body.break_glass, true);
    assert.equal(info.body.patient, OUTSIDE_PATIENT.id);
    const [event] = await listBreakGlassEvents(ts.testDb.db, { status: 'open', userId: (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!.id });
    const followed = await listBreakGlassTokens(ts.testDb.db, event!.id);
    assert.deepEqual(followed.map((t) => [t.kind, t.clientId, t.scope]), [
      ['access_token', BG_APP.client_id, 'patient/Observation.rs patient/Patient.rs'],
      ['exchanged_token', ALLOWED_ACTOR, 'patient/Observation.rs'],
    ]);

    // Instant revocation of the user's emergency grants takes the exchanged token along.
    const user = (await findUserByUsername(ts.testDb.db, CLINICIAN.username))!;
    const ended = await endUserBreakGlass(ts.testDb.db, user.id);
    for (const { grantId } of ended) await revokeWholeGrant(ts.testDb.db, grantId);
    assert.equal(ended.length, 2, 'the standalone and the EHR emergency accesses');
    assert.equal((await oidc.tokenIntrospection(bgApp, emergencyToken)).active, false);
    assert.equal((await introspect(String(ok.body.access_token), ALLOWED_ACTOR, allowedActor)).body.active, false);
    const after = await exchange(emergencyToken, ALLOWED_ACTOR, allowedActor, 'patient/Observation.rs');
    assert.equal(after.body.error, 'invalid_grant');
  });
});
