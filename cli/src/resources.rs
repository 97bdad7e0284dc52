//! `weft service …`, `weft cluster …` (with join tokens), `weft token …`.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::apply::{self, realized, FileArg};
use crate::client::{seg, Client, Target};
use crate::manifest::{self, Kind};
use crate::output::{self, Format};
use weft_model::routing::RoutingMode;

#[derive(Args)]
pub struct ClusterArg {
    /// The cluster (name or id).
    #[arg(short, long)]
    pub cluster: String,
}

/// How one kind of object prints: table headers and the row of one object.
pub struct Columns {
    pub headers: &'static [&'static str],
    pub row: fn(&Value) -> Vec<String>,
}

impl Columns {
    /// Prints every object of the collection at `coll`.
    pub async fn list(&self, client: &Client, coll: &str, output: Format) -> Result<()> {
        let items = Value::Array(client.list_all(coll, &[]).await?);
        output::print(output, &items, self.headers, || {
            items
                .as_array()
                .into_iter()
                .flatten()
                .map(self.row)
                .collect()
        })
    }

    /// Prints the object at `path`.
    pub async fn get(&self, client: &Client, path: &str, output: Format) -> Result<()> {
        let v = client.get(path).await?.body;
        self.print(output, &v)
    }

    /// Prints one object.
    pub fn print(&self, output: Format, v: &Value) -> Result<()> {
        output::print(output, v, self.headers, || vec![(self.row)(v)])
    }
}

/// Deletes each named object of the collection at `coll`, saying `kind/name deleted`.
pub async fn delete_each(client: &Client, coll: &str, kind: &str, names: &[String]) -> Result<()> {
    for n in names {
        client.delete(&format!("{coll}/{}", seg(n))).await?;
        println!("{kind}/{n} deleted");
    }
    Ok(())
}

/// Load-balanced services of a cluster.
#[derive(Subcommand)]
pub enum ServiceCmd {
    /// List a cluster's services.
    #[command(after_help = "Example:\n  weft service list --cluster edge")]
    List {
        #[command(flatten)]
        cluster: ClusterArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one service.
    #[command(after_help = "Example:\n  weft service get api --cluster edge -o yaml")]
    Get {
        name: String,
        #[command(flatten)]
        cluster: ClusterArg,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Create or update services from a file (the REST body, YAML or JSON, many `---`
    /// documents), by name.
    #[command(
        after_help = "Example:\n  weft service apply -f api.yaml --cluster edge\n\n\
        api.yaml:\n  name: api\n  algorithm: maglev\n  frontends: [{vip: 10.96.1.1, port: 443, protocol: TCP}]\n  \
        backends: [{address: 10.0.3.4, port: 8443}, {address: 10.0.3.5, port: 8443}]"
    )]
    Apply {
        #[command(flatten)]
        file: FileArg,
        #[command(flatten)]
        cluster: ClusterArg,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Delete services.
    #[command(after_help = "Example:\n  weft service delete api --cluster edge")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        cluster: ClusterArg,
    },
}

/// Clusters of nodes, and the join tokens nodes register with.
#[derive(Subcommand)]
pub enum ClusterCmd {
    /// List clusters.
    #[command(after_help = "Example:\n  weft cluster list -o json")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one cluster.
    #[command(after_help = "Example:\n  weft cluster get edge")]
    Get {
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Create a cluster.
    #[command(
        after_help = "Example:\n  weft cluster create edge --label env=prod --description 'edge PoPs'"
    )]
    Create {
        name: String,
        /// Label `key=value` (repeatable).
        #[arg(short, long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
        #[arg(long, default_value = "")]
        description: String,
        /// How the nodes reach each other's pods: `tunnel` (VXLAN, the default) or `native`
        /// (routes per node pod CIDR; the network must carry pod addresses).
        #[arg(long, value_parser = parse_routing)]
        routing: Option<RoutingMode>,
        /// Output format.
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Change a cluster's routing mode or description (other fields stay).
    #[command(after_help = "Example:\n  weft cluster update edge --routing native")]
    Update {
        name: String,
        /// `tunnel` or `native`; every node of the cluster reconfigures.
        #[arg(long, value_parser = parse_routing)]
        routing: Option<RoutingMode>,
        #[arg(long)]
        description: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Delete a cluster and everything in it (nodes, endpoints, services).
    #[command(after_help = "Example:\n  weft cluster delete edge")]
    Delete { name: String },
    /// Join tokens: what `node-agent run --join-token` registers with.
    #[command(subcommand)]
    JoinToken(JoinTokenCmd),
}

#[derive(Subcommand)]
pub enum JoinTokenCmd {
    /// Create a join token; the secret is printed once.
    #[command(
        after_help = "Example:\n  weft cluster join-token create edge --name rack-12 --max-uses 10 --expires-in 86400"
    )]
    Create {
        /// The cluster (name or id).
        cluster: String,
        #[arg(long, default_value = "cli")]
        name: String,
        /// Lifetime in seconds (server default 3600).
        #[arg(long)]
        expires_in: Option<i64>,
        /// Nodes that may register with it (server default 1; 0 = no limit).
        #[arg(long)]
        max_uses: Option<i32>,
        /// Output format.
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
}

/// API tokens for automation.
#[derive(Subcommand)]
pub enum TokenCmd {
    /// List API tokens (secrets are never returned).
    #[command(after_help = "Example:\n  weft token list")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Create an API token; the secret is printed once.
    #[command(
        after_help = "Example:\n  weft token create terraform-ci --role editor --expires-in 2592000"
    )]
    Create {
        name: String,
        /// viewer, editor, admin or owner.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Lifetime in seconds (default: no expiry).
        #[arg(long)]
        expires_in: Option<i64>,
        /// Output format.
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Revoke an API token (by name or id); takes effect at once.
    #[command(after_help = "Example:\n  weft token revoke terraform-ci")]
    Revoke { name: String },
}

fn parse_labels(labels: &[String]) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("label {l:?} is not KEY=VALUE");
        };
        m.insert(k.to_string(), json!(v));
    }
    Ok(Value::Object(m))
}

fn service_row(s: &Value) -> Vec<String> {
    let fronts = s["frontends"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .map(|f| {
                    format!(
                        "{}:{}/{}",
                        output::cell(&f["vip"]),
                        output::cell(&f["port"]),
                        output::cell(&f["protocol"])
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    vec![
        output::cell(&s["name"]),
        fronts,
        s["backends"].as_array().map_or(0, Vec::len).to_string(),
        output::cell(&s["algorithm"]),
        realized(s),
        output::age(&s["created_at"]),
    ]
}

const SERVICES: Columns = Columns {
    headers: &[
        "name",
        "frontends",
        "backends",
        "algorithm",
        "realized",
        "age",
    ],
    row: service_row,
};

pub async fn service(target: &Target, cmd: ServiceCmd) -> Result<()> {
    let client = Client::new(target).await?;
    let coll = |c: &ClusterArg| client.tpath(&format!("/clusters/{}/services", seg(&c.cluster)));
    match cmd {
        ServiceCmd::List { cluster, output } => {
            SERVICES.list(&client, &coll(&cluster)?, output).await
        }
        ServiceCmd::Get {
            name,
            cluster,
            output,
        } => {
            let path = format!("{}/{}", coll(&cluster)?, seg(&name));
            SERVICES.get(&client, &path, output).await
        }
        ServiceCmd::Apply {
            file,
            cluster,
            dry_run,
            output,
        } => {
            let objects = manifest::services(&file.read()?)?;
            apply::apply(
                &client,
                Kind::Service,
                &coll(&cluster)?,
                &objects,
                dry_run,
                false,
                output,
            )
            .await
        }
        ServiceCmd::Delete { names, cluster } => {
            delete_each(&client, &coll(&cluster)?, "service", &names).await
        }
    }
}

fn parse_routing(s: &str) -> std::result::Result<RoutingMode, String> {
    s.parse()
}

fn cluster_row(c: &Value) -> Vec<String> {
    vec![
        output::cell(&c["name"]),
        output::cell(&c["routing"]["mode"]),
        output::labels(&c["labels"]),
        output::cell(&c["description"]),
        output::age(&c["created_at"]),
    ]
}

const CLUSTERS: Columns = Columns {
    headers: &["name", "routing", "labels", "description", "age"],
    row: cluster_row,
};

pub async fn cluster(target: &Target, cmd: ClusterCmd) -> Result<()> {
    let client = Client::new(target).await?;
    let coll = client.tpath("/clusters")?;
    match cmd {
        ClusterCmd::List { output } => CLUSTERS.list(&client, &coll, output).await,
        ClusterCmd::Get { name, output } => {
            CLUSTERS
                .get(&client, &format!("{coll}/{}", seg(&name)), output)
                .await
        }
        ClusterCmd::Create {
            name,
            labels,
            description,
            routing,
            output,
        } => {
            let mut body =
                json!({"name": name, "labels": parse_labels(&labels)?, "description": description});
            if let Some(mode) = routing {
                body["routing"] = json!({ "mode": mode });
            }
            let c = client.post(&coll, body).await?.body;
            match output {
                Some(f) => CLUSTERS.print(f, &c),
                None => {
                    println!("cluster/{name} created");
                    Ok(())
                }
            }
        }
        ClusterCmd::Update {
            name,
            routing,
            description,
            output,
        } => {
            let mut patch = json!({});
            if let Some(mode) = routing {
                patch["routing"] = json!({ "mode": mode });
            }
            if let Some(d) = description {
                patch["description"] = json!(d);
            }
            if patch.as_object().is_some_and(|p| p.is_empty()) {
                bail!("nothing to change: give --routing or --description");
            }
            let c = client
                .patch(&format!("{coll}/{}", seg(&name)), patch)
                .await?
                .body;
            match output {
                Some(f) => CLUSTERS.print(f, &c),
                None => {
                    println!("cluster/{name} updated");
                    Ok(())
                }
            }
        }
        ClusterCmd::Delete { name } => delete_each(&client, &coll, "cluster", &[name]).await,
        ClusterCmd::JoinToken(JoinTokenCmd::Create {
            cluster,
            name,
            expires_in,
            max_uses,
            output,
        }) => {
            let mut body = json!({ "name": name });
            if let Some(e) = expires_in {
                body["expires_in_seconds"] = json!(e);
            }
            if let Some(m) = max_uses {
                body["max_uses"] = json!(m);
            }
            let t = client
                .post(&format!("{coll}/{}/join-tokens", seg(&cluster)), body)
                .await?
                .body;
            print_secret(
                output,
                &t,
                &format!(
                    "Join token {name:?} for cluster {cluster} (expires {}). It is shown only now:",
                    output::cell(&t["expires_at"])
                ),
                "node-agent run --join-token <token> …",
            )
        }
    }
}

/// A new secret: alone on stdout (so it can be captured), the explanation on stderr.
fn print_secret(output: Option<Format>, created: &Value, what: &str, usage: &str) -> Result<()> {
    match output {
        Some(Format::Table) | None => {
            eprintln!("{what}");
            println!("{}", output::cell(&created["token"]));
            eprintln!("Use it with: {usage}");
            Ok(())
        }
        Some(f) => output::print(f, created, &[], Vec::new),
    }
}

fn token_row(t: &Value) -> Vec<String> {
    let state = if !t["revoked_at"].is_null() {
        "revoked"
    } else {
        "active"
    };
    vec![
        output::cell(&t["name"]),
        output::cell(&t["role"]),
        state.to_string(),
        output::cell(&t["expires_at"]),
        output::cell(&t["last_used_at"]),
        output::cell(&t["id"]),
    ]
}

pub async fn token(target: &Target, cmd: TokenCmd) -> Result<()> {
    let client = Client::new(target).await?;
    let coll = client.tpath("/api-tokens")?;
    match cmd {
        TokenCmd::List { output } => {
            let tokens = Columns {
                headers: &["name", "role", "state", "expires", "last used", "id"],
                row: token_row,
            };
            tokens.list(&client, &coll, output).await
        }
        TokenCmd::Create {
            name,
            role,
            expires_in,
            output,
        } => {
            let mut body = json!({"name": name, "role": role});
            if let Some(e) = expires_in {
                body["expires_in_seconds"] = json!(e);
            }
            let t = client.post(&coll, body).await?.body;
            print_secret(
                output,
                &t,
                &format!("API token {name:?} ({role}). It is shown only now:"),
                "weft login --token <token>, or WEFT_TOKEN=<token>",
            )
        }
        TokenCmd::Revoke { name } => {
            client.delete(&format!("{coll}/{}", seg(&name))).await?;
            println!("token/{name} revoked");
            Ok(())
        }
    }
}
