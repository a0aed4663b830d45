-- WebAuthn passkeys (DESIGN.md §5) and their single-use ceremony challenges.
CREATE TABLE webauthn_credentials (
  id            text        PRIMARY KEY,            -- credential id, base64url
  user_id       text        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
  public_key    bytea       NOT NULL,               -- COSE public key as the authenticator sent it
  sign_count    bigint      NOT NULL DEFAULT 0 CHECK (sign_count >= 0),
  transports    text[]      NOT NULL DEFAULT '{}',
  device_type   text        NOT NULL CHECK (device_type IN ('singleDevice', 'multiDevice')),
  backed_up     boolean     NOT NULL DEFAULT false,
  aaguid        text,
  name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
  created_at    timestamptz NOT NULL DEFAULT now(),
  last_used_at  timestamptz
);
CREATE INDEX webauthn_credentials_user ON webauthn_credentials (user_id);

-- A challenge answers exactly one ceremony, once, before it expires, where it was issued (`binding`:
-- the interaction or account session that asked for it).
CREATE TABLE webauthn_challenges (
  challenge    text        PRIMARY KEY,
  ceremony     text        NOT NULL CHECK (ceremony IN ('registration', 'second_factor', 'passwordless', 'step_up')),
  binding      text        NOT NULL,
  user_id      text        REFERENCES users (id) ON DELETE CASCADE,
  expires_at   timestamptz NOT NULL,
  consumed_at  timestamptz
);
CREATE INDEX webauthn_challenges_expiry ON webauthn_challenges (expires_at);
