-- Approvals become append-only. `approvals` keeps what never changes (the binding, the
-- requester, the expiry, the roles asked for at creation); every change, creation
-- included, is one new row in `approval_events` with the approval's whole mutable state
-- after it (state, roles, consumer, every step so far). A change is one INSERT whose
-- primary key is the new version, so two replicas deciding on the same version cannot both
-- write (the second finds the key taken), no row is locked or updated in place, and the
-- events are at once the approval's audit history and the feed other replicas read to
-- push each state to their WatchApprovals streams (by transaction id: every event written
-- by a transaction older than a reader's snapshot xmin is final, so readers move on by
-- xmin and miss nothing).
--
-- Replicas of the previous version cannot write approvals once this has run (the columns
-- they update are gone): they fail those calls, closed, until they are replaced.

CREATE TABLE approval_events (
    tenant              TEXT NOT NULL,
    approval_id         TEXT NOT NULL,
    version             BIGINT NOT NULL,
    xid                 xid8 NOT NULL DEFAULT pg_current_xact_id(),
    -- The replica that wrote it (which published it itself).
    origin              TEXT NOT NULL,
    state               TEXT NOT NULL
        CHECK (state IN ('pending', 'approved', 'denied', 'expired', 'consumed', 'cancelled')),
    required_roles      TEXT NOT NULL,
    consumed_by_request TEXT,
    -- A JSON array of every step so far, in order.
    steps               TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    PRIMARY KEY (tenant, approval_id, version)
);

CREATE INDEX approval_events_by_xid ON approval_events (xid);

-- Each approval's state as it is now becomes its event at its current version.
INSERT INTO approval_events (tenant, approval_id, version, origin, state, required_roles,
    consumed_by_request, steps, created_at)
SELECT a.tenant, a.id, a.version, 'migration', a.state, a.required_roles,
    a.consumed_by_request,
    (SELECT coalesce(json_agg(json_build_object('role', s.role, 'approver_id', s.approver_id,
        'approved', s.approved, 'comment', s.comment, 'decided_at', s.decided_at)
        ORDER BY s.decided_at, s.step), '[]')::text
     FROM approval_steps s WHERE s.tenant = a.tenant AND s.approval_id = a.id),
    a.updated_at
FROM approvals a;

-- Where the expiry sweep has got to: every approval that expired at or before `swept_to`
-- has its 'expired' event. Starts at the oldest open approval still to expire.
CREATE TABLE approval_sweep (
    id       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    swept_to BIGINT NOT NULL
);
INSERT INTO approval_sweep (id, swept_to)
SELECT TRUE, coalesce(
    (SELECT min(expires_at) - 1 FROM approvals WHERE state IN ('pending', 'approved')),
    (extract(epoch FROM clock_timestamp()) * 1000)::bigint);

DROP TABLE approval_steps;
DROP TABLE approval_changes;
DROP INDEX approvals_open_by_expiry;
-- What changes lives in the events now; `required_roles` stays as the roles asked for.
ALTER TABLE approvals
    DROP COLUMN state,
    DROP COLUMN consumed_by_request,
    DROP COLUMN updated_at,
    DROP COLUMN version;

-- The expiry sweep reads approvals by expiry, from where it got to.
CREATE INDEX approvals_by_expiry ON approvals (expires_at);

-- An approval as it is now: its head and its latest event.
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
LEFT JOIN LATERAL (
    SELECT e.version, e.state, e.required_roles, e.consumed_by_request, e.steps
    FROM approval_events e
    WHERE e.tenant = h.tenant AND e.approval_id = h.id
    ORDER BY e.version DESC
    LIMIT 1
) e ON TRUE;

-- Bumped by every upsert: an approval decision is written only if the people it read are
-- still at the versions it read.
ALTER TABLE people ADD COLUMN version BIGINT NOT NULL DEFAULT 0;
