-- The admin API (issue 8): its own resource server (audience of admin tokens), disabled clients,
-- idempotent creates, and the redacted before/after of every administrative change.

-- Admin tokens: opaque (looked up on every call, so revocation is immediate), five minutes at most.
INSERT INTO resource_servers (identifier, name, scope, access_token_format, access_token_ttl)
VALUES ('urn:clinical-authz:admin', 'Clinical AuthZ admin API', 'admin:read admin:write', 'opaque', 300)
ON CONFLICT (identifier) DO NOTHING;

-- A disabled client stays on record (audit, reviews) but is unknown to the provider.
ALTER TABLE clients ADD COLUMN disabled_at timestamptz;

-- Idempotency-Key on creates: the first answer is kept for a day and given again for the same request.
CREATE TABLE idempotency_keys (
  principal     text        NOT NULL,
  key           text        NOT NULL,
  method        text        NOT NULL,
  path          text        NOT NULL,
  request_hash  text        NOT NULL,
  status        integer     NOT NULL,
  body          jsonb       NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- Before/after of each administrative change, secrets and key material redacted. The audit event
-- names the change and carries the SHA-256 of both sides, so the chain vouches for this row.
CREATE TABLE admin_changes (
  id          text        PRIMARY KEY,
  kind        text        NOT NULL,
  target      text        NOT NULL,
  before      jsonb,
  after       jsonb,
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX admin_changes_target ON admin_changes (kind, target, created_at);
