-- toolgate schema, SQLite. Times are Unix milliseconds.

-- One row per tenant: its revision counter. A Save bumps it by exactly one.
CREATE TABLE tenants (
    id       TEXT PRIMARY KEY,
    revision INTEGER NOT NULL DEFAULT 0
);

-- API keys: only the SHA-256 of the secret is kept.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL REFERENCES tenants (id),
    role          TEXT NOT NULL CHECK (role IN ('agent', 'approver', 'admin')),
    secret_sha256 TEXT NOT NULL UNIQUE,
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER
);

CREATE TABLE integrations (
    tenant       TEXT NOT NULL REFERENCES tenants (id),
    id           TEXT NOT NULL,
    kind         TEXT NOT NULL,
    display_name TEXT NOT NULL,
    connected_at INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- The current tools and their policies.
CREATE TABLE tools (
    tenant            TEXT NOT NULL REFERENCES tenants (id),
    integration_id    TEXT NOT NULL,
    name              TEXT NOT NULL,
    description       TEXT NOT NULL,
    input_schema_json TEXT NOT NULL,
    read_only_hint    INTEGER,
    destructive_hint  INTEGER,
    idempotent_hint   INTEGER,
    open_world_hint   INTEGER,
    policy            TEXT NOT NULL CHECK (policy IN ('auto', 'approval_needed', 'disabled')),
    manager_approval  INTEGER NOT NULL CHECK (manager_approval = 0 OR policy = 'approval_needed'),
    source            TEXT NOT NULL CHECK (source IN ('annotation', 'verb', 'fallback', 'admin')),
    source_reason     TEXT NOT NULL,
    revision          INTEGER NOT NULL,
    PRIMARY KEY (tenant, integration_id, name)
);

-- The change log and audit history: one row per saved revision...
CREATE TABLE revisions (
    tenant       TEXT NOT NULL REFERENCES tenants (id),
    revision     INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    actor_key_id TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, revision)
);

-- ...and one row per tool it changed, with the tool's full state after it (NULLs when removed).
CREATE TABLE tool_changes (
    tenant            TEXT NOT NULL,
    revision          INTEGER NOT NULL,
    integration_id    TEXT NOT NULL,
    name              TEXT NOT NULL,
    removed           INTEGER NOT NULL,
    description       TEXT,
    input_schema_json TEXT,
    read_only_hint    INTEGER,
    destructive_hint  INTEGER,
    idempotent_hint   INTEGER,
    open_world_hint   INTEGER,
    policy            TEXT,
    manager_approval  INTEGER,
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
    technician   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE approvals (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant              TEXT NOT NULL REFERENCES tenants (id),
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
    created_at          INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    created_by_key      TEXT NOT NULL,
    consumed_by_request TEXT,
    updated_at          INTEGER NOT NULL,
    UNIQUE (tenant, id),
    -- The same request_id never creates a second approval.
    UNIQUE (tenant, request_id)
);

CREATE TABLE approval_steps (
    tenant      TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('technician', 'manager')),
    approver_id TEXT NOT NULL,
    approved    INTEGER NOT NULL,
    comment     TEXT NOT NULL,
    decided_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, approval_id, role),
    FOREIGN KEY (tenant, approval_id) REFERENCES approvals (tenant, id)
);

-- The expiry sweep reads open approvals by expiry.
CREATE INDEX approvals_open_by_expiry ON approvals (expires_at)
    WHERE state IN ('pending', 'approved');
