-- A resource server that receives opaque tokens introspects them with a client of its own. That client
-- may introspect the tokens whose audience is this resource server (and nothing else).
ALTER TABLE resource_servers ADD COLUMN introspection_client_id text;
CREATE INDEX resource_servers_introspection_client ON resource_servers (introspection_client_id)
  WHERE introspection_client_id IS NOT NULL;
