-- Every process caches a few rarely-changing tables (src/db/read-cache.ts). Whoever changes them
-- (a server process, the CLI, psql), the change is announced on channel authz_table_changed with the
-- table's name when its transaction commits, and each process drops what it cached of that table.
CREATE FUNCTION notify_table_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('authz_table_changed', TG_TABLE_NAME);
  RETURN NULL;
END
$$;

CREATE TRIGGER clients_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON clients
  FOR EACH STATEMENT EXECUTE FUNCTION notify_table_changed();
CREATE TRIGGER resource_servers_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON resource_servers
  FOR EACH STATEMENT EXECUTE FUNCTION notify_table_changed();
CREATE TRIGGER exchange_policies_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON exchange_policies
  FOR EACH STATEMENT EXECUTE FUNCTION notify_table_changed();
CREATE TRIGGER step_up_rules_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON step_up_rules
  FOR EACH STATEMENT EXECUTE FUNCTION notify_table_changed();
CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON users
  FOR EACH STATEMENT EXECUTE FUNCTION notify_table_changed();
