//! Process configuration: every flag also reads an environment variable.

use std::net::SocketAddr;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "control-api",
    version,
    about = "Weft control plane: REST API over Postgres"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeConfig,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Print the OpenAPI document and exit.
    Openapi,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Postgres connection URL.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Address the REST API listens on.
    #[arg(
        long,
        env = "WEFT_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// Address the agent gRPC service listens on.
    #[arg(
        long,
        env = "WEFT_AGENT_LISTEN",
        default_value = "127.0.0.1:8081",
        global = true
    )]
    pub agent_listen: SocketAddr,
    /// Operator bootstrap token (at least 32 characters): may create tenants and act as
    /// owner in every tenant. Unset: no operator access.
    #[arg(
        long,
        env = "WEFT_OPERATOR_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub operator_token: Option<String>,
    /// Log format.
    #[arg(
        long,
        env = "WEFT_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Largest number of Postgres connections.
    #[arg(
        long,
        env = "WEFT_DB_MAX_CONNECTIONS",
        default_value_t = 16,
        global = true
    )]
    pub db_max_connections: u32,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Shortest operator token we accept: guessing must be hopeless.
pub const MIN_OPERATOR_TOKEN_LEN: usize = 32;
