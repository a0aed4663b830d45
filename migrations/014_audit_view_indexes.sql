-- The administrators' audit view (console, /admin/api/audit) also looks events up by the client they
-- were about and by the user an administrative change targeted.
CREATE INDEX audit_events_target_client ON audit_events (target_client) WHERE target_client IS NOT NULL;
CREATE INDEX audit_events_target_user ON audit_events ((details->>'target_user')) WHERE (details->>'target_user') IS NOT NULL;
