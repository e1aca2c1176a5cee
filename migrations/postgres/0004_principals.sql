-- An approval and its request_id belong to the agent principal that asked: a key, or all
-- the keys of a tenant created with the same name (a key and the keys that rotate it).
-- Another principal's Decide with the same request_id is a request of its own, and never
-- sees the approval.
ALTER TABLE api_keys ADD COLUMN name TEXT;

-- 'name:<name>' for a named key, 'key:<id>' for one without a name. Approvals made before
-- keys had names belong to the key that asked.
ALTER TABLE approvals ADD COLUMN principal TEXT;
UPDATE approvals SET principal = 'key:' || created_by_key;
ALTER TABLE approvals ALTER COLUMN principal SET NOT NULL;
ALTER TABLE approvals ADD CONSTRAINT approvals_tenant_principal_request_id_key
    UNIQUE (tenant, principal, request_id);
ALTER TABLE approvals DROP CONSTRAINT approvals_tenant_request_id_key;

-- The view adds the principal and when the approval last changed (a consumed approval's
-- `updated_at` is when it was consumed).
DROP VIEW approval_current;
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
LEFT JOIN LATERAL (
    SELECT e.version, e.state, e.required_roles, e.consumed_by_request, e.steps, e.created_at
    FROM approval_events e
    WHERE e.tenant = h.tenant AND e.approval_id = h.id
    ORDER BY e.version DESC
    LIMIT 1
) e ON TRUE;
