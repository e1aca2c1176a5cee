-- Tamper evidence: each revision's place in its tenant's hash chain (the rule is in
-- src/policy/audit.rs and ARCHITECTURE.md). Revisions saved before this migration have
-- none; the chain starts at the first revision saved after it.
ALTER TABLE revisions ADD COLUMN hash TEXT NOT NULL DEFAULT '';
