-- Tamper evidence for approvals: each approval event's place in its tenant's second hash
-- chain (the rule is in src/policy/audit.rs and ARCHITECTURE.md), set by the transaction
-- that writes the event. Events written before this migration have none; the chain starts
-- at the first event written after it.
ALTER TABLE approval_events ADD COLUMN chain_seq BIGINT;
ALTER TABLE approval_events ADD COLUMN hash TEXT NOT NULL DEFAULT '';

-- Each tenant's chain head: how many events it holds and the last one's hash. A
-- transaction that links events locks its tenants' rows until it commits, so replicas
-- take turns and the chain never forks.
CREATE TABLE approval_chain (
    tenant       TEXT PRIMARY KEY,
    seq          BIGINT NOT NULL,
    hash         TEXT NOT NULL,
    -- Events written before this migration, which have no place: `audit verify` checks
    -- that no other event is outside the chain.
    before_chain BIGINT NOT NULL DEFAULT 0
);
INSERT INTO approval_chain (tenant, seq, hash, before_chain)
SELECT tenant, 0, '', count(*) FROM approval_events GROUP BY tenant;
