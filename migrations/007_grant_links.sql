-- Delegation (RFC 8693): a token minted for an actor lives in a child grant that remembers the grant
-- it was derived from. Revoking a grant revokes everything derived from it, however deep.
CREATE TABLE grant_links (
  child_grant_id   text        PRIMARY KEY,
  parent_grant_id  text        NOT NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  expires_at       timestamptz NOT NULL,
  CHECK (child_grant_id <> parent_grant_id)
);
CREATE INDEX grant_links_parent ON grant_links (parent_grant_id);
CREATE INDEX grant_links_expires_at ON grant_links (expires_at);
