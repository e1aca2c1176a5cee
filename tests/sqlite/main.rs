//! The conformance suite against SQLite (a temporary file per test).
//!
//! The suite's code lives in `tests/suite/` and is compiled once per backend: every
//! behaviour is checked, through the real server and the generated client, on both stores.

const BACKEND: helpers::Backend = helpers::Backend::Sqlite;

#[path = "../suite/admin.rs"]
mod admin;
#[path = "../suite/approvals.rs"]
mod approvals;
#[path = "../suite/auth.rs"]
mod auth;
#[path = "../suite/cli.rs"]
mod cli;
#[path = "../suite/decide.rs"]
mod decide;
#[path = "../suite/deliveries.rs"]
mod deliveries;
#[path = "../suite/hardening.rs"]
mod hardening;
#[path = "../suite/helpers.rs"]
mod helpers;
#[path = "../suite/history.rs"]
mod history;
#[path = "../suite/limits.rs"]
mod limits;
#[path = "../suite/metrics.rs"]
mod metrics;
#[path = "../suite/ops.rs"]
mod ops;
#[path = "../suite/receiver.rs"]
mod receiver;
#[path = "../suite/slack.rs"]
mod slack;
#[path = "../suite/slack_api.rs"]
mod slack_api;
#[path = "../suite/upgrade.rs"]
mod upgrade;
#[path = "../suite/watch.rs"]
mod watch;
