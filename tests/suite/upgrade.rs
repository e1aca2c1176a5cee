//! Upgrading a database an earlier release wrote: every approval keeps its state, its
//! steps and its binding, and goes on working (migration 2 made approvals append-only).

use crate::helpers::*;
use pb::ApproverRole::Technician;
use toolgate::policy::canonical;
use toolgate::proto::v1 as pb;
use toolgate::store::Store;

const ARGS: &str = r#"{"user":"bob"}"#;

/// The suite's backend's directory under `migrations/` (the files the binary embeds).
fn migrations_dir() -> std::path::PathBuf {
    let dir = match crate::BACKEND {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(dir)
}

/// Runs the migrations up to and including `version` from the project's files.
async fn migrate_to(url: &str, version: i64) {
    let migrator = sqlx::migrate::Migrator::new(migrations_dir())
        .await
        .expect("migration files");
    run_migrator(url, &migrator, version).await;
}

/// The migrator releases before `sqlx::migrate!` built by hand: `Migration::new` over each
/// file's text, with descriptions of their own ("approval_events" where the macro says
/// "approval events"). sqlx compares only versions and checksums.
fn hand_built_migrator() -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    let names = ["init", "approval_events", "indexes", "principals"];
    let migrations = (1..)
        .zip(names)
        .map(|(version, name)| {
            let file = migrations_dir().join(format!("{version:04}_{name}.sql"));
            let sql = std::fs::read_to_string(file).expect("migration file");
            Migration::new(
                version,
                name.into(),
                MigrationType::Simple,
                sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

async fn run_migrator(url: &str, migrator: &sqlx::migrate::Migrator, version: i64) {
    match crate::BACKEND {
        Backend::Sqlite => {
            use std::str::FromStr;
            let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
                .expect("url")
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(options).await.expect("open");
            migrator.run_to(version, &pool).await.expect("migrate");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            migrator.run_to(version, &pool).await.expect("migrate");
            pool.close().await;
        }
    }
}

#[tokio::test]
async fn a_database_the_hand_built_migrator_wrote_opens_and_migrates_on() {
    let embedded = match crate::BACKEND {
        Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
    };
    let old = hand_built_migrator();
    // The hand-built list ends at 4; later migrations were only ever embedded.
    let versions = |m: &sqlx::migrate::Migrator| {
        m.iter()
            .take(4)
            .map(|m| (m.version, m.checksum.to_vec(), m.no_tx))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        versions(&embedded),
        versions(&old),
        "versions, checksums, no_tx"
    );

    // A database an earlier release migrated to 3: opening it checks 1 to 3 against what
    // the earlier release stored, and applies 4.
    let db = fresh_database().await;
    run_migrator(&db.url, &old, 3).await;
    let config = toolgate::config::Config {
        database_url: toolgate::config::DatabaseUrl::new(db.url.clone()),
        ..Default::default()
    };
    let store = toolgate::server::open_store(&config)
        .await
        .expect("the earlier release's checksums match");
    drop(store);
    // And again, now that the embedded migrator wrote version 4 itself.
    toolgate::server::open_store(&config).await.expect("reopen");
}

async fn execute(url: &str, sql: &str) {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match crate::BACKEND {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(url).await.expect("open");
            sqlx::raw_sql(sql).execute(&pool).await.expect("seed");
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(url).await.expect("connect");
            sqlx::raw_sql(sql).execute(&pool).await.expect("seed");
            pool.close().await;
        }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Approvals in every state, as schema 1 kept them: a mutable row and a steps table; asked
/// for by the agent key `old_key`.
fn schema_one_approvals(old_key: &toolgate::keys::NewKey) -> String {
    let args = canonical::parse_arguments(ARGS, 1 << 16).expect("arguments");
    let canon = canonical::canonical_arguments(&args);
    let (now, far) = (now_ms(), now_ms() + 3_600_000);
    let postgres = crate::BACKEND == Backend::Postgres;
    let row = |id: &str, state: &str, request: &str, expires: i64, consumed: &str, v: u8| {
        let version = if postgres {
            format!(", {v}")
        } else {
            String::new()
        };
        format!(
            "('acme', '{id}', '{state}', 'entra', 'reset_password', '{}', '{}', 'alice', \
             '{request}', 'technician', {now}, {expires}, '{}', {consumed}, {now}{version})",
            canon.canonical, canon.sha256, old_key.id
        )
    };
    let version_column = if postgres { ", version" } else { "" };
    let mut sql = format!(
        "INSERT INTO tenants (id, revision) VALUES ('acme', 0);
         INSERT INTO api_keys (id, tenant, role, secret_sha256, created_at)
         VALUES ('{}', 'acme', 'agent', '{}', 1);
         INSERT INTO people (tenant, id, display_name, email, manager_id, technician, updated_at)
         VALUES ('acme', 'alice', 'Alice', 'alice@example.com', 'mgr', FALSE, 1),
                ('acme', 'tech', 'Tech', 'tech@example.com', '', TRUE, 1),
                ('acme', 'mgr', 'Mgr', 'mgr@example.com', '', TRUE, 1);
         INSERT INTO approvals (tenant, id, state, integration_id, tool_name, arguments_json,
             arguments_sha256, requester_id, request_id, required_roles, created_at, expires_at,
             created_by_key, consumed_by_request, updated_at{version_column}) VALUES {}, {}, {}, {}, {};
         INSERT INTO approval_steps (tenant, approval_id, role, approver_id, approved, comment,
             decided_at)
         VALUES ('acme', 'apr_approved', 'technician', 'tech', TRUE, 'ok', {now}),
                ('acme', 'apr_consumed', 'technician', 'tech', TRUE, 'fine', {now}),
                ('acme', 'apr_denied', 'technician', 'tech', FALSE, 'no', {now});",
        old_key.id,
        old_key.secret_sha256,
        row("apr_pending", "pending", "req-p", far, "NULL", 0),
        row("apr_approved", "approved", "req-a", far, "NULL", 1),
        row("apr_consumed", "consumed", "req-c", far, "'req-c'", 2),
        row("apr_denied", "denied", "req-d", far, "NULL", 1),
        row("apr_due", "pending", "req-due", now - 1_000, "NULL", 0),
    );
    if postgres {
        // What other replicas had still to read; the table goes with the migration.
        sql.push_str(
            "INSERT INTO approval_changes (tenant, approval_id, origin, state, required_roles,
                 consumed_by_request, step_count, created_at)
             VALUES ('acme', 'apr_approved', 'rep_old', 'approved', 'technician', NULL, 1, 1);",
        );
    }
    sql
}

async fn get(app: &TestApp, id: &str) -> pb::Approval {
    app.client
        .clone()
        .get_approval(with_key(
            &app.admin,
            pb::GetApprovalRequest {
                approval_id: id.into(),
            },
        ))
        .await
        .expect("get approval")
        .into_inner()
        .approval
        .expect("approval")
}

async fn listed_ids(app: &TestApp) -> Vec<String> {
    app.list_approvals(&app.admin, pb::ApprovalState::Unspecified, 20, "")
        .await
        .expect("list")
        .approvals
        .into_iter()
        .map(|a| a.id)
        .collect()
}

#[tokio::test]
async fn approvals_written_before_approvals_became_append_only_keep_their_state_and_work_on() {
    let db = fresh_database().await;
    migrate_to(&db.url, 1).await;
    let old_key = toolgate::keys::generate().expect("random");
    execute(&db.url, &schema_one_approvals(&old_key)).await;

    // Opening the store runs migration 2. The approval that expired meanwhile is found by
    // the first sweep, once.
    let config = toolgate::config::Config {
        database_url: toolgate::config::DatabaseUrl::new(db.url.clone()),
        ..Default::default()
    };
    let store = toolgate::server::open_store(&config)
        .await
        .expect("open and migrate");
    let expired = store.expire_due(now_ms(), 100).await.expect("sweep");
    let expired: Vec<(&str, &str, toolgate::policy::ApprovalState)> = expired
        .iter()
        .map(|(t, a)| (t.as_str(), a.id.as_str(), a.state))
        .collect();
    assert_eq!(
        expired,
        [("acme", "apr_due", toolgate::policy::ApprovalState::Expired)]
    );
    assert!(
        store
            .expire_due(now_ms(), 100)
            .await
            .expect("sweep")
            .is_empty()
    );
    drop(store);

    let url = db.url.clone();
    let app = spawn_app_on(db, |_| {}).await;
    app.connect_sample().await;
    let states = [
        ("apr_pending", pb::ApprovalState::Pending, 0),
        ("apr_approved", pb::ApprovalState::Approved, 1),
        ("apr_consumed", pb::ApprovalState::Consumed, 1),
        ("apr_denied", pb::ApprovalState::Denied, 1),
        ("apr_due", pb::ApprovalState::Expired, 0),
    ];
    for (id, state, steps) in states {
        let a = get(&app, id).await;
        assert_eq!(
            (a.state, a.steps.len()),
            (state as i32, steps),
            "{id}: {a:?}"
        );
        assert_eq!(
            (
                a.tool_name.as_str(),
                a.requester_id.as_str(),
                a.arguments_json.as_str()
            ),
            ("reset_password", "alice", ARGS),
            "{id}"
        );
    }
    let denied = get(&app, "apr_denied").await;
    assert_eq!(
        (
            denied.steps[0].approver_id.as_str(),
            denied.steps[0].approved
        ),
        ("tech", false)
    );
    assert_eq!(denied.steps[0].comment, "no");
    assert_eq!(
        listed_ids(&app).await,
        [
            "apr_due",
            "apr_denied",
            "apr_consumed",
            "apr_approved",
            "apr_pending"
        ],
        "newest first, as before"
    );

    // Each belongs to the key that asked for it (migration 4): another agent key of the
    // tenant does not find it.
    let call = |request: &str, id: &str| with_approval(ask("reset_password", ARGS, request), id);
    let status = app
        .decide(&app.agent, call("req-a", "apr_approved"))
        .await
        .expect_err("another key's approval");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // Each goes on as its state says, for the key that asked.
    let old = |request: &str, id: &str| {
        let (app, token, req) = (&app, old_key.token.clone(), call(request, id));
        async move { verdict(&app.decide(&token, req).await.expect("decide")) }
    };
    assert_eq!(
        old("req-a", "apr_approved").await,
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
    assert_eq!(
        old("req-c", "apr_consumed").await,
        (Verdict::Deny, DecisionCode::ApprovalConsumed),
        "one ALLOW ever, also for a retry by the request that consumed it"
    );
    assert_eq!(
        old("req-x", "apr_consumed").await,
        (Verdict::Deny, DecisionCode::ApprovalConsumed)
    );
    assert_eq!(
        old("req-d", "apr_denied").await,
        (Verdict::Deny, DecisionCode::ApprovalDenied)
    );
    let approved = app
        .submit("apr_pending", Technician, "tech", true)
        .await
        .expect("approve");
    assert_eq!(approved.state, pb::ApprovalState::Approved as i32);
    assert_eq!(
        old("req-p", "apr_pending").await,
        (Verdict::Allow, DecisionCode::ApprovalGranted)
    );
    assert_eq!(
        old("req-y", "apr_pending").await,
        (Verdict::Deny, DecisionCode::ApprovalConsumed)
    );
    // A new approval comes after every old one.
    let new = app.decide_ok(ask("reset_password", ARGS, "req-new")).await;
    let new = new.approval.expect("a new approval").id;
    assert_eq!(listed_ids(&app).await.first(), Some(&new));

    // The events written before the approval-event chain began are counted, not chained;
    // every event since is in the chain, and it verifies.
    let (code, out, err) = audit(&url, &["verify"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let acme = out
        .lines()
        .find(|l| l.starts_with("tenant \"acme\""))
        .unwrap_or_else(|| panic!("{out}"));
    let (chained, rest) = acme
        .split_once("; ")
        .and_then(|(_, events)| events.split_once(" approval events verified ("))
        .unwrap_or_else(|| panic!("{acme}"));
    let before: u64 = rest.split(' ').next().unwrap().parse().expect("a count");
    assert!(chained.parse::<u64>().unwrap() > 0 && before > 0, "{acme}");
}
