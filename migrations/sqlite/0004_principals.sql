-- An approval and its request_id belong to the agent principal that asked: a key, or all
-- the keys of a tenant created with the same name (a key and the keys that rotate it).
-- Another principal's Decide with the same request_id is a request of its own, and never
-- sees the approval. SQLite cannot drop a table's UNIQUE constraint, so `approvals` is
-- rebuilt with (tenant, principal, request_id) unique instead of (tenant, request_id).
ALTER TABLE api_keys ADD COLUMN name TEXT;

DROP VIEW approval_current;

CREATE TABLE approvals_v3 (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant           TEXT NOT NULL,
    id               TEXT NOT NULL,
    integration_id   TEXT NOT NULL,
    tool_name        TEXT NOT NULL,
    arguments_json   TEXT NOT NULL,
    arguments_sha256 TEXT NOT NULL,
    requester_id     TEXT NOT NULL,
    request_id       TEXT NOT NULL,
    -- The roles required when the approval was asked for (an event may change them).
    required_roles   TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    created_by_key   TEXT NOT NULL,
    -- 'name:<name>' for a named key, 'key:<id>' for one without a name.
    principal        TEXT NOT NULL,
    UNIQUE (tenant, id),
    -- The same principal's request_id never creates a second approval.
    UNIQUE (tenant, principal, request_id)
);

-- Approvals made before keys had names belong to the key that asked.
INSERT INTO approvals_v3 (seq, tenant, id, integration_id, tool_name, arguments_json,
    arguments_sha256, requester_id, request_id, required_roles, created_at, expires_at,
    created_by_key, principal)
SELECT seq, tenant, id, integration_id, tool_name, arguments_json, arguments_sha256,
    requester_id, request_id, required_roles, created_at, expires_at, created_by_key,
    'key:' || created_by_key
FROM approvals;

DROP TABLE approvals;
ALTER TABLE approvals_v3 RENAME TO approvals;

CREATE INDEX approvals_by_expiry ON approvals (expires_at);
CREATE INDEX approvals_by_tenant_seq ON approvals (tenant, seq);

-- The view adds the principal and when the approval last changed (a consumed approval's
-- `updated_at` is when it was consumed).
CREATE VIEW approval_current AS
SELECT h.seq, h.tenant, h.id, h.integration_id, h.tool_name, h.arguments_json,
    h.arguments_sha256, h.requester_id, h.request_id, h.created_at, h.expires_at,
    h.created_by_key, h.principal,
    coalesce(e.version, 0) AS version,
    coalesce(e.state, 'pending') AS state,
    coalesce(e.required_roles, h.required_roles) AS required_roles,
    e.consumed_by_request,
    coalesce(e.steps, '[]') AS steps,
    coalesce(e.created_at, h.created_at) AS updated_at
FROM approvals h
LEFT JOIN approval_events e ON e.tenant = h.tenant AND e.approval_id = h.id
    AND e.version = (SELECT max(m.version) FROM approval_events m
                     WHERE m.tenant = h.tenant AND m.approval_id = h.id);
