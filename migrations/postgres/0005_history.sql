-- History: why each revision was saved (the admin's comment), and an index that finds a
-- tool's state before a revision (its previous change) and at a revision (for rollback).
ALTER TABLE revisions ADD COLUMN comment TEXT NOT NULL DEFAULT '';

CREATE INDEX tool_changes_by_tool ON tool_changes (tenant, integration_id, name, revision);
