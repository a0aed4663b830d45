-- Step-up as data (DESIGN.md §6): a SMART scope pattern, and the authentication context classes (acr)
-- a user must have signed in with before any token carrying an overlapping scope is derived for them.
CREATE TABLE step_up_rules (
  scope       text        PRIMARY KEY,
  acr_values  text[]      NOT NULL CHECK (cardinality(acr_values) > 0),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
