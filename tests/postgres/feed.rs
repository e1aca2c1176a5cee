//! The approval change feed other replicas read (PostgreSQL only): a transaction that
//! stays open neither hides the changes committed around it nor makes the feed re-read or
//! remember them; its own changes arrive when it commits, once.

use crate::helpers::fresh_database;
use sqlx::{Connection, Executor};
use toolgate::config::{Config, DatabaseUrl};
use toolgate::policy::{Approval, ApprovalState, ApproverRole, UnixMillis};
use toolgate::store::{ApprovalCursor, Inserted, Store};

fn approval(n: u32) -> Approval {
    let now = UnixMillis::now();
    Approval {
        id: format!("apr_feed_{n}"),
        state: ApprovalState::Pending,
        integration_id: "entra".into(),
        tool_name: "reset_password".into(),
        arguments_json: "{}".into(),
        arguments_sha256: "0".repeat(64),
        requester_id: "alice".into(),
        request_id: format!("req-{n}"),
        required_roles: vec![ApproverRole::Technician],
        steps: Vec::new(),
        created_at: now,
        expires_at: now.plus(std::time::Duration::from_secs(3600)),
        created_by_key: "k".into(),
        principal: "key:k".into(),
        consumed_by_request: None,
        consumed_at: None,
    }
}

fn ids(changes: &[(String, Approval)]) -> Vec<&str> {
    changes.iter().map(|(_, a)| a.id.as_str()).collect()
}

#[tokio::test]
async fn an_open_transaction_neither_hides_nor_repeats_changes_and_its_own_arrive_once() {
    let db = fresh_database().await;
    let config = Config {
        database_url: DatabaseUrl::new(db.url.clone()),
        ..Default::default()
    };
    // Two stores are two replicas: each reads the changes the other wrote.
    let writer = toolgate::server::open_store(&config).await.expect("open");
    let reader = toolgate::server::open_store(&config).await.expect("open");
    let mut cursor = ApprovalCursor::default();
    assert!(
        reader
            .approval_changes(&mut cursor)
            .await
            .unwrap()
            .is_empty()
    );

    // A transaction that stays open, with an approval of its own not yet committed.
    let mut held = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    held.execute("BEGIN").await.expect("begin");
    let head = "INSERT INTO approvals (tenant, id, integration_id, tool_name, arguments_json, \
        arguments_sha256, requester_id, request_id, required_roles, created_at, expires_at, \
        created_by_key, principal) VALUES ('acme', 'apr_held', 'entra', 'reset_password', \
        '{}', '', 'alice', 'req-held', 'technician', 1, 9999999999999, 'k', 'key:k')";
    held.execute(head).await.expect("head");
    let event = "INSERT INTO approval_events (tenant, approval_id, version, origin, state, \
        required_roles, steps, created_at) VALUES ('acme', 'apr_held', 0, 'held', 'pending', \
        'technician', '[]', 1)";
    held.execute(event).await.expect("event");

    // Changes committed while it is open arrive, once each.
    for n in 0..3 {
        let created = writer.insert_approval("acme", &approval(n)).await.unwrap();
        assert!(matches!(created, Inserted::New(_)));
    }
    let first = reader.approval_changes(&mut cursor).await.unwrap();
    assert_eq!(ids(&first), ["apr_feed_0", "apr_feed_1", "apr_feed_2"]);
    // What the cursor keeps is the transactions running at the read (the held one, and
    // any of other tests on this server), not the changes it delivered.
    assert!(cursor.transactions_awaited() >= 1, "the open transaction");
    for n in 3..6 {
        writer.insert_approval("acme", &approval(n)).await.unwrap();
    }
    let second = reader.approval_changes(&mut cursor).await.unwrap();
    assert_eq!(ids(&second), ["apr_feed_3", "apr_feed_4", "apr_feed_5"]);
    assert!(
        reader
            .approval_changes(&mut cursor)
            .await
            .unwrap()
            .is_empty()
    );

    // Its own change arrives when it commits, once.
    held.execute("COMMIT").await.expect("commit");
    let third = reader.approval_changes(&mut cursor).await.unwrap();
    assert_eq!(ids(&third), ["apr_held"]);
    assert!(
        reader
            .approval_changes(&mut cursor)
            .await
            .unwrap()
            .is_empty()
    );
}
