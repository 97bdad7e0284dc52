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
    /// PEM certificate (chain) of the agent service; with `--agent-tls-key`, agents connect
    /// over TLS. Unset: plaintext (loopback and tests only).
    #[arg(
        long,
        env = "WEFT_AGENT_TLS_CERT",
        requires = "agent_tls_key",
        global = true
    )]
    pub agent_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the agent service's certificate.
    #[arg(
        long,
        env = "WEFT_AGENT_TLS_KEY",
        requires = "agent_tls_cert",
        global = true
    )]
    pub agent_tls_key: Option<std::path::PathBuf>,
    /// PEM certificate (chain) of the REST API; with `--tls-key`, REST is served over TLS
    /// only (HTTP/2 and HTTP/1.1) and answers carry `Strict-Transport-Security`. Unset:
    /// plain HTTP (loopback, or behind a TLS-terminating proxy).
    #[arg(long, env = "WEFT_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the REST API's certificate.
    #[arg(long, env = "WEFT_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<std::path::PathBuf>,
    /// How long an identity no endpoint uses is kept before it is collected.
    #[arg(
        long,
        env = "WEFT_IDENTITY_GC_GRACE_SECONDS",
        default_value_t = 3600,
        global = true
    )]
    pub identity_gc_grace_seconds: u64,
    /// Seconds a request may take, reading its body included (a client sending it a byte
    /// a second gets 408 after them); an event stream's events are not bounded by it.
    #[arg(
        long,
        env = "WEFT_REQUEST_TIMEOUT_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        global = true
    )]
    pub request_timeout_seconds: u64,
    /// Days of flows kept: older daily partitions are dropped whole.
    #[arg(
        long,
        env = "WEFT_FLOW_RETENTION_DAYS",
        default_value_t = 7,
        global = true
    )]
    pub flow_retention_days: u32,
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
    /// Failed authentication attempts a source address (or one credential) may make per
    /// minute before further failures are answered 429. Valid credentials are never
    /// limited.
    #[arg(
        long,
        env = "WEFT_AUTH_FAILURE_LIMIT",
        default_value_t = crate::ratelimit::MAX_FAILURES,
        global = true
    )]
    pub auth_failure_limit: u32,
    /// The node-agent binary served at `/downloads/node-agent/linux-amd64` for
    /// `/install.sh`. Default: `node-agent` beside this executable, if there is one.
    #[arg(long, env = "WEFT_AGENT_BINARY", global = true)]
    pub agent_binary: Option<std::path::PathBuf>,
    /// This API's URL as nodes reach it (baked into `/install.sh`). Default: from the
    /// request's `Host` header.
    #[arg(long, env = "WEFT_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// The agent service's URL as nodes reach it. Default: the public host with the port
    /// of `--agent-listen`, https when the agent service has a certificate.
    #[arg(long, env = "WEFT_PUBLIC_AGENT_URL", global = true)]
    pub public_agent_url: Option<String>,
    /// The built web console (`web-console/dist`), served at `/console/`; `GET /` redirects
    /// there. Unset: no console (those paths answer 404).
    #[arg(long, env = "WEFT_CONSOLE_DIR", global = true)]
    pub console_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub oidc: OidcConfig,
}

/// OpenID Connect: console sign-in and bearer access tokens (JWT) from one issuer.
#[derive(Debug, Clone, clap::Args)]
pub struct OidcConfig {
    /// Issuer URL (discovery at `<issuer>/.well-known/openid-configuration`). Unset: no
    /// sign-in (the `/auth/*` routes answer 404) and bearer JWTs are refused.
    #[arg(long, env = "WEFT_OIDC_ISSUER", global = true)]
    pub oidc_issuer: Option<String>,
    /// Client id of this API at the issuer (console sign-in).
    #[arg(long, env = "WEFT_OIDC_CLIENT_ID", global = true)]
    pub oidc_client_id: Option<String>,
    /// Client secret of this API at the issuer.
    #[arg(
        long,
        env = "WEFT_OIDC_CLIENT_SECRET",
        hide_env_values = true,
        global = true
    )]
    pub oidc_client_secret: Option<String>,
    /// Where the issuer sends the browser back: this API's `/auth/callback` as the browser
    /// reaches it, e.g. `https://weft.example.com/auth/callback`.
    #[arg(long, env = "WEFT_OIDC_REDIRECT_URL", global = true)]
    pub oidc_redirect_url: Option<String>,
    /// Audience that bearer access tokens must name (this API's resource indicator).
    /// Unset: the client id.
    #[arg(long, env = "WEFT_OIDC_AUDIENCE", global = true)]
    pub oidc_audience: Option<String>,
    /// Lifetime of a console session, in seconds.
    #[arg(
        long,
        env = "WEFT_SESSION_TTL_SECONDS",
        default_value_t = 12 * 3600,
        global = true
    )]
    pub session_ttl_seconds: u64,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Shortest operator token we accept: guessing must be hopeless.
pub const MIN_OPERATOR_TOKEN_LEN: usize = 32;
