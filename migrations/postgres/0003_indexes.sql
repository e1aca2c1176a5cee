-- ListApprovals pages through one tenant's approvals by position, newest first.
CREATE INDEX approvals_by_tenant_seq ON approvals (tenant, seq);

-- Other replicas read approval changes by transaction id, a page at a time: the index
-- gives every event its place in that order, so a page is one index range.
CREATE INDEX approval_events_by_xid_key ON approval_events (xid, tenant, approval_id, version);
DROP INDEX approval_events_by_xid;
