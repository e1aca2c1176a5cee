-- Every approval change names the replica that wrote it, on both stores, so the event
-- INSERT is one statement for both (SQLite has one writing process; its events say '').
ALTER TABLE approval_events ADD COLUMN origin TEXT NOT NULL DEFAULT '';

-- ListApprovals pages through one tenant's approvals by position, newest first.
CREATE INDEX approvals_by_tenant_seq ON approvals (tenant, seq);
