-- Approval delivery: notification channels per tenant, and the outbox of deliveries.
--
-- The outbox is written by a trigger on approval_events, so every approval change that a
-- person must hear about gets its delivery rows in the transaction that wrote the change,
-- whichever path wrote it (Decide, SubmitApproval, CancelApproval, the expiry sweep, any
-- replica): if the change commits, its deliveries do; if it rolls back, nothing is sent.
-- The rules for which change is which event are in ARCHITECTURE.md ("Approval delivery");
-- the same rules are in migrations/sqlite/0007_deliveries.sql.

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
    enabled              BOOLEAN NOT NULL,
    slack_channel        TEXT NOT NULL DEFAULT '',
    slack_signing_secret TEXT NOT NULL DEFAULT '',
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE deliveries (
    seq                    BIGSERIAL PRIMARY KEY,
    -- The webhook-id: the same on every attempt.
    id                     TEXT NOT NULL UNIQUE,
    tenant                 TEXT NOT NULL,
    channel_id             TEXT NOT NULL,
    approval_id            TEXT NOT NULL,
    -- The approval_events version this event reports (data.sequence is version + 1).
    version                BIGINT NOT NULL,
    event_type             TEXT NOT NULL,
    -- For approval.requested: the role asked, and for the manager, who (and their Slack id).
    audience_role          TEXT NOT NULL DEFAULT '',
    audience_person_id     TEXT NOT NULL DEFAULT '',
    audience_slack_user_id TEXT NOT NULL DEFAULT '',
    state                  TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts               BIGINT NOT NULL DEFAULT 0,
    last_error             TEXT NOT NULL DEFAULT '',
    created_at             BIGINT NOT NULL,
    -- When it was (re)queued: the maximum age counts from here.
    queued_at              BIGINT NOT NULL,
    next_attempt_at        BIGINT NOT NULL,
    delivered_at           BIGINT,
    -- The delivery of the approval's previous event to the same channel (NULL for the
    -- first): this one is not sent while that one is pending, so events arrive in order.
    after_seq              BIGINT,
    -- A replica's claim on an attempt in flight: nobody else takes it before lease_until.
    lease_owner            TEXT NOT NULL DEFAULT '',
    lease_until            BIGINT NOT NULL DEFAULT 0
);

-- The worker's claim walks one channel's due deliveries in order and stops at its limit;
-- ordering is checked by primary key (after_seq). Both hold whatever the planner's
-- statistics say (a new table has none).
CREATE INDEX deliveries_due ON deliveries (tenant, channel_id, next_attempt_at, seq)
    WHERE state = 'pending';
CREATE INDEX deliveries_by_approval ON deliveries (tenant, approval_id, channel_id, seq);
CREATE INDEX deliveries_by_tenant ON deliveries (tenant, seq);

-- The approvals that wait for people (state pending), kept by the approval writes in the
-- transaction of each change (src/store/approval_sql.rs and group_commit.rs),
-- so Decide counts at most max_pending_approvals index entries of one tenant instead of
-- reading every approval of the approval_ttl window. One row per approval, touched only by
-- that approval's own changes: nothing every writer of a tenant must lock. An approval
-- past its expiry stops counting at once (expires_at).
CREATE TABLE pending_approvals (
    tenant      TEXT NOT NULL,
    approval_id TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, approval_id)
);
INSERT INTO pending_approvals (tenant, approval_id, expires_at)
SELECT tenant, id, expires_at FROM approval_current
WHERE state = 'pending' AND expires_at > (extract(epoch FROM clock_timestamp()) * 1000)::bigint;

-- One trigger per statement, not per row: the group commit writes up to 128 events in one
-- statement, and a per-row PL/pgSQL call was measured to cost the approval writes a third
-- of their rate. When none of the statement's tenants has an enabled channel (most have
-- none) it ends after one look-up; otherwise it writes the outbox row by row, in each
-- approval's version order. The function's statements take the database's usual plan
-- caching (toolgate's sessions plan every statement for its values, which for these
-- look-ups is only cost).
CREATE FUNCTION approval_events_after() RETURNS trigger LANGUAGE plpgsql
SET plan_cache_mode = auto AS $$
DECLARE
    e record;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM new_events n JOIN notification_channels c
                   ON c.tenant = n.tenant AND c.enabled) THEN
        RETURN NULL;
    END IF;
    FOR e IN
        SELECT n.* FROM new_events n
        WHERE EXISTS (SELECT 1 FROM notification_channels c
                      WHERE c.tenant = n.tenant AND c.enabled)
        ORDER BY n.tenant, n.approval_id, n.version
    LOOP
        IF e.version = 0 THEN
            -- Created: approval.requested, one per required role, to every enabled
            -- channel. The manager's is addressed to the requester's manager of record.
            INSERT INTO deliveries (id, tenant, channel_id, approval_id, version, event_type,
                audience_role, audience_person_id, audience_slack_user_id, state, created_at,
                queued_at, next_attempt_at, after_seq)
            SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), e.tenant, c.id,
                e.approval_id, e.version, 'approval.requested', r.role,
                CASE WHEN r.role = 'manager' THEN coalesce(m.id, '') ELSE '' END,
                CASE WHEN r.role = 'manager' THEN coalesce(m.slack_user_id, '') ELSE '' END,
                'pending', e.created_at, e.created_at, e.created_at,
                (SELECT p.seq FROM deliveries p WHERE p.tenant = e.tenant
                    AND p.approval_id = e.approval_id AND p.channel_id = c.id
                    ORDER BY p.seq DESC LIMIT 1)
            FROM notification_channels c
            JOIN (VALUES ('technician'), ('manager')) AS r (role)
                ON strpos(',' || e.required_roles || ',', ',' || r.role || ',') > 0
            LEFT JOIN approvals h ON h.tenant = e.tenant AND h.id = e.approval_id
            LEFT JOIN people rq ON rq.tenant = e.tenant AND rq.id = h.requester_id
            LEFT JOIN people m ON m.tenant = e.tenant AND m.id = rq.manager_id
            WHERE c.tenant = e.tenant AND c.enabled
            ORDER BY c.id, r.role DESC;
        ELSE
            -- Changed: approval.step when a decision was recorded and more are needed;
            -- otherwise approval.<state> when the state changed (approved, denied,
            -- expired, consumed, cancelled). A change of nothing a person must hear about
            -- sends nothing.
            INSERT INTO deliveries (id, tenant, channel_id, approval_id, version, event_type,
                state, created_at, queued_at, next_attempt_at, after_seq)
            SELECT 'dlv_' || replace(gen_random_uuid()::text, '-', ''), e.tenant, c.id,
                e.approval_id, e.version,
                CASE WHEN e.state = 'pending' THEN 'approval.step'
                    ELSE 'approval.' || e.state END,
                'pending', e.created_at, e.created_at, e.created_at,
                (SELECT p.seq FROM deliveries p WHERE p.tenant = e.tenant
                    AND p.approval_id = e.approval_id AND p.channel_id = c.id
                    ORDER BY p.seq DESC LIMIT 1)
            FROM notification_channels c
            LEFT JOIN approval_events p ON p.tenant = e.tenant
                AND p.approval_id = e.approval_id AND p.version = e.version - 1
            WHERE c.tenant = e.tenant AND c.enabled
                AND CASE WHEN e.state = 'pending'
                    THEN e.steps <> coalesce(p.steps, '[]')
                    ELSE e.state <> coalesce(p.state, 'pending') END
            ORDER BY c.id;
        END IF;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER approval_events_after AFTER INSERT ON approval_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION approval_events_after();
