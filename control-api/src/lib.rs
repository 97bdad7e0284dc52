//! Weft control plane library: everything but process start-up lives here so tests and
//! tools reuse it.

pub mod agent;
pub mod api;
pub mod app;
pub mod auth;
pub mod changes;
pub mod config;
pub mod console;
pub mod db;
pub mod error;
pub mod etag;
pub mod extract;
pub mod flows;
pub mod group_commit;
pub mod heap;
pub mod heartbeats;
pub mod identities;
pub mod install;
pub mod metrics;
pub mod node_credentials;
pub mod oidc;
pub mod pagination;
pub mod ratelimit;
pub mod secret;
pub mod server;
pub mod session;
pub mod state;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod tls;
pub mod views;
