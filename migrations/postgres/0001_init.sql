-- toolgate schema, PostgreSQL. Times are Unix milliseconds. Several replicas share it.

-- One row per tenant: its revision counter. A Save locks the row (FOR NO KEY UPDATE) and
-- bumps it by exactly one, so revisions are gapless and in commit order across replicas.
CREATE TABLE tenants (
    id       TEXT PRIMARY KEY,
    revision BIGINT NOT NULL DEFAULT 0
);

-- API keys: only the SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants (id),
    role          TEXT NOT NULL CHECK (role IN ('agent', 'approver', 'admin')),
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    revoked_at    BIGINT
);

CREATE TABLE integrations (
    tenant       TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    display_name TEXT NOT NULL,
    connected_at BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The current tools and their policies.
CREATE TABLE tools (
    tenant            TEXT NOT NULL REFERENCES tenants (id),
    integration_id    TEXT NOT NULL,
    name              TEXT NOT NULL,
    description       TEXT NOT NULL,
    input_schema_json TEXT NOT NULL,
    read_only_hint    BOOLEAN,
    destructive_hint  BOOLEAN,
    idempotent_hint   BOOLEAN,
    open_world_hint   BOOLEAN,
    policy            TEXT NOT NULL CHECK (policy IN ('auto', 'approval_needed', 'disabled')),
    manager_approval  BOOLEAN NOT NULL CHECK (NOT manager_approval OR policy = 'approval_needed'),
    source            TEXT NOT NULL CHECK (source IN ('annotation', 'verb', 'fallback', 'admin')),
    source_reason     TEXT NOT NULL,
    revision          BIGINT NOT NULL,
    PRIMARY KEY (tenant, integration_id, name)
);

-- The change log and audit history: one row per saved revision...
CREATE TABLE revisions (
    tenant       TEXT NOT NULL REFERENCES tenants (id),
    revision     BIGINT NOT NULL,
    kind         TEXT NOT NULL,
    actor_key_id TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant, revision)
);

-- ...and one row per tool it changed, with the tool's full state after it (NULLs when removed).
CREATE TABLE tool_changes (
    tenant            TEXT NOT NULL,
    revision          BIGINT NOT NULL,
    integration_id    TEXT NOT NULL,
    name              TEXT NOT NULL,
    removed           BOOLEAN NOT NULL,
    description       TEXT,
    input_schema_json TEXT,
    read_only_hint    BOOLEAN,
    destructive_hint  BOOLEAN,
    idempotent_hint   BOOLEAN,
    open_world_hint   BOOLEAN,
    policy            TEXT,
    manager_approval  BOOLEAN,
    source            TEXT,
    source_reason     TEXT,
    PRIMARY KEY (tenant, revision, integration_id, name),
    FOREIGN KEY (tenant, revision) REFERENCES revisions (tenant, revision)
);

-- The directory: managers of record and technicians, synced by admin tooling.
CREATE TABLE people (
    tenant       TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL,
    display_name TEXT NOT NULL,
    email        TEXT NOT NULL,
    manager_id   TEXT NOT NULL,
    technician   BOOLEAN NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- Approvals. No foreign key to tenants: the caller's key proves the tenant exists, and the
-- key-share lock such a check takes on the tenant row would tie every approval write to
-- the row each Save locks.
CREATE TABLE approvals (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant              TEXT NOT NULL,
    id                  TEXT NOT NULL,
    state               TEXT NOT NULL
        CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'consumed', 'cancelled')),
    integration_id      TEXT NOT NULL,
    tool_name           TEXT NOT NULL,
    arguments_json      TEXT NOT NULL,
    arguments_sha256    TEXT NOT NULL,
    requester_id        TEXT NOT NULL,
    request_id          TEXT NOT NULL,
    required_roles      TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    created_by_key      TEXT NOT NULL,
    consumed_by_request TEXT,
    updated_at          BIGINT NOT NULL,
    -- Bumped by every change: an update applies only to the version it read.
    version             BIGINT NOT NULL DEFAULT 0,
    UNIQUE (tenant, id),
    -- The same request_id never creates a second approval.
    UNIQUE (tenant, request_id)
);

-- Every change of an approval, written in the transaction that makes it: what other
-- replicas read to push each state to their WatchApprovals streams, without NOTIFY on
-- this path. `origin` is the writing replica (which published it itself); `xid` the
-- writing transaction: every change by a transaction older than a reader's snapshot xmin
-- is final, so readers move on by xmin and miss nothing. Pruned after a retention time.
CREATE TABLE approval_changes (
    seq                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid                 xid8 NOT NULL DEFAULT pg_current_xact_id(),
    tenant              TEXT NOT NULL,
    approval_id         TEXT NOT NULL,
    origin              TEXT NOT NULL,
    state               TEXT NOT NULL,
    required_roles      TEXT NOT NULL,
    consumed_by_request TEXT,
    step_count          INTEGER NOT NULL,
    created_at          BIGINT NOT NULL
);

CREATE INDEX approval_changes_by_xid ON approval_changes (xid);
CREATE INDEX approval_changes_by_age ON approval_changes (created_at);

-- The expiry sweep reads open approvals by expiry.
CREATE INDEX approvals_open_by_expiry ON approvals (expires_at)
    WHERE state IN ('pending', 'approved');

CREATE TABLE approval_steps (
    step        BIGINT GENERATED ALWAYS AS IDENTITY,
    tenant      TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('technician', 'manager')),
    approver_id TEXT NOT NULL,
    approved    BOOLEAN NOT NULL,
    comment     TEXT NOT NULL,
    decided_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, approval_id, role),
    FOREIGN KEY (tenant, approval_id) REFERENCES approvals (tenant, id)
);
