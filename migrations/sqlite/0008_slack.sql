-- Approve from Slack: the messages a Slack channel posted for an approval, so that its
-- later events update them (chat.update needs the conversation and the message's ts),
-- and the look-up from a clicking Slack user to the person of record.

CREATE TABLE slack_messages (
    tenant        TEXT NOT NULL,
    approval_id   TEXT NOT NULL,
    channel_id    TEXT NOT NULL,
    -- technician or manager: whose request the message is.
    role          TEXT NOT NULL CHECK (role IN ('technician', 'manager')),
    -- The conversation Slack answered with (a manager's direct message is a D… id).
    slack_channel TEXT NOT NULL,
    ts            TEXT NOT NULL,
    posted_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant, approval_id, channel_id, role)
);

CREATE INDEX people_by_slack_user ON people (tenant, slack_user_id) WHERE slack_user_id <> '';
