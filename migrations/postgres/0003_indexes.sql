-- ListApprovals pages through one tenant's approvals by position, newest first.
CREATE INDEX approvals_by_tenant_seq ON approvals (tenant, seq);
