-- RFC 8693 token exchange policies: which actor client may exchange which subject tokens for which
-- audience, with what scope ceiling, lifetime and delegation depth. One row per actor client and
-- audience; deny by default (no row, no exchange).
--
-- No foreign keys to clients / resource_servers: a seed applies clients last, and a policy naming a
-- client or resource server that is gone simply permits nothing. upsertExchangePolicy
-- (src/exchange/policies.ts) checks that they exist when the CLI or the seed writes a policy.
CREATE TABLE exchange_policies (
  actor_client_id     text        NOT NULL,
  -- A resource server identifier (resource_servers.identifier), compared as text.
  audience            text        NOT NULL,
  -- Clients whose tokens the actor may exchange; empty: none by client.
  subject_client_ids  text[]      NOT NULL DEFAULT '{}',
  -- Or tokens of users having one of these roles; empty: none by role.
  subject_roles       text[]      NOT NULL DEFAULT '{}',
  -- SMART scope ceiling for this audience: space-separated resource scopes, normalised (v2 text).
  scope               text        NOT NULL,
  max_ttl_seconds     integer     NOT NULL DEFAULT 300 CHECK (max_ttl_seconds BETWEEN 1 AND 3600),
  -- How many actors a delegation chain may hold (1: only this actor, no re-delegation).
  max_depth           integer     NOT NULL DEFAULT 1 CHECK (max_depth BETWEEN 1 AND 5),
  allow_break_glass   boolean     NOT NULL DEFAULT false,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (actor_client_id, audience)
);
