//! Integration tests: the real server over a real SQLite file, through the generated client.

mod admin;
mod approvals;
mod auth;
mod decide;
mod helpers;
mod ops;
mod watch;
