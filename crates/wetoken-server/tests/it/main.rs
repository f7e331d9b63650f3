//! End-to-end tests: the real server over real HTTP, against the mock WeChat, on SQLite, MariaDB
//! and PostgreSQL. See `harness.rs` for how databases are chosen.

mod harness;

mod alerts;
mod answers;
mod api;
mod beyond;
mod binary;
mod client;
mod cluster;
mod connections;
mod embed;
mod engine;
mod go_sdk;
mod limits;
mod manifests;
mod open_cluster;
mod open_push;
mod open_routes;
mod ops;
mod registry;
mod report_limits;
mod scale;
mod secrets;
mod security;
mod takeover;
