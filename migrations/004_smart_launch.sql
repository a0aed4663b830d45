-- SMART App Launch data: patients, care teams, EHR launch values, the patient context of each
-- authorization, and the SMART scope ceiling of each user role.

-- Patients known to the server, by FHIR Patient logical id (bare id: `123`, not `Patient/123`).
-- display_name is shown in the patient picker only; it never reaches the audit log.
CREATE TABLE patients (
  id            text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9.-]{1,64}$'),
  display_name  text        NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now()
);

-- Who may see which patient, and when: a user is on a patient's care team while
-- valid_from <= now < coalesce(valid_to, infinity). Ending a membership sets valid_to (history stays).
CREATE TABLE care_team (
  user_id     text        NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  patient_id  text        NOT NULL REFERENCES patients(id),
  valid_from  timestamptz NOT NULL DEFAULT now(),
  valid_to    timestamptz NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (user_id, patient_id, valid_from),
  CHECK (valid_to IS NULL OR valid_to > valid_from)
);
CREATE INDEX care_team_user ON care_team (user_id, valid_from);
CREATE INDEX care_team_patient ON care_team (patient_id);

-- EHR launch values (SMART `launch` parameter). Only the SHA-256 (base64url) of the value is stored,
-- so a copy of the table cannot be replayed.
CREATE TABLE launch_contexts (
  launch_digest  text        PRIMARY KEY,
  patient_id     text        NOT NULL REFERENCES patients(id),
  encounter_id   text        NULL,
  client_id      text        NULL, -- if set, only this client may use the launch
  user_id        text        NULL, -- if set, only this user
  created_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz NOT NULL
);
CREATE INDEX launch_contexts_expires_at ON launch_contexts (expires_at);

-- The patient context chosen for one authorization (one oidc-provider Grant), from the patient
-- picker (standalone launch) or from an EHR launch value.
CREATE TABLE grant_launch_contexts (
  grant_id            text        PRIMARY KEY,
  patient_id          text        NOT NULL,
  encounter_id        text        NULL,
  need_patient_banner boolean     NOT NULL,
  source              text        NOT NULL CHECK (source IN ('standalone', 'ehr')),
  created_at          timestamptz NOT NULL DEFAULT now(),
  expires_at          timestamptz NOT NULL
);
CREATE INDEX grant_launch_contexts_expires_at ON grant_launch_contexts (expires_at);

-- SMART scope ceiling per user role (space-separated SMART scopes, normalised). A role without a row
-- permits nothing.
CREATE TABLE role_scopes (
  role        text        PRIMARY KEY,
  scope       text        NOT NULL,
  updated_at  timestamptz NOT NULL DEFAULT now()
);
