-- pgbench script; see benches/pgbench/README.md
INSERT INTO bench_raw (tenant, id, payload) VALUES ('bench', 'w' || :client_id || '-' || random(), repeat('x', 300));
