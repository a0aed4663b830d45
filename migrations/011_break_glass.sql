-- Break-glass emergency access (DESIGN.md §6): who opened which patient's record outside their care
-- team, why, what followed, and what the privacy office decided afterwards.

-- An administrator may take the emergency path away from one user (misuse, leave, investigation).
ALTER TABLE users ADD COLUMN break_glass_disabled boolean NOT NULL DEFAULT false;

-- The fresh passkey assertion of an emergency access is a ceremony of its own: a challenge issued for
-- signing in can never open the glass, nor the other way round.
ALTER TABLE webauthn_challenges DROP CONSTRAINT webauthn_challenges_ceremony_check;
ALTER TABLE webauthn_challenges ADD CONSTRAINT webauthn_challenges_ceremony_check
  CHECK (ceremony IN ('registration', 'second_factor', 'passwordless', 'step_up', 'break_glass'));

-- One row per emergency access granted; the review item is the same row. The justification is free
-- text written by the clinician: it lives here only (never in the audit log, logs or notifications).
-- The patient is stored as its keyed pseudonym; the raw id lives with the grant's launch context for
-- the grant's lifetime only.
CREATE TABLE break_glass_events (
  id                 text        PRIMARY KEY,
  user_id            text        NOT NULL REFERENCES users (id),
  client_id          text        NOT NULL,
  patient_pseudonym  text        NOT NULL,
  reason_code        text        NOT NULL CHECK (reason_code IN ('ETREAT', 'BTG', 'PATSFTY', 'TREAT')),
  justification      text        NOT NULL CHECK (length(justification) BETWEEN 1 AND 2000),
  launch_kind        text        NOT NULL CHECK (launch_kind IN ('standalone', 'ehr')),
  grant_id           text        NOT NULL UNIQUE,
  scope              text        NOT NULL,
  credential_id      text        NOT NULL,
  created_at         timestamptz NOT NULL DEFAULT now(),
  expires_at         timestamptz NOT NULL,
  revoked_at         timestamptz,
  review_status      text        NOT NULL DEFAULT 'open' CHECK (review_status IN ('open', 'closed')),
  review_outcome     text        CHECK (review_outcome IN ('appropriate', 'inappropriate')),
  review_note        text        CHECK (length(review_note) <= 2000),
  reviewed_by        text,
  reviewed_at        timestamptz,
  CHECK (expires_at > created_at),
  CHECK ((review_status = 'open') = (review_outcome IS NULL)),
  CHECK ((review_status = 'open') = (reviewed_at IS NULL))
);
CREATE INDEX break_glass_events_user_time ON break_glass_events (user_id, created_at);
CREATE INDEX break_glass_events_review ON break_glass_events (review_status, created_at);

-- The tokens that followed an emergency access (issued from its grant, or exchanged from those).
-- token_ref: a JWT's jti, or the keyed pseudonym of an opaque token (never a token value).
CREATE TABLE break_glass_tokens (
  event_id    text        NOT NULL REFERENCES break_glass_events (id),
  token_ref   text        NOT NULL,
  kind        text        NOT NULL CHECK (kind IN ('access_token', 'exchanged_token')),
  client_id   text        NOT NULL,
  audience    text,
  scope       text        NOT NULL,
  issued_at   timestamptz NOT NULL DEFAULT now(),
  expires_at  timestamptz NOT NULL,
  PRIMARY KEY (event_id, token_ref)
);

-- Outgoing notifications (the privacy office's webhook), delivered after the grant, retried with
-- backoff by any server process (rows are claimed with SKIP LOCKED), never blocking a request.
CREATE TABLE webhook_deliveries (
  id               text        PRIMARY KEY,
  topic            text        NOT NULL,
  url              text        NOT NULL,
  body             text        NOT NULL,
  attempts         integer     NOT NULL DEFAULT 0,
  next_attempt_at  timestamptz NOT NULL DEFAULT now(),
  delivered_at     timestamptz,
  failed_at        timestamptz,
  last_error       text,
  created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE delivered_at IS NULL AND failed_at IS NULL;
