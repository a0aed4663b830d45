-- Tamper-evident audit log: append-only, each record chained to the previous one by a keyed hash.
CREATE TABLE audit_events (
  seq                    bigint      PRIMARY KEY CHECK (seq > 0),
  id                     uuid        NOT NULL UNIQUE,
  occurred_at            timestamptz NOT NULL,
  type                   text        NOT NULL CHECK (type ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
  outcome                text        NOT NULL CHECK (outcome IN ('success', 'failure', 'denied', 'error')),
  severity               text        NOT NULL CHECK (severity IN ('info', 'warning', 'high')),
  actor_user             text,
  actor_client           text,
  actor_cert_thumbprint  text,
  target_client          text,
  target_audience        text,
  patient_pseudonym      text,
  rule                   text,
  request_id             text,
  source_ip              text,
  details                jsonb       NOT NULL DEFAULT '{}'::jsonb,
  prev_hash              text        NOT NULL,
  hash                   text        NOT NULL
);
CREATE INDEX audit_events_occurred_at ON audit_events (occurred_at);
CREATE INDEX audit_events_request_id ON audit_events (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX audit_events_actor_user ON audit_events (actor_user) WHERE actor_user IS NOT NULL;
CREATE INDEX audit_events_actor_client ON audit_events (actor_client) WHERE actor_client IS NOT NULL;

-- Append-only in the database itself: no UPDATE, DELETE or TRUNCATE, whoever asks.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_events_no_update_delete BEFORE UPDATE OR DELETE ON audit_events
  FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
  FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
