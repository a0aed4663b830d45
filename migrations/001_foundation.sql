-- Foundation: oidc-provider storage, clients, resource servers, users and login throttling.

-- Every model oidc-provider stores (sessions, interactions, codes, tokens, grants, replay detection, ...).
CREATE TABLE oidc_payloads (
  model        text        NOT NULL,
  id           text        NOT NULL,
  payload      jsonb       NOT NULL,
  grant_id     text,
  user_code    text,
  uid          text,
  expires_at   timestamptz,
  consumed_at  timestamptz,
  PRIMARY KEY (model, id)
);
CREATE INDEX oidc_payloads_grant_id ON oidc_payloads (grant_id) WHERE grant_id IS NOT NULL;
CREATE INDEX oidc_payloads_uid ON oidc_payloads (model, uid) WHERE uid IS NOT NULL;
CREATE INDEX oidc_payloads_user_code ON oidc_payloads (model, user_code) WHERE user_code IS NOT NULL;
CREATE INDEX oidc_payloads_expires_at ON oidc_payloads (expires_at) WHERE expires_at IS NOT NULL;

-- Registered clients: RFC 7591 metadata plus our own fields, validated by oidc-provider on load.
CREATE TABLE clients (
  client_id   text        PRIMARY KEY,
  metadata    jsonb       NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Resource servers (RFC 8707 resource indicators) that receive JWT access tokens (RFC 9068).
CREATE TABLE resource_servers (
  identifier          text        PRIMARY KEY,
  name                text        NOT NULL,
  scope               text        NOT NULL,
  access_token_format text        NOT NULL DEFAULT 'jwt' CHECK (access_token_format IN ('jwt', 'opaque')),
  access_token_ttl    integer     CHECK (access_token_ttl IS NULL OR access_token_ttl BETWEEN 1 AND 3600),
  created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
  id             text        PRIMARY KEY,
  username       text        NOT NULL,
  password_hash  text        NOT NULL,
  display_name   text,
  fhir_user      text,
  roles          text[]      NOT NULL DEFAULT '{}',
  disabled       boolean     NOT NULL DEFAULT false,
  created_at     timestamptz NOT NULL DEFAULT now(),
  updated_at     timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT users_username_normalised CHECK (username = lower(username))
);
CREATE UNIQUE INDEX users_username ON users (username);

-- Failed-login counters per username, known or not (so a lock does not reveal which usernames exist).
-- The username is stored as a keyed hash: a password typed into the username field must not land here.
CREATE TABLE login_throttle (
  username_hash    text        PRIMARY KEY,
  failures         integer     NOT NULL DEFAULT 0,
  last_failure_at  timestamptz NOT NULL DEFAULT now(),
  locked_until     timestamptz
);
