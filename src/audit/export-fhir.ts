// Stored audit events as FHIR R4 AuditEvent resources in one `collection` Bundle, written piece by
// piece so that an export of any size streams. Codes are those the FHIR AuditEvent examples use:
// DICOM (DCM) event types and subtypes, v3-ActReason purposes of use, the HL7 audit code systems.
//
// type (DCM), first rule that matches:
//   breakglass.started / breakglass.ended   110113 Security Alert, subtype DCM 110127 Emergency Override
//                                           Started / 110138 Emergency Override Stopped (FHIR example
//                                           "example-breakglass-start")
//   introspection.*                         110112 Query
//   outcome failure/denied/error, rate_limit.*, audit.* (tamper), *.replayed
//                                           110113 Security Alert
//   login.* / logout.* / session.*         110114 User Authentication, subtype DCM 110122 Login / 110123 Logout
//   patient.*                               110110 Patient Record
//   admin.*                                 110113 Security Alert, subtype DCM 110137 User Security Attributes
//                                           Changed (admin.user_*) or 110129 Security Configuration (others)
//   token.* / code.* / grant.* / consent.* / client.*
//                                           110114 User Authentication (the OAuth authorization lifecycle)
//   anything else                           110100 Application Activity
// Every event also carries its own type as a subtype in urn:clinical-authz:audit-event-type.
import { randomUUID } from 'node:crypto';

import type { AuditDetailValue } from './event.ts';
import type { ExportedAuditEvent } from './export-jsonl.ts';

export const DCM_SYSTEM = 'http://dicom.nema.org/resources/ontology/DCM';
export const EVENT_TYPE_SYSTEM = 'urn:clinical-authz:audit-event-type';
export const PATIENT_PSEUDONYM_SYSTEM = 'urn:clinical-authz:patient-pseudonym';
export const USER_ID_SYSTEM = 'urn:clinical-authz:user-id';
export const CLIENT_ID_SYSTEM = 'urn:clinical-authz:client-id';
export const AUDIENCE_SYSTEM = 'urn:clinical-authz:audience';
export const REQUEST_ID_SYSTEM = 'urn:clinical-authz:request-id';
export const CERT_THUMBPRINT_SYSTEM = 'urn:clinical-authz:x5t-s256';
/** Extension on the client agent: the RFC 8705 x5t#S256 thumbprint of its TLS client certificate. */
export const CERT_THUMBPRINT_EXTENSION = 'urn:clinical-authz:fhir:extension:client-certificate-thumbprint';
export const ACT_REASON_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';
const ENTITY_TYPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/audit-entity-type';
const OBJECT_ROLE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/object-role';
const SOURCE_TYPE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/security-source-type';
const SECURITY_ROLE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/extra-security-role-type';
const BALP_ENTITY_TYPE_SYSTEM = 'https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType';
/** Audit records are identified by their UUID. */
const URI_SYSTEM = 'urn:ietf:rfc:3986';

export const OBSERVER = 'clinical-authz';

// ---- the subset of FHIR R4 this export writes ----

export interface Coding {
  system?: string;
  code?: string;
  display?: string;
}
export interface CodeableConcept {
  coding?: Coding[];
  text?: string;
}
export interface Identifier {
  system?: string;
  value?: string;
}
export interface Reference {
  identifier?: Identifier;
  display?: string;
}
export interface Extension {
  url: string;
  valueIdentifier?: Identifier;
}
export interface AuditEventAgent {
  extension?: Extension[];
  type?: CodeableConcept;
  who?: Reference;
  requestor: boolean;
  network?: { address?: string; type?: '1' | '2' | '3' | '4' | '5' };
  purposeOfUse?: CodeableConcept[];
}
export interface AuditEventEntity {
  what?: Reference;
  type?: Coding;
  role?: Coding;
  detail?: { type: string; valueString: string }[];
}
export interface FhirAuditEvent {
  resourceType: 'AuditEvent';
  id: string;
  type: Coding;
  subtype?: Coding[];
  action?: 'C' | 'R' | 'U' | 'D' | 'E';
  recorded: string;
  outcome?: '0' | '4' | '8' | '12';
  outcomeDesc?: string;
  purposeOfEvent?: CodeableConcept[];
  agent: AuditEventAgent[];
  source: { observer: Reference; type?: Coding[] };
  entity?: AuditEventEntity[];
}

// ---- codes ----

const dcm = (code: string, display: string): Coding => ({ system: DCM_SYSTEM, code, display });

export const DCM_CODES = {
  applicationActivity: dcm('110100', 'Application Activity'),
  patientRecord: dcm('110110', 'Patient Record'),
  query: dcm('110112', 'Query'),
  securityAlert: dcm('110113', 'Security Alert'),
  userAuthentication: dcm('110114', 'User Authentication'),
  login: dcm('110122', 'Login'),
  logout: dcm('110123', 'Logout'),
  emergencyOverrideStarted: dcm('110127', 'Emergency Override Started'),
  securityConfiguration: dcm('110129', 'Security Configuration'),
  userSecurityAttributesChanged: dcm('110137', 'User security Attributes Changed'),
  emergencyOverrideStopped: dcm('110138', 'Emergency Override Stopped'),
  sourceRoleId: dcm('110153', 'Source Role ID'),
} as const;

const PURPOSES: Record<string, string> = {
  ETREAT: 'Emergency Treatment',
  BTG: 'break the glass',
  TREAT: 'treatment',
};

const prefix = (type: string) => type.slice(0, type.indexOf('.'));

/** The DCM event type (and DCM subtype, if any) of an event type and outcome. */
export function dicomType(type: string, outcome: string): { type: Coding; subtype?: Coding } {
  if (type === 'breakglass.started') return { type: DCM_CODES.securityAlert, subtype: DCM_CODES.emergencyOverrideStarted };
  if (type === 'breakglass.ended') return { type: DCM_CODES.securityAlert, subtype: DCM_CODES.emergencyOverrideStopped };
  const family = prefix(type);
  if (family === 'introspection') return { type: DCM_CODES.query };
  if (outcome !== 'success' || family === 'rate_limit' || family === 'audit' || type.endsWith('.replayed')) {
    return { type: DCM_CODES.securityAlert };
  }
  if (family === 'login') return { type: DCM_CODES.userAuthentication, subtype: DCM_CODES.login };
  if (family === 'logout' || family === 'session') return { type: DCM_CODES.userAuthentication, subtype: DCM_CODES.logout };
  if (family === 'patient') return { type: DCM_CODES.patientRecord };
  if (family === 'admin') {
    return {
      type: DCM_CODES.securityAlert,
      subtype: type.startsWith('admin.user_') ? DCM_CODES.userSecurityAttributesChanged : DCM_CODES.securityConfiguration,
    };
  }
  if (['token', 'code', 'grant', 'consent', 'client'].includes(family)) return { type: DCM_CODES.userAuthentication };
  return { type: DCM_CODES.applicationActivity };
}

/** C/R/U/D/E from the event type's last word (issued, user_created: C; revoked: D; keys_rotated: U; read: R; else E). */
export function auditAction(type: string): NonNullable<FhirAuditEvent['action']> {
  if (['breakglass', 'login', 'logout', 'session', 'introspection'].includes(prefix(type))) return 'E';
  const verb = type.split(/[._]/).pop()!; // admin.user_created: created
  if (/^(created|registered|issued|given|added|applied|refreshed)$/.test(verb)) return 'C';
  if (/^(revoked|deleted|removed|purged)$/.test(verb)) return 'D';
  if (/^(updated|rotated|changed)$/.test(verb)) return 'U';
  if (/^(read|viewed|accessed|searched)$/.test(verb)) return 'R';
  return 'E';
}

/** 0 success, 4 minor failure (refused, failed), 8 serious failure (errors and high-severity refusals). */
export function auditOutcome(outcome: string, severity: string): NonNullable<FhirAuditEvent['outcome']> {
  if (outcome === 'success') return '0';
  return outcome === 'error' || severity === 'high' ? '8' : '4';
}

function purposesOfUse(value: AuditDetailValue | undefined): CodeableConcept[] {
  const codes = Array.isArray(value) ? value : typeof value === 'string' ? [value] : [];
  return [...new Set(codes)].filter((code) => PURPOSES[code] !== undefined)
    .map((code) => ({ coding: [{ system: ACT_REASON_SYSTEM, code, display: PURPOSES[code] }] }));
}

function detailText(value: AuditDetailValue): string | undefined {
  if (value === null) return undefined;
  const text = Array.isArray(value) ? value.join(' ') : String(value);
  return text.trim() === '' ? undefined : text; // FHIR strings are never empty
}

// ---- the resource ----

export function toFhirAuditEvent(event: ExportedAuditEvent): FhirAuditEvent {
  const classified = dicomType(event.type, event.outcome);
  const purposes = purposesOfUse(event.details.purpose_of_use);
  const network = event.sourceIp ? { address: event.sourceIp, type: '2' as const } : undefined; // 2: IP address

  const agents: AuditEventAgent[] = [];
  if (event.actorUser) {
    agents.push({
      type: { coding: [{ system: SECURITY_ROLE_SYSTEM, code: 'humanuser', display: 'human user' }] },
      who: { identifier: { system: USER_ID_SYSTEM, value: event.actorUser } },
      requestor: true,
    });
  }
  if (event.actorClient) {
    agents.push({
      ...(event.actorCertThumbprint ? {
        extension: [{
          url: CERT_THUMBPRINT_EXTENSION,
          valueIdentifier: { system: CERT_THUMBPRINT_SYSTEM, value: event.actorCertThumbprint },
        }],
      } : {}),
      type: { coding: [DCM_CODES.sourceRoleId] },
      who: { identifier: { system: CLIENT_ID_SYSTEM, value: event.actorClient } },
      requestor: !event.actorUser,
    });
  }
  if (agents.length === 0) {
    // AuditEvent needs an agent: one known only by where it came from (or the admin console).
    agents.push({ who: { display: event.details.via === 'cli' ? 'admin CLI' : 'unidentified' }, requestor: true });
  }
  const requestor = agents[0]!;
  if (network) requestor.network = network;
  if (purposes.length) requestor.purposeOfUse = purposes;

  const entities: AuditEventEntity[] = [];
  if (event.patientPseudonym) {
    entities.push({
      what: { identifier: { system: PATIENT_PSEUDONYM_SYSTEM, value: event.patientPseudonym } },
      type: { system: ENTITY_TYPE_SYSTEM, code: '1', display: 'Person' },
      role: { system: OBJECT_ROLE_SYSTEM, code: '1', display: 'Patient' },
    });
  }
  for (const audience of (event.targetAudience ?? '').split(/\s+/).filter(Boolean)) {
    entities.push({
      what: { identifier: { system: AUDIENCE_SYSTEM, value: audience } },
      type: { system: ENTITY_TYPE_SYSTEM, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE_SYSTEM, code: '13', display: 'Security Resource' },
    });
  }
  if (event.targetClient) {
    entities.push({
      what: { identifier: { system: CLIENT_ID_SYSTEM, value: event.targetClient } },
      type: { system: ENTITY_TYPE_SYSTEM, code: '2', display: 'System Object' },
      role: { system: OBJECT_ROLE_SYSTEM, code: '11', display: 'Security User Entity' },
    });
  }
  if (event.requestId) {
    entities.push({
      what: { identifier: { system: REQUEST_ID_SYSTEM, value: event.requestId } },
      type: { system: BALP_ENTITY_TYPE_SYSTEM, code: 'XrequestId', display: 'transport specific unique identifier where http X-Request-Id is used' },
    });
  }
  // The audit record itself: its place in the hash chain, severity and structured details.
  const detail: { type: string; valueString: string }[] = [
    { type: 'seq', valueString: String(event.seq) },
    { type: 'severity', valueString: event.severity },
    { type: 'prevHash', valueString: event.prevHash },
    { type: 'hash', valueString: event.hash },
  ];
  for (const [key, value] of Object.entries(event.details)) {
    const text = detailText(value);
    if (text !== undefined) detail.push({ type: key, valueString: text });
  }
  entities.push({
    what: { identifier: { system: URI_SYSTEM, value: `urn:uuid:${event.id}` } },
    type: { system: ENTITY_TYPE_SYSTEM, code: '2', display: 'System Object' },
    detail,
  });

  return {
    resourceType: 'AuditEvent',
    id: event.id,
    type: classified.type,
    subtype: [...(classified.subtype ? [classified.subtype] : []), { system: EVENT_TYPE_SYSTEM, code: event.type }],
    action: auditAction(event.type),
    recorded: event.occurredAt,
    outcome: auditOutcome(event.outcome, event.severity),
    ...(event.rule ? { outcomeDesc: event.rule } : {}),
    ...(purposes.length ? { purposeOfEvent: purposes } : {}),
    agent: agents,
    source: {
      observer: { display: OBSERVER },
      type: [{ system: SOURCE_TYPE_SYSTEM, code: '6', display: 'Security Server' }],
    },
    entity: entities,
  };
}

/**
 * A Bundle (type collection) written in pieces: head(), then entry() per event, then tail(). The
 * `entry` array is opened with the first entry only (FHIR allows no empty arrays).
 */
export class FhirBundleWriter {
  private entries = 0;

  constructor(private readonly timestamp = new Date(), private readonly id: string = randomUUID()) {}

  get count(): number {
    return this.entries;
  }

  head(): string {
    return `{"resourceType":"Bundle","id":${JSON.stringify(this.id)},"type":"collection","timestamp":${JSON.stringify(this.timestamp.toISOString())}`;
  }

  entry(event: ExportedAuditEvent): string {
    const separator = this.entries === 0 ? ',"entry":[\n' : ',\n';
    this.entries += 1;
    return separator + JSON.stringify({ fullUrl: `urn:uuid:${event.id}`, resource: toFhirAuditEvent(event) });
  }

  tail(): string {
    return this.entries === 0 ? '}\n' : '\n]}\n';
  }
}
