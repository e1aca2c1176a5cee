-- pgbench script; see benches/pgbench/README.md
\set n random(1, 1000000000)
INSERT INTO approvals (tenant, id, integration_id, tool_name, arguments_json, arguments_sha256, requester_id, request_id, required_roles, created_at, expires_at, created_by_key) VALUES ('bench', 'apr_' || :client_id || '_' || :n, 'entra', 'reset_password', '{"user": "x"}', repeat('0', 64), 'alice', 'req' || :client_id || '_' || :n, 'technician', 1, 99999999999999, 'key');
