-- Approval delivery: notification channels per tenant, and the outbox of deliveries.
--
-- The outbox is written by a trigger on approval_events, so every approval change that a
-- person must hear about gets its delivery rows in the transaction that wrote the change,
-- whichever path wrote it (Decide, SubmitApproval, CancelApproval, the expiry sweep): if
-- the change commits, its deliveries do; if it rolls back, nothing is sent. The rules for
-- which change is which event are in ARCHITECTURE.md ("Approval delivery"); the same rules
-- are in migrations/postgres/0007_deliveries.sql.

-- No approval spam: Decide finds the pending approval of the same call (principal,
-- requester, integration, tool, arguments) before it asks people again.
CREATE INDEX approvals_by_call ON approvals (tenant, principal, requester_id, integration_id,
    tool_name, arguments_sha256);

-- Slack's id of a person (for the manager's direct message).
ALTER TABLE people ADD COLUMN slack_user_id TEXT NOT NULL DEFAULT '';

CREATE TABLE notification_channels (
    tenant               TEXT NOT NULL,
    id                   TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('webhook', 'slack')),
    url                  TEXT NOT NULL,
    -- The signing secret (whsec_…) or bot token: needed to sign, so kept as written.
    secret               TEXT NOT NULL,
    enabled              INTEGER NOT NULL,
    slack_channel        TEXT NOT NULL DEFAULT '',
    slack_signing_secret TEXT NOT NULL DEFAULT '',
    created_at           INTEGER NOT NULL,
    updated_at           INTEGER NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE deliveries (
    seq                    INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The webhook-id: the same on every attempt.
    id                     TEXT NOT NULL UNIQUE,
    tenant                 TEXT NOT NULL,
    channel_id             TEXT NOT NULL,
    approval_id            TEXT NOT NULL,
    -- The approval_events version this event reports (data.sequence is version + 1).
    version                INTEGER NOT NULL,
    event_type             TEXT NOT NULL,
    -- For approval.requested: the role asked, and for the manager, who (and their Slack id).
    audience_role          TEXT NOT NULL DEFAULT '',
    audience_person_id     TEXT NOT NULL DEFAULT '',
    audience_slack_user_id TEXT NOT NULL DEFAULT '',
    state                  TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts               INTEGER NOT NULL DEFAULT 0,
    last_error             TEXT NOT NULL DEFAULT '',
    created_at             INTEGER NOT NULL,
    -- When it was (re)queued: the maximum age counts from here.
    queued_at              INTEGER NOT NULL,
    next_attempt_at        INTEGER NOT NULL,
    delivered_at           INTEGER,
    -- The delivery of the approval's previous event to the same channel (NULL for the
    -- first): this one is not sent while that one is pending, so events arrive in order.
    after_seq              INTEGER,
    -- A replica's claim on an attempt in flight: nobody else takes it before lease_until.
    lease_owner            TEXT NOT NULL DEFAULT '',
    lease_until            INTEGER NOT NULL DEFAULT 0
);

-- The worker's claim walks one channel's due deliveries in order and stops at its limit;
-- ordering is checked by primary key (after_seq). Both hold whatever the planner's
-- statistics say (a new table has none).
CREATE INDEX deliveries_due ON deliveries (tenant, channel_id, next_attempt_at, seq)
    WHERE state = 'pending';
CREATE INDEX deliveries_by_approval ON deliveries (tenant, approval_id, channel_id, seq);
CREATE INDEX deliveries_by_tenant ON deliveries (tenant, seq);

CREATE TRIGGER approval_events_outbox AFTER INSERT ON approval_events
-- Most tenants have no channel: nothing to do.
WHEN EXISTS (SELECT 1 FROM notification_channels WHERE tenant = NEW.tenant AND enabled = 1)
BEGIN
    -- Created: approval.requested, one per required role, to every enabled channel. The
    -- manager's is addressed to the requester's manager of record.
    INSERT INTO deliveries (id, tenant, channel_id, approval_id, version, event_type,
        audience_role, audience_person_id, audience_slack_user_id, state, created_at,
        queued_at, next_attempt_at, after_seq)
    SELECT 'dlv_' || lower(hex(randomblob(16))), NEW.tenant, c.id, NEW.approval_id,
        NEW.version, 'approval.requested', r.role,
        CASE WHEN r.role = 'manager' THEN coalesce(m.id, '') ELSE '' END,
        CASE WHEN r.role = 'manager' THEN coalesce(m.slack_user_id, '') ELSE '' END,
        'pending', NEW.created_at, NEW.created_at, NEW.created_at,
        (SELECT p.seq FROM deliveries p WHERE p.tenant = NEW.tenant
            AND p.approval_id = NEW.approval_id AND p.channel_id = c.id
            ORDER BY p.seq DESC LIMIT 1)
    FROM notification_channels c
    JOIN (SELECT 'technician' AS role UNION ALL SELECT 'manager') r
        ON instr(',' || NEW.required_roles || ',', ',' || r.role || ',') > 0
    LEFT JOIN approvals h ON h.tenant = NEW.tenant AND h.id = NEW.approval_id
    LEFT JOIN people rq ON rq.tenant = NEW.tenant AND rq.id = h.requester_id
    LEFT JOIN people m ON m.tenant = NEW.tenant AND m.id = rq.manager_id
    WHERE NEW.version = 0 AND c.tenant = NEW.tenant AND c.enabled = 1
    ORDER BY c.id, r.role DESC;

    -- Changed: approval.step when a decision was recorded and more are needed; otherwise
    -- approval.<state> when the state changed (approved, denied, expired, consumed,
    -- cancelled). A change of nothing a person must hear about sends nothing.
    INSERT INTO deliveries (id, tenant, channel_id, approval_id, version, event_type,
        state, created_at, queued_at, next_attempt_at, after_seq)
    SELECT 'dlv_' || lower(hex(randomblob(16))), NEW.tenant, c.id, NEW.approval_id,
        NEW.version,
        CASE WHEN NEW.state = 'pending' THEN 'approval.step' ELSE 'approval.' || NEW.state END,
        'pending', NEW.created_at, NEW.created_at, NEW.created_at,
        (SELECT p.seq FROM deliveries p WHERE p.tenant = NEW.tenant
            AND p.approval_id = NEW.approval_id AND p.channel_id = c.id
            ORDER BY p.seq DESC LIMIT 1)
    FROM notification_channels c
    LEFT JOIN approval_events p ON p.tenant = NEW.tenant AND p.approval_id = NEW.approval_id
        AND p.version = NEW.version - 1
    WHERE NEW.version > 0 AND c.tenant = NEW.tenant AND c.enabled = 1
        AND CASE WHEN NEW.state = 'pending'
            THEN NEW.steps <> coalesce(p.steps, '[]')
            ELSE NEW.state <> coalesce(p.state, 'pending') END
    ORDER BY c.id;
END;


-- The approvals that wait for people (state pending), kept by the approval writes in the
-- transaction of each change (src/store/approval_sql.rs, PENDING_ADD and PENDING_REMOVE),
-- so Decide counts at most max_pending_approvals index entries of one tenant instead of
-- reading every approval of the approval_ttl window. One row per approval, touched only by
-- that approval's own changes: nothing every writer of a tenant must lock. An approval
-- past its expiry stops counting at once (expires_at).
CREATE TABLE pending_approvals (
    tenant      TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, approval_id)
);
INSERT INTO pending_approvals (tenant, approval_id, expires_at)
SELECT tenant, id, expires_at FROM approval_current
WHERE state = 'pending' AND expires_at > CAST(unixepoch('subsec') * 1000 AS INTEGER);
