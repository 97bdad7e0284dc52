//! `weft node …`: a cluster's nodes, their agents' status, and removing one.

use anyhow::Result;
use clap::Subcommand;
use serde_json::Value;

use crate::client::{seg, Client, Target};
use crate::output::{self, Format};
use crate::resources::{delete_each, ClusterArg, Columns};

/// The nodes of a cluster (registered by their agents).
#[derive(Subcommand)]
pub enum NodeCmd {
    /// List a cluster's nodes and whether their agents are connected and current.
    #[command(after_help = "Example:\n  weft node list --cluster edge")]
    List {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one node.
    #[command(after_help = "Example:\n  weft node get edge-1 --cluster edge -o yaml")]
    Get {
        name: String,
        #[command(flatten)]
        cluster: ClusterArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Delete nodes (admin): their credentials stop working and their endpoints leave
    /// every other node; an agent still running must register again to rejoin.
    #[command(after_help = "Example:\n  weft node delete edge-1 --cluster edge")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

const NODES: Columns = Columns {
    headers: &[
        "name",
        "addresses",
        "pod cidrs",
        "connected",
        "applied revision",
        "age",
    ],
    row,
};

fn row(n: &Value) -> Vec<String> {
    let list = |v: &Value| {
        v.as_array()
            .map(|a| a.iter().map(output::cell).collect::<Vec<_>>().join(","))
            .unwrap_or_default()
    };
    vec![
        output::cell(&n["name"]),
        list(&n["addresses"]),
        list(&n["pod_cidrs"]),
        output::cell(&n["status"]["connected"]),
        output::cell(&n["status"]["applied_revision"]),
        output::age(&n["created_at"]),
    ]
}

pub async fn node(target: &Target, cmd: NodeCmd) -> Result<()> {
    let client = Client::new(target).await?;
    let coll = |c: &ClusterArg| client.tpath(&format!("/clusters/{}/nodes", seg(&c.cluster)));
    match cmd {
        NodeCmd::List { cluster, output } => NODES.list(&client, &coll(&cluster)?, output).await,
        NodeCmd::Get {
            name,
            cluster,
            output,
        } => {
            let path = format!("{}/{}", coll(&cluster)?, seg(&name));
            NODES.get(&client, &path, output).await
        }
        NodeCmd::Delete { names, cluster } => {
            delete_each(&client, &coll(&cluster)?, "node", &names).await
        }
    }
}
