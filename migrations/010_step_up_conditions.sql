-- Step-up rules gain conditions beyond a scope (a client, an audience) and a maximum authentication
-- age. Every condition that is set must hold for a rule to apply; at least one must be set.
ALTER TABLE step_up_rules DROP CONSTRAINT step_up_rules_pkey;
ALTER TABLE step_up_rules ALTER COLUMN scope DROP NOT NULL;
ALTER TABLE step_up_rules ADD COLUMN id bigserial PRIMARY KEY;
ALTER TABLE step_up_rules ADD COLUMN client_id text;
ALTER TABLE step_up_rules ADD COLUMN audience text;
ALTER TABLE step_up_rules ADD COLUMN max_age integer CHECK (max_age > 0);
ALTER TABLE step_up_rules ADD CONSTRAINT step_up_rules_condition
  CHECK (scope IS NOT NULL OR client_id IS NOT NULL OR audience IS NOT NULL);
CREATE UNIQUE INDEX step_up_rules_conditions
  ON step_up_rules (coalesce(scope, ''), coalesce(client_id, ''), coalesce(audience, ''));
