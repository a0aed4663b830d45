// Why a clinician may break the glass: a fixed list from HL7 v3 ActReason (PurposeOfUse), so reviews,
// tokens and resource servers speak the same codes.
//   ETREAT  emergency treatment (the patient needs care now)
//   BTG     break the glass (urgent access that is not treatment, e.g. a critical result to act on)
//   PATSFTY patient safety (e.g. checking a suspected adverse event or wrong-patient order)
//   TREAT   treatment where the care team has not been updated yet (covering or on-call clinician)
export const PURPOSE_OF_USE_SYSTEM = 'http://terminology.hl7.org/CodeSystem/v3-ActReason';

export const BREAK_GLASS_REASONS = [
  { code: 'ETREAT', label: 'Emergency treatment' },
  { code: 'BTG', label: 'Break the glass: other urgent access' },
  { code: 'PATSFTY', label: 'Patient safety' },
  { code: 'TREAT', label: 'Treatment: I am covering and the care team is not updated yet' },
] as const;

export type BreakGlassReason = (typeof BREAK_GLASS_REASONS)[number]['code'];

export function isBreakGlassReason(value: unknown): value is BreakGlassReason {
  return BREAK_GLASS_REASONS.some((r) => r.code === value);
}
