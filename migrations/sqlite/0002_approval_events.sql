-- Approvals become append-only. `approvals` keeps what never changes (the binding, the
-- requester, the expiry, the roles asked for at creation); every change is one new row in
-- `approval_events` with the approval's whole mutable state after it (state, roles,
-- consumer, every step so far). A change is one INSERT whose primary key is the new
-- version, so two decisions on the same version cannot both be written, and nothing is
-- ever updated in place: the events are also the approval's audit history.

-- The immutable head. No foreign key to tenants: the caller's key proves the tenant
-- exists (keys reference tenants).
CREATE TABLE approvals_v2 (
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
    UNIQUE (tenant, id),
    -- The same request_id never creates a second approval.
    UNIQUE (tenant, request_id)
);

-- Version 1, 2, ... of each approval; no row means version 0: pending, no steps, the
-- head's roles. `steps` is a JSON array of every step so far, in order.
CREATE TABLE approval_events (
    tenant              TEXT NOT NULL,
    approval_id         TEXT NOT NULL,
    version             INTEGER NOT NULL,
    state               TEXT NOT NULL
        CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'consumed', 'cancelled')),
    required_roles      TEXT NOT NULL,
    consumed_by_request TEXT,
    steps               TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant, approval_id, version)
) WITHOUT ROWID;

INSERT INTO approvals_v2 (seq, tenant, id, integration_id, tool_name, arguments_json,
    arguments_sha256, requester_id, request_id, required_roles, created_at, expires_at,
    created_by_key)
SELECT seq, tenant, id, integration_id, tool_name, arguments_json, arguments_sha256,
    requester_id, request_id, required_roles, created_at, expires_at, created_by_key
FROM approvals;

-- Each approval's state as it is now becomes its version 1.
INSERT INTO approval_events (tenant, approval_id, version, state, required_roles,
    consumed_by_request, steps, created_at)
SELECT a.tenant, a.id, 1, a.state, a.required_roles, a.consumed_by_request,
    (SELECT json_group_array(json_object('role', s.role, 'approver_id', s.approver_id,
        'approved', json(iif(s.approved, 'true', 'false')), 'comment', s.comment,
        'decided_at', s.decided_at))
     FROM (SELECT * FROM approval_steps s
           WHERE s.tenant = a.tenant AND s.approval_id = a.id
           ORDER BY s.decided_at, s.rowid) s),
    a.updated_at
FROM approvals a;

-- Where the expiry sweep has got to: every approval that expired at or before `swept_to`
-- has its 'expired' event. Starts at the oldest open approval still to expire.
CREATE TABLE approval_sweep (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    swept_to INTEGER NOT NULL
);
INSERT INTO approval_sweep (id, swept_to)
SELECT 1, coalesce(
    (SELECT min(expires_at) - 1 FROM approvals WHERE state IN ('pending', 'approved')),
    CAST(unixepoch('subsec') * 1000 AS INTEGER));

DROP TABLE approval_steps;
DROP TABLE approvals;
ALTER TABLE approvals_v2 RENAME TO approvals;

-- The expiry sweep reads approvals by expiry, from where it got to.
CREATE INDEX approvals_by_expiry ON approvals (expires_at);

-- An approval as it is now: its head and its latest event (or version 0).
CREATE VIEW approval_current AS
SELECT h.seq, h.tenant, h.id, h.integration_id, h.tool_name, h.arguments_json,
    h.arguments_sha256, h.requester_id, h.request_id, h.created_at, h.expires_at,
    h.created_by_key,
    coalesce(e.version, 0) AS version,
    coalesce(e.state, 'pending') AS state,
    coalesce(e.required_roles, h.required_roles) AS required_roles,
    e.consumed_by_request,
    coalesce(e.steps, '[]') AS steps
FROM approvals h
LEFT JOIN approval_events e ON e.tenant = h.tenant AND e.approval_id = h.id
    AND e.version = (SELECT max(m.version) FROM approval_events m
                     WHERE m.tenant = h.tenant AND m.approval_id = h.id);

-- Bumped by every upsert: an approval decision is written only if the people it read are
-- still at the versions it read.
ALTER TABLE people ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
