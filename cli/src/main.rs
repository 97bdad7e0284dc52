//! `weft`: the tenant CLI over Weft's REST API.

mod apply;
mod auth_cmd;
mod client;
mod config;
mod connectivity;
mod diff;
mod flows;
mod manifest;
mod nodes;
mod observe;
mod oidc;
mod output;
mod resources;
mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::Target;

/// Exit status for "ran fine, but the answer is no": unhealthy status, differences
/// found by diff.
pub const EXIT_NOT_READY: u8 = 3;

/// An outcome already printed, ending with this exit status.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit status {}", self.0)
    }
}

impl std::error::Error for Exit {}

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Weft: identity-based network security and load balancing, as a service",
    long_about = "The tenant CLI over Weft's REST API: sign in, see the health of your clusters, \
                  apply policies (native or CiliumNetworkPolicy), manage services, clusters and \
                  tokens, observe flows, and test connectivity end to end.",
    after_help = "Examples:\n  weft login --api-url https://weft.example.com --token weft_…\n  \
                  weft status --wait --timeout 5m\n  weft policy apply -f policies.yaml\n  \
                  weft observe --verdict DROPPED --last 20\n  \
                  weft connectivity test\n\n\
                  Exit status: 0 ok, 1 error, 2 usage, 3 not ready / differences found.\n\
                  Environment: WEFT_API_URL, WEFT_TOKEN, WEFT_TENANT, WEFT_CA_CERT override the \
                  context."
)]
struct Cli {
    /// Use this context instead of the current one.
    #[arg(long, global = true, env = "WEFT_CONTEXT")]
    context: Option<String>,
    /// API URL, overriding the context's.
    #[arg(long, global = true, env = "WEFT_API_URL", hide_env_values = true)]
    api_url: Option<String>,
    /// Tenant (name or id), overriding the context's.
    #[arg(long, short = 't', global = true, env = "WEFT_TENANT")]
    tenant: Option<String>,
    /// PEM certificates to trust for the API beside the system's (a private CA or a
    /// self-signed certificate); `weft login` keeps it in the context.
    #[arg(long, global = true, env = "WEFT_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Login(auth_cmd::LoginArgs),
    #[command(subcommand)]
    Context(auth_cmd::ContextCmd),
    #[command(subcommand)]
    Tenant(auth_cmd::TenantCmd),
    Status(status::StatusArgs),
    #[command(subcommand)]
    Policy(apply::PolicyCmd),
    #[command(subcommand)]
    Service(resources::ServiceCmd),
    #[command(subcommand)]
    Cluster(resources::ClusterCmd),
    #[command(subcommand)]
    Node(nodes::NodeCmd),
    #[command(subcommand)]
    Token(resources::TokenCmd),
    Observe(observe::ObserveArgs),
    #[command(subcommand)]
    Connectivity(connectivity::ConnectivityCmd),
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let target = Target {
        context: cli.context,
        api_url: cli.api_url,
        tenant: cli.tenant,
        ca_cert: cli.ca_cert,
    };
    match cli.command {
        Cmd::Login(a) => auth_cmd::login(&target, a).await,
        Cmd::Context(c) => auth_cmd::context(c),
        Cmd::Tenant(c) => auth_cmd::tenant(&target, c).await,
        Cmd::Status(a) => status::run(&target, a).await,
        Cmd::Policy(c) => apply::policy(&target, c).await,
        Cmd::Service(c) => resources::service(&target, c).await,
        Cmd::Cluster(c) => resources::cluster(&target, c).await,
        Cmd::Node(c) => nodes::node(&target, c).await,
        Cmd::Token(c) => resources::token(&target, c).await,
        Cmd::Observe(a) => observe::run(&target, a).await,
        Cmd::Connectivity(c) => connectivity::connectivity(&target, c).await,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(Exit(code)) = e.downcast_ref::<Exit>() {
                return ExitCode::from(*code);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
