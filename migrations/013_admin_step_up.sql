-- Admin API tokens need a recent passkey sign-in: the login prompt asks for it (RFC 9470 step-up) before
-- a code for the admin resource is issued, and the API checks the token's acr again.
INSERT INTO step_up_rules (audience, acr_values, max_age)
VALUES ('urn:clinical-authz:admin', ARRAY['urn:clinical-authz:acr:phr'], 900)
ON CONFLICT DO NOTHING;
