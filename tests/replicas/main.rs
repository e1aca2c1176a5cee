//! Several real `toolgate` processes on one PostgreSQL database: every promise of the core
//! holds across replicas, and survives cut connections and an outage.

const BACKEND: helpers::Backend = helpers::Backend::Postgres;

mod harness;
#[path = "../suite/helpers.rs"]
#[allow(dead_code)] // the suite's helpers; these tests use some of them
mod helpers;
#[path = "../suite/receiver.rs"]
#[allow(dead_code)] // the suite's webhook receiver; these tests use some of it
mod receiver;

use harness::{Cluster, Proxy};
use helpers::{ask, change, person, verdict, with_approval, with_key};
use pb::watch_config_response::Event;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

type Client = PolicyServiceClient<Channel>;

/// A bound on waiting for what must happen; reaching it fails the test.
const MUST_HAPPEN: Duration = Duration::from_secs(30);

type State = BTreeMap<(String, String), i32>;

/// What one watcher saw: every revision in order, and the state they add up to.
#[derive(Debug, Default)]
struct Seen {
    /// The revision of the first snapshot.
    start: u64,
    revisions: Vec<u64>,
    state: State,
    resets: u32,
    reconnects: u32,
}

/// Follows WatchConfig on one replica until it reaches `target`, resuming from its last
/// revision when the stream breaks, as a client would. Checks order and gaps as it goes.
async fn follow(
    mut client: Client,
    key: String,
    mut target: watch::Receiver<u64>,
    started: tokio::sync::oneshot::Sender<()>,
) -> Seen {
    let mut started = Some(started);
    let mut seen = Seen::default();
    let mut last: Option<u64> = None;
    loop {
        let stream = client
            .watch_config(with_key(
                &key,
                pb::WatchConfigRequest {
                    since_revision: last,
                    integration_id: String::new(),
                },
            ))
            .await;
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(_) => {
                // A client's backoff before it asks again; nothing here signals "try now".
                seen.reconnects += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        loop {
            if last.is_some_and(|l| l >= *target.borrow()) {
                return seen;
            }
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = target.changed() => continue,
            };
            let Ok(Some(msg)) = msg else {
                seen.reconnects += 1;
                break;
            };
            match msg.event.expect("event set") {
                Event::Snapshot(s) => {
                    if let Some(started) = started.take() {
                        let _ = started.send(());
                    }
                    if last.is_some() {
                        seen.resets += 1;
                    } else {
                        seen.start = msg.revision;
                    }
                    seen.state.clear();
                    for t in &s.tools {
                        seen.state
                            .insert((t.integration_id.clone(), t.name.clone()), t.policy);
                    }
                    last = Some(msg.revision);
                }
                Event::Change(c) => {
                    let expected = last.expect("a snapshot or resume point first") + 1;
                    assert_eq!(msg.revision, expected, "a gap or a repeat in the revisions");
                    for t in &c.upserted {
                        seen.state
                            .insert((t.integration_id.clone(), t.name.clone()), t.policy);
                    }
                    for r in &c.removed {
                        seen.state
                            .remove(&(r.integration_id.clone(), r.tool_name.clone()));
                    }
                    seen.revisions.push(msg.revision);
                    last = Some(msg.revision);
                }
                Event::Heartbeat(_) => {}
            }
        }
    }
}

/// Starts a watcher on each of `replicas` and returns once every one has its first
/// snapshot, so that Saves made afterwards all reach the watchers as changes.
async fn start_watchers(
    c: &Cluster,
    replicas: std::ops::Range<usize>,
    target: &watch::Receiver<u64>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let mut watchers = Vec::new();
    for i in replicas {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        watchers.push(tokio::spawn(follow(
            c.r(i),
            c.admin.clone(),
            target.clone(),
            started_tx,
        )));
        tokio::time::timeout(MUST_HAPPEN, started)
            .await
            .unwrap_or_else(|_| panic!("watcher {i} got no snapshot\n{}", c.logs()))
            .expect("the watcher ended before its snapshot");
    }
    watchers
}

/// Each watcher reaches `last` having seen every revision after its snapshot exactly once,
/// in order, with no reset, and ends in the `truth` state. A watcher on a replica that had
/// not caught up with the first Save yet starts from an older snapshot; none starts after
/// `first`.
async fn check_watchers(
    c: &Cluster,
    watchers: Vec<tokio::task::JoinHandle<Seen>>,
    first: u64,
    last: u64,
    truth: &State,
) {
    for (i, w) in watchers.into_iter().enumerate() {
        let seen = tokio::time::timeout(MUST_HAPPEN, w)
            .await
            .unwrap_or_else(|_| panic!("watcher {i} never reached {last}\n{}", c.logs()))
            .unwrap();
        assert!(
            seen.start <= first,
            "watcher {i} started after the Saves began"
        );
        let expected: Vec<u64> = (seen.start + 1..=last).collect();
        assert_eq!(seen.resets, 0, "watcher {i} needed a reset snapshot");
        assert_eq!(
            seen.revisions, expected,
            "watcher {i} missed or repeated a revision"
        );
        assert_eq!(&seen.state, truth, "watcher {i} ends where ListTools is");
    }
}

/// Every tool an admin sees, as a watcher's state.
async fn list_state(mut client: Client, admin: &str, min_revision: u64) -> (u64, State) {
    let r = client
        .list_tools(with_key(
            admin,
            pb::ListToolsRequest {
                integration_id: String::new(),
                include_disabled: true,
                min_revision: Some(min_revision),
            },
        ))
        .await
        .expect("list tools")
        .into_inner();
    let state = r
        .tools
        .iter()
        .map(|t| ((t.integration_id.clone(), t.name.clone()), t.policy))
        .collect();
    (r.revision, state)
}

/// Retries a call while it answers UNAVAILABLE (a replica without its database), bounded.
async fn retry<T, F, Fut>(mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + MUST_HAPPEN;
    loop {
        match call().await {
            Ok(v) => return v,
            Err(s) if s.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                // A client's backoff: the replica answers again once its database does.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("call failed: {s:?}"),
        }
    }
}

/// A Save, retried as a client does when the server answers UNAVAILABLE ("retry": the
/// tenant kept changing under every attempt, which racing replicas on a loaded machine can
/// cause).
async fn set_policy(client: Client, admin: &str, tool: &str, policy: pb::Policy) -> u64 {
    retry(|| {
        let mut client = client.clone();
        let request = with_key(
            admin,
            pb::SetPolicyRequest {
                changes: vec![change("entra", tool, policy, None)],
                expected_revision: None,
                comment: String::new(),
            },
        );
        async move { client.set_policy(request).await }
    })
    .await
    .into_inner()
    .revision
}

async fn people(c: &Cluster) {
    c.r(0)
        .upsert_people(with_key(
            &c.admin,
            pb::UpsertPeopleRequest {
                people: vec![person("alice", "mgr", false), person("tech", "", true)],
            },
        ))
        .await
        .expect("upsert people");
}

const TOOLS: &[&str] = &["t0", "t1", "t2", "get_user", "reset_password"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_on_three_replicas_reach_every_watcher_gapless_and_in_order() {
    let c = Cluster::start(3).await;
    let first = c.connect(0, TOOLS).await;
    let (target_tx, target) = watch::channel(u64::MAX);
    let watchers = start_watchers(&c, 0..9, &target).await;
    // Three admins, one per replica, each flipping its own tool 20 times.
    let mut admins = Vec::new();
    for (a, tool) in TOOLS.iter().take(3).enumerate() {
        let client = c.r(a);
        let admin = c.admin.clone();
        admins.push(tokio::spawn(async move {
            let mut revisions = Vec::new();
            for n in 0..20 {
                let policy = if n % 2 == 0 {
                    pb::Policy::Disabled
                } else {
                    pb::Policy::Auto
                };
                revisions.push(set_policy(client.clone(), &admin, tool, policy).await);
            }
            revisions
        }));
    }
    let mut all = Vec::new();
    for a in admins {
        all.extend(a.await.unwrap());
    }
    all.sort();
    let expected: Vec<u64> = (first + 1..=first + 60).collect();
    assert_eq!(all, expected, "each Save got its own revision, with no gap");
    let last = first + 60;
    target_tx.send(last).unwrap();
    let (_, truth) = list_state(c.r(0), &c.admin, last).await;
    check_watchers(&c, watchers, first, last, &truth).await;
    for i in 0..3 {
        assert_eq!(
            list_state(c.r(i), &c.admin, last).await,
            (last, truth.clone())
        );
    }
    // Sixty Saves racing on three replicas left one linear hash chain.
    let stdout = audit_verify(&c.db.url);
    assert!(
        stdout.contains(&format!("{last} revisions verified")),
        "{stdout}"
    );
}

/// `toolgate audit verify` on the cluster's database: it must pass; its standard output.
fn audit_verify(url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_toolgate"))
        .args(["audit", "verify", "--database-url", url])
        .output()
        .expect("toolgate audit verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_one_of_sixteen_decides_on_three_replicas_uses_an_approval() {
    let c = Cluster::start(3).await;
    c.connect(0, TOOLS).await;
    people(&c).await;
    // Several rounds: a race that a missing row lock would lose shows up in one of them.
    for round in 0..10 {
        let args = format!(r#"{{"user":"u{round}"}}"#);
        let first = c
            .r(round)
            .decide(with_key(
                &c.agent,
                ask("reset_password", &args, &format!("req-{round}")),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(verdict(&first).0, pb::Verdict::PendingApproval);
        let approval = first.approval.expect("approval").id;
        c.r(round + 1)
            .submit_approval(with_key(
                &c.approver,
                pb::SubmitApprovalRequest {
                    approval_id: approval.clone(),
                    role: pb::ApproverRole::Technician as i32,
                    approver_id: "tech".into(),
                    approve: true,
                    comment: "ok".into(),
                },
            ))
            .await
            .expect("approve");
        // All sixteen leave together.
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(16));
        let mut calls = Vec::new();
        for n in 0..16 {
            let mut client = c.r(n);
            let req = with_approval(ask("reset_password", &args, &format!("use-{n}")), &approval);
            let agent = c.agent.clone();
            let start = start.clone();
            calls.push(tokio::spawn(async move {
                start.wait().await;
                client
                    .decide(with_key(&agent, req))
                    .await
                    .map(|r| r.into_inner())
            }));
        }
        let mut allowed = 0;
        for call in calls {
            let r = call.await.unwrap().expect("decide");
            match verdict(&r) {
                (pb::Verdict::Allow, _) => allowed += 1,
                other => assert_eq!(
                    other,
                    (pb::Verdict::Deny, pb::DecisionCode::ApprovalConsumed)
                ),
            }
        }
        assert_eq!(
            allowed, 1,
            "round {round}: an approval allows exactly one call"
        );
    }
    // Each round's creation, approval and the one use that won its race (sixteen writers of
    // the same version on three replicas) are in one linear chain: 3 events a round.
    let stdout = audit_verify(&c.db.url);
    assert!(stdout.contains("30 approval events verified"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_decided_on_one_replica_reaches_watchers_on_another() {
    let c = Cluster::start(2).await;
    c.connect(0, TOOLS).await;
    people(&c).await;
    let mut stream = c
        .r(1)
        .watch_approvals(with_key(&c.approver, pb::WatchApprovalsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let created = c
        .r(0)
        .decide(with_key(&c.agent, ask("reset_password", "{}", "req-1")))
        .await
        .unwrap()
        .into_inner()
        .approval
        .expect("approval");
    c.r(0)
        .submit_approval(with_key(
            &c.approver,
            pb::SubmitApprovalRequest {
                approval_id: created.id.clone(),
                role: pb::ApproverRole::Technician as i32,
                approver_id: "tech".into(),
                approve: true,
                comment: "ok".into(),
            },
        ))
        .await
        .expect("approve");
    let mut states = Vec::new();
    while states.last() != Some(&(pb::ApprovalState::Approved as i32)) {
        let msg = tokio::time::timeout(MUST_HAPPEN, stream.message())
            .await
            .unwrap_or_else(|_| panic!("replica 1 never heard\n{}", c.logs()))
            .unwrap()
            .unwrap();
        if let Some(a) = msg.approval {
            assert_eq!(a.id, created.id);
            states.push(a.state);
        }
    }
    assert_eq!(
        states,
        vec![
            pb::ApprovalState::Pending as i32,
            pb::ApprovalState::Approved as i32
        ]
    );
}

/// A technician's answer on `replica`.
async fn submit(
    c: &Cluster,
    replica: usize,
    approval_id: &str,
    approver: &str,
) -> Result<pb::Approval, Status> {
    c.r(replica)
        .submit_approval(with_key(
            &c.approver,
            pb::SubmitApprovalRequest {
                approval_id: approval_id.into(),
                role: pb::ApproverRole::Technician as i32,
                approver_id: approver.into(),
                approve: true,
                comment: String::new(),
            },
        ))
        .await
        .map(|r| r.into_inner().approval.expect("approval"))
}

/// Replica 0 remembers what it last read and wrote of approvals and people, to skip the
/// read on its next decision. A directory sync on replica 1 that it never heard of still
/// rules that decision: the write checks the people it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_change_on_one_replica_rules_the_next_approval_on_another() {
    let c = Cluster::start(2).await;
    c.connect(0, TOOLS).await;
    people(&c).await;
    let ask_on_0 = |request: &'static str| {
        let mut client = c.r(0);
        let agent = c.agent.clone();
        async move {
            client
                .decide(with_key(&agent, ask("reset_password", "{}", request)))
                .await
                .expect("decide")
                .into_inner()
                .approval
                .expect("approval")
        }
    };
    // Replica 0 reads tech (a technician) while approving the first.
    let first = ask_on_0("req-1").await;
    let approved = submit(&c, 0, &first.id, "tech").await.expect("approve");
    assert_eq!(approved.state, pb::ApprovalState::Approved as i32);
    let second = ask_on_0("req-2").await;
    // On replica 1, tech stops being a technician.
    c.r(1)
        .upsert_people(with_key(
            &c.admin,
            pb::UpsertPeopleRequest {
                people: vec![person("tech", "", false)],
            },
        ))
        .await
        .expect("upsert people");
    let refused = submit(&c, 0, &second.id, "tech").await;
    let status = refused.expect_err("tech is no technician any more");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("technician"), "{status:?}");
    let still = c
        .r(1)
        .get_approval(with_key(
            &c.admin,
            pb::GetApprovalRequest {
                approval_id: second.id.clone(),
            },
        ))
        .await
        .expect("get approval")
        .into_inner()
        .approval
        .expect("approval");
    assert_eq!(
        (still.state, still.steps.len()),
        (pb::ApprovalState::Pending as i32, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_resumes_on_another_replica_from_a_revision_seen_on_the_first() {
    let c = Cluster::start(2).await;
    let first = c.connect(0, TOOLS).await;
    let seen_on_a = set_policy(c.r(0), &c.admin, "t0", pb::Policy::Disabled).await;
    let mut later = Vec::new();
    for tool in ["t1", "t2"] {
        later.push(set_policy(c.r(0), &c.admin, tool, pb::Policy::Disabled).await);
    }
    assert_eq!(later, vec![first + 2, first + 3]);
    // Read-your-writes on B: Decide waits for A's last revision instead of answering older.
    let d = c
        .r(1)
        .decide(with_key(
            &c.agent,
            pb::DecideRequest {
                min_revision: Some(first + 3),
                ..ask("t2", "{}", "r-1")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(d.revision, first + 3);
    assert_eq!(verdict(&d).1, pb::DecisionCode::ToolDisabled);
    // A revision no replica has reached: UNAVAILABLE after the bounded wait, never older.
    let ahead = c
        .r(1)
        .decide(with_key(
            &c.agent,
            pb::DecideRequest {
                min_revision: Some(first + 100),
                ..ask("t2", "{}", "r-2")
            },
        ))
        .await;
    assert_eq!(ahead.unwrap_err().code(), Code::Unavailable);
    let mut client = c.r(1);
    let mut stream = client
        .watch_config(with_key(
            &c.admin,
            pb::WatchConfigRequest {
                since_revision: Some(seen_on_a),
                integration_id: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut revisions = Vec::new();
    while revisions.len() < 2 {
        let msg = tokio::time::timeout(MUST_HAPPEN, stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match msg.event.unwrap() {
            Event::Change(_) => revisions.push(msg.revision),
            Event::Heartbeat(_) => {}
            Event::Snapshot(_) => panic!("a resume within the history replays changes"),
        }
    }
    assert_eq!(revisions, later);
}

/// Replicas 0 and 1 reach the database through a proxy; replica 2 directly. Connections
/// are cut while approvals are created and used and policies saved; then 0 and 1 lose the
/// database for a while, during which replica 2 goes on saving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_and_an_outage_lose_nothing_and_never_allow_without_the_database() {
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let c = Cluster::start_via(3, |i, url| {
        if i < 2 {
            proxy.url(url)
        } else {
            url.to_owned()
        }
    })
    .await;
    let first = c.connect(2, TOOLS).await;
    people(&c).await;
    let (target_tx, target) = watch::channel(u64::MAX);
    let watchers = start_watchers(&c, 0..3, &target).await;

    // Phase 1: load, with every connection cut five times.
    let (saved_tx, mut saved) = watch::channel(0usize);
    let saver = {
        let clients: Vec<Client> = (0..3).map(|i| c.r(i)).collect();
        let admin = c.admin.clone();
        tokio::spawn(async move {
            for n in 0..30usize {
                let policy = [pb::Policy::Disabled, pb::Policy::Auto][n % 2];
                let client = clients[n % 3].clone();
                let tool = TOOLS[(n / 2) % 3];
                // A Save cut before its answer may have committed: saving again is harmless.
                retry(|| {
                    let mut client = client.clone();
                    let admin = admin.clone();
                    async move {
                        client
                            .set_policy(with_key(
                                &admin,
                                pb::SetPolicyRequest {
                                    changes: vec![change("entra", tool, policy, None)],
                                    expected_revision: None,
                                    comment: String::new(),
                                },
                            ))
                            .await
                    }
                })
                .await;
                saved_tx.send_replace(n + 1);
            }
        })
    };
    let approvals = {
        let clients: Vec<Client> = (0..3).map(|i| c.r(i)).collect();
        let (agent, approver) = (c.agent.clone(), c.approver.clone());
        tokio::spawn(async move {
            let mut used = Vec::new();
            for n in 0..15usize {
                let args = format!(r#"{{"user":"u{n}"}}"#);
                let request = format!("req-{n}");
                let ask_on = |i: usize, req: pb::DecideRequest| {
                    let mut client = clients[i % 3].clone();
                    let agent = agent.clone();
                    async move {
                        client
                            .decide(with_key(&agent, req))
                            .await
                            .map(|r| r.into_inner())
                    }
                };
                // Asking again with the same request id returns the same approval.
                let pending = retry(|| ask_on(n, ask("reset_password", &args, &request))).await;
                assert_eq!(verdict(&pending).0, pb::Verdict::PendingApproval);
                let id = pending.approval.expect("approval").id;
                let approve = |i: usize| {
                    let mut client = clients[i % 3].clone();
                    let approver = approver.clone();
                    let id = id.clone();
                    async move {
                        let r = client
                            .submit_approval(with_key(
                                &approver,
                                pb::SubmitApprovalRequest {
                                    approval_id: id,
                                    role: pb::ApproverRole::Technician as i32,
                                    approver_id: "tech".into(),
                                    approve: true,
                                    comment: "ok".into(),
                                },
                            ))
                            .await;
                        match r {
                            // An approval cut before its answer may have been saved: the
                            // second try finds it decided (the Decide below proves it).
                            Err(s) if s.code() == Code::FailedPrecondition => Ok(()),
                            other => other.map(|_| ()),
                        }
                    }
                };
                retry(|| approve(n + 1)).await;
                let go = retry(|| {
                    ask_on(
                        n + 2,
                        with_approval(ask("reset_password", &args, &request), &id),
                    )
                })
                .await;
                // One ALLOW ever: when the cut took the answer of a Decide that had
                // consumed the approval, the retry is told it was consumed, by this very
                // request (the ALLOW is lost with the answer, never given twice).
                let lost_in_the_cut = verdict(&go)
                    == (pb::Verdict::Deny, pb::DecisionCode::ApprovalConsumed)
                    && go
                        .approval
                        .as_ref()
                        .is_some_and(|a| a.consumed_by_request_id == request);
                assert!(
                    verdict(&go) == (pb::Verdict::Allow, pb::DecisionCode::ApprovalGranted)
                        || lost_in_the_cut,
                    "{go:?}"
                );
                // Using it again for another call is refused, on any replica.
                let again =
                    retry(|| ask_on(n, with_approval(ask("reset_password", &args, "other"), &id)))
                        .await;
                assert_eq!(
                    verdict(&again),
                    (pb::Verdict::Deny, pb::DecisionCode::ApprovalConsumed)
                );
                used.push((id, request));
            }
            used
        })
    };
    let mut admin_db = helpers::pg::admin().await;
    // Cut at Saves 3, 9, 15, 21 and 27: in the middle of the load, whatever its pace.
    for k in 0..5 {
        saved
            .wait_for(|n| *n >= 3 + 6 * k)
            .await
            .expect("the saver runs until its last Save");
        proxy.cut();
        let dbname = c.db.url.rsplit('/').next().unwrap().to_owned();
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'toolgate'",
        )
        .bind(dbname)
        .execute(&mut admin_db)
        .await
        .expect("terminate backends");
    }
    tokio::time::timeout(MUST_HAPPEN * 2, saver)
        .await
        .unwrap_or_else(|_| panic!("saves did not finish\n{}", c.logs()))
        .unwrap();
    let used = tokio::time::timeout(MUST_HAPPEN * 2, approvals)
        .await
        .unwrap_or_else(|_| panic!("approvals did not finish\n{}", c.logs()))
        .unwrap();

    // Phase 2: replicas 0 and 1 lose the database; replica 2 keeps saving.
    proxy.down();
    for i in 0..2 {
        let auto = c
            .r(i)
            .decide(with_key(&c.agent, ask("get_user", "{}", "during-outage")))
            .await
            .expect("an auto tool is decided from the snapshot");
        assert_eq!(verdict(auto.get_ref()).0, pb::Verdict::Allow);
        let needs_db = c
            .r(i)
            .decide(with_key(
                &c.agent,
                ask("reset_password", "{}", &format!("outage-{i}")),
            ))
            .await;
        assert_eq!(
            needs_db.map(|r| verdict(r.get_ref())).unwrap_err().code(),
            Code::Unavailable,
            "a call that needs the database is never answered without it"
        );
    }
    c.replicas[0].wait_for_health(false).await;
    assert!(
        c.replicas[2].serving().await,
        "the replica with its database serves on"
    );
    let mut last = 0;
    for tool in ["t0", "t1", "t2"] {
        last = set_policy(c.r(2), &c.admin, tool, pb::Policy::ApprovalNeeded).await;
    }
    proxy.up();
    c.replicas[0].wait_for_health(true).await;
    c.replicas[1].wait_for_health(true).await;

    // Nothing lost, nothing used twice, every revision seen by every watcher.
    let store = toolgate::store::open(&c.db.url, &Default::default())
        .await
        .unwrap();
    use toolgate::store::Store;
    for (id, request) in &used {
        let a = store
            .get_approval("acme", id)
            .await
            .unwrap()
            .expect("approval kept");
        assert_eq!(a.state, toolgate::policy::ApprovalState::Consumed);
        assert_eq!(a.consumed_by_request.as_deref(), Some(request.as_str()));
    }
    let revisions = store.tenant_revisions().await.unwrap();
    assert_eq!(revisions, vec![("acme".to_owned(), last)]);
    target_tx.send(last).unwrap();
    let (_, truth) = list_state(c.r(2), &c.admin, last).await;
    check_watchers(&c, watchers, first, last, &truth).await;
    for i in 0..3 {
        assert_eq!(
            list_state(c.r(i), &c.admin, last).await,
            (last, truth.clone())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_starting_together_on_a_new_database_migrate_once() {
    let url = helpers::pg::create_database().await;
    let (a, b, c) = tokio::join!(
        harness::Replica::start(&url),
        harness::Replica::start(&url),
        harness::Replica::start(&url)
    );
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count() as i64;
    assert_eq!(
        applied,
        (1..=files).collect::<Vec<_>>(),
        "each migration applied once"
    );
    for r in [&a, &b, &c] {
        assert!(r.serving().await, "{}", r.logs());
    }
}

/// A rollback saved on one replica while another saves: one revision, seen by watchers on
/// every replica, and every replica's tools end where the history says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_on_one_replica_reaches_every_replica_as_one_revision() {
    let c = Cluster::start(3).await;
    let first = c.connect(0, TOOLS).await;
    let mut revisions = Vec::new();
    for (i, tool) in TOOLS.iter().enumerate() {
        revisions.push(set_policy(c.r(i % 3), &c.admin, tool, pb::Policy::Disabled).await);
    }
    let before = *revisions.iter().max().unwrap();
    let (target_tx, target) = watch::channel(u64::MAX);
    let watchers = start_watchers(&c, 0..3, &target).await;
    let rolled = c
        .r(1)
        .rollback_policies(with_key(
            &c.admin,
            pb::RollbackPoliciesRequest {
                to_revision: first,
                expected_revision: Some(before),
                comment: "back to the seed".into(),
            },
        ))
        .await
        .expect("rollback")
        .into_inner();
    assert_eq!(rolled.revision, before + 1);
    assert_eq!(rolled.tools.len(), TOOLS.len());
    // The stale guard holds across replicas too.
    let stale = c
        .r(2)
        .rollback_policies(with_key(
            &c.admin,
            pb::RollbackPoliciesRequest {
                to_revision: first,
                expected_revision: Some(before),
                comment: String::new(),
            },
        ))
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::FailedPrecondition);
    let last = rolled.revision;
    target_tx.send(last).unwrap();
    let (_, truth) = list_state(c.r(0), &c.admin, last).await;
    assert!(
        truth.values().all(|p| *p != pb::Policy::Disabled as i32),
        "every tool has its seeded policy again: {truth:?}"
    );
    check_watchers(&c, watchers, before, last, &truth).await;
    for i in 0..3 {
        assert_eq!(
            list_state(c.r(i), &c.admin, last).await,
            (last, truth.clone())
        );
    }
    let history = c
        .r(2)
        .list_revisions(with_key(&c.admin, pb::ListRevisionsRequest::default()))
        .await
        .expect("history")
        .into_inner();
    let newest = &history.revisions[0];
    assert_eq!(newest.revision, last);
    assert_eq!(newest.kind, pb::RevisionKind::Rollback as i32);
    assert_eq!(newest.comment, "back to the seed");
    assert_eq!(newest.diffs.len(), TOOLS.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_approvals_on_three_replicas_are_all_delivered_none_twice_at_once() {
    use receiver::{Answer, Receiver, SECRET};
    // Each answer takes a little while, so attempts overlap in time across replicas: a
    // delivery claimed by two replicas at once would show as an overlap.
    let hook = Receiver::start(|_, _| Answer::After(Duration::from_millis(20))).await;
    let mut c = Cluster::start(3).await;
    c.connect(0, TOOLS).await;
    people(&c).await;
    c.r(0)
        .set_notification_channel(with_key(
            &c.admin,
            pb::SetNotificationChannelRequest {
                channel: Some(pb::NotificationChannel {
                    id: "ops".into(),
                    kind: pb::ChannelKind::Webhook as i32,
                    url: hook.url.clone(),
                    secret: SECRET.into(),
                    enabled: true,
                    ..Default::default()
                }),
            },
        ))
        .await
        .expect("channel");
    let ask_on = |c: &Cluster, i: usize| {
        let mut client = c.r(i);
        let agent = c.agent.clone();
        async move {
            let args = format!(r#"{{"user":"u{i}"}}"#);
            let answer = client
                .decide(with_key(
                    &agent,
                    ask("reset_password", &args, &format!("r{i}")),
                ))
                .await
                .expect("decide")
                .into_inner();
            assert_eq!(verdict(&answer).0, pb::Verdict::PendingApproval);
        }
    };
    // 100 approvals over three replicas, 10 at a time.
    for chunk in (0..100).collect::<Vec<_>>().chunks(10) {
        futures_util::future::join_all(chunk.iter().map(|&i| ask_on(&c, i))).await;
    }
    // One replica dies mid-way, perhaps with attempts in flight: its leases run out and
    // the others take its deliveries up.
    hook.wait_for(20).await;
    drop(c.replicas.remove(2));
    for chunk in (100..200).collect::<Vec<_>>().chunks(10) {
        futures_util::future::join_all(chunk.iter().map(|&i| ask_on(&c, i))).await;
    }
    // Every event reached the receiver (its own signal), then every outcome is recorded:
    // the API pushes no delivery events, so the record is read again until it is complete.
    hook.wait_for(200).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut page_token = String::new();
    let mut delivered = 0;
    loop {
        let page = c
            .r(0)
            .list_deliveries(with_key(
                &c.admin,
                pb::ListDeliveriesRequest {
                    state: pb::DeliveryState::Delivered as i32,
                    page_size: 500,
                    page_token: std::mem::take(&mut page_token),
                    ..Default::default()
                },
            ))
            .await
            .expect("list deliveries")
            .into_inner();
        delivered += page.deliveries.len();
        page_token = page.next_page_token;
        if !page_token.is_empty() {
            continue;
        }
        if delivered == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{delivered} of 200 delivered\n{}",
            c.logs()
        );
        delivered = 0;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = hook.seen();
    let ids: std::collections::HashSet<_> = seen.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 200, "every event arrived");
    let approvals: std::collections::HashSet<_> = seen
        .iter()
        .map(|r| {
            r.json()["data"]["approval"]["id"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(approvals.len(), 200);
    assert_eq!(
        hook.overlaps(),
        0,
        "no delivery was in flight twice at once"
    );
    // Two hundred approvals created ten at a time across three replicas left one linear
    // chain of approval events.
    let stdout = audit_verify(&c.db.url);
    assert!(stdout.contains("200 approval events verified"), "{stdout}");
}
