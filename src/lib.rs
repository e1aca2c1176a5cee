//! toolgate: a gRPC policy decision point for AI agents' tool calls.
//!
//! # Layout
//!
//! - [`policy`]: the pure core. Domain types, default seeding, Decide's rules, approval
//!   rules, RFC 8785 canonical hashing, Save planning. No tonic, prost or sqlx in here.
//! - [`snapshot`]: every tenant's tools in memory; the Decide hot path reads only this.
//!   It also broadcasts each applied revision to WatchConfig streams.
//! - [`hub`]: the per-tenant broadcast of approval changes for WatchApprovals.
//! - [`store`]: the one seam to the database: a trait, and its SQLite and PostgreSQL
//!   implementations.
//! - [`app`]: the use cases (decide, save, approvals, watch starts, authentication, the
//!   follower and the expiry sweep), written once for every transport. No tonic, no sqlx.
//! - [`grpc`]: the `toolgate.v1.PolicyService` transport: authenticate, convert, call
//!   [`app`], convert back; the single mapping of errors to gRPC statuses.
//! - [`delivery`]: approval delivery: channels, the outbox's worker, webhooks and Slack.
//! - [`http`]: the HTTP listener: Slack's button clicks, and the web console
//!   ([`console`]: the page, and `PolicyService` in JSON through the same gate).
//! - [`server`]: wires store, snapshot, health and reflection, and drains on shutdown.
//! - [`telemetry`]: OpenTelemetry traces over OTLP, off unless `otlp_endpoint` is set.
//! - [`config`]: flags, environment, TOML file and defaults, resolved once.
//! - [`keys`]: API key generation and hashing.
//! - [`proto`]: the generated code.
#![forbid(unsafe_code)]

pub mod app;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod grpc;
pub mod http;
pub mod hub;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod proto;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod telemetry;

pub use server::{run, serve};

/// The hash map of the maps every Decide looks up (the key cache, the tenants' snapshots
/// and their tools, the gate's per-key and per-connection places): foldhash, randomly
/// seeded per process and per map, instead of std's SipHash, which cost each Decide
/// more (`BENCHMARKS.md` has the figure). Their keys are hashes of live keys,
/// names an admin set, authenticated key ids and peer addresses; maps whose keys anyone
/// may choose (the refused-token cache, say) keep std's hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
