//! Real `toolgate` processes on one PostgreSQL database, and a TCP proxy that can cut or
//! refuse their connections to it.

use crate::helpers::{self, with_key};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tonic::transport::Channel;
use toolgate::policy::Role;
use toolgate::proto::v1 as pb;
use toolgate::proto::v1::policy_service_client::PolicyServiceClient;

/// Settings every replica in these tests runs with: short intervals, so an outage is
/// noticed and a missed wake-up covered within a test's patience.
const REPLICA_FLAGS: &[&str] = &[
    "--log-format",
    "json",
    "--catch-up-interval",
    "300ms",
    "--approval-poll-interval",
    "50ms",
    "--key-refresh-interval",
    "200ms",
    "--db-timeout",
    "1s",
    "--db-unavailable-after",
    "1s",
    "--shutdown-grace",
    "2s",
];

/// One `toolgate serve` process.
pub struct Replica {
    child: Child,
    pub addr: SocketAddr,
    pub client: PolicyServiceClient<Channel>,
    /// Its log lines (JSON), kept for failure messages.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    pub async fn start(database_url: &str) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_toolgate"))
            .args([
                "serve",
                "--metrics-listen",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                database_url,
            ])
            .args(REPLICA_FLAGS)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start toolgate");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("toolgate serving")
                    && let Some(addr) = json_field(&line, "addr")
                {
                    let _ = addr_tx.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr =
            tokio::task::spawn_blocking(move || addr_rx.recv_timeout(Duration::from_secs(30)))
                .await
                .unwrap()
                .unwrap_or_else(|_| panic!("replica did not start: {:?}", log.lock().unwrap()))
                .parse()
                .expect("address in the log");
        let client = PolicyServiceClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to replica");
        Replica {
            child,
            addr,
            client,
            log,
        }
    }

    pub fn client(&self) -> PolicyServiceClient<Channel> {
        self.client.clone()
    }

    /// The replica's health for the policy service.
    pub async fn serving(&self) -> bool {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
        else {
            return false;
        };
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "toolgate.v1.PolicyService".into(),
            })
            .await
            .map(|r| r.into_inner().status == ServingStatus::Serving as i32)
            .unwrap_or(false)
    }

    /// Waits, through the health Watch stream, until the policy service reports
    /// SERVING (`true`) or NOT_SERVING (`false`); fails the test after a bound.
    pub async fn wait_for_health(&self, serving: bool) {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let want = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        } as i32;
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect for health");
        let mut updates = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: "toolgate.v1.PolicyService".into(),
            })
            .await
            .expect("health watch")
            .into_inner();
        let reached = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(update) = updates.message().await.expect("health update") {
                if update.status == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            reached,
            Ok(true),
            "health never became {want:?} (1 = SERVING, 2 = NOT_SERVING)\n{}",
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_field(line: &str, name: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(v.get(name)?.as_str()?.to_owned())
}

/// A database, its keys, and the replicas on it.
pub struct Cluster {
    pub db: helpers::TestDb,
    pub admin: String,
    pub agent: String,
    pub approver: String,
    pub replicas: Vec<Replica>,
}

impl Cluster {
    /// `n` replicas on a fresh database, each connecting through `url_for(i)` (the
    /// database's own URL by default).
    pub async fn start(n: usize) -> Cluster {
        Self::start_via(n, |_, url| url.to_owned()).await
    }

    pub async fn start_via(n: usize, url_for: impl Fn(usize, &str) -> String) -> Cluster {
        let db = helpers::pg::create_database().await;
        let db = helpers::TestDb::postgres(db);
        let store = toolgate::store::open(&db.url, &Default::default())
            .await
            .expect("open store");
        let admin = helpers::mint(&store, "acme", Role::Admin).await;
        let agent = helpers::mint(&store, "acme", Role::Agent).await;
        let approver = helpers::mint(&store, "acme", Role::Approver).await;
        drop(store);
        let mut replicas = Vec::new();
        for i in 0..n {
            replicas.push(Replica::start(&url_for(i, &db.url)).await);
        }
        Cluster {
            db,
            admin,
            agent,
            approver,
            replicas,
        }
    }

    pub fn r(&self, i: usize) -> PolicyServiceClient<Channel> {
        self.replicas[i % self.replicas.len()].client()
    }

    /// Connects integration `entra` with `tools` through replica `i`.
    pub async fn connect(&self, i: usize, tools: &[&str]) -> u64 {
        let tools = tools
            .iter()
            .map(|name| pb::ToolDefinition {
                name: name.to_string(),
                description: format!("{name} tool"),
                input_schema_json: r#"{"type":"object"}"#.into(),
                annotations: None,
            })
            .collect();
        self.r(i)
            .connect_integration(with_key(
                &self.admin,
                pb::ConnectIntegrationRequest {
                    integration_id: "entra".into(),
                    kind: "entra_id".into(),
                    display_name: "Entra ID".into(),
                    tools,
                    comment: String::new(),
                },
            ))
            .await
            .expect("connect integration")
            .into_inner()
            .revision
    }

    pub fn logs(&self) -> String {
        self.replicas
            .iter()
            .enumerate()
            .map(|(i, r)| format!("--- replica {i}\n{}", r.logs()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and refuse new ones.
pub struct Proxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
    accept: AbortHandle,
}

#[derive(Default)]
struct ProxyState {
    down: bool,
    links: Vec<AbortHandle>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let s = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if s.lock().unwrap().down {
                    drop(client);
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut st = s.lock().unwrap();
                st.links.retain(|l| !l.is_finished());
                st.links.push(link.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            port,
            state,
            accept,
        }
    }

    /// The database URL with its host and port replaced by the proxy's.
    pub fn url(&self, database_url: &str) -> String {
        let (scheme_user, rest) = database_url.split_once('@').expect("user@host url");
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        format!("{scheme_user}@127.0.0.1:{}/{path}", self.port)
    }

    /// Drops every open connection and refuses new ones until [`Proxy::up`].
    pub fn down(&self) {
        let mut st = self.state.lock().unwrap();
        st.down = true;
        for link in st.links.drain(..) {
            link.abort();
        }
    }

    /// Drops every open connection; new ones are let through.
    pub fn cut(&self) {
        let mut st = self.state.lock().unwrap();
        for link in st.links.drain(..) {
            link.abort();
        }
    }

    pub fn up(&self) {
        self.state.lock().unwrap().down = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
