//! `weft policy …`, and create-or-update by name for any collection (policies,
//! services): GET by name, then POST when missing, nothing when equal, PUT with
//! `If-Match` when different, reported per object like kubectl.

use std::io::Read;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{seg, Client, Target};
use crate::manifest::{self, Kind, Object};
use crate::output::{self, Format};
use crate::{Exit, EXIT_NOT_READY};

#[derive(Args)]
pub struct FileArg {
    /// File to read, or `-` for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: String,
}

impl FileArg {
    pub fn read(&self) -> Result<String> {
        if self.file == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            Ok(s)
        } else {
            std::fs::read_to_string(&self.file).with_context(|| format!("reading {}", self.file))
        }
    }
}

/// Network policies: native Weft policies or CiliumNetworkPolicy YAML.
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Create or update policies from a file (native YAML/JSON or CNP/CCNP, many `---`
    /// documents), by name.
    #[command(after_help = "Examples:\n  \
        weft policy apply -f web.yaml\n  \
        weft policy apply -f - < cnps.yaml\n  \
        weft policy apply -f cnps.yaml --dry-run\n\n\
        Every document is checked first; a bad one applies nothing. Each object prints\n\
        `policy/NAME created|configured|unchanged`. --dry-run checks locally and shows what\n\
        would change without writing (the API has no server-side dry run).\n\
        Fields Weft accepts but does not enforce (host policies, entities nothing carries)\n\
        print `Warning: <field>: …` on standard error; their traffic is\n\
        dropped, never allowed. --strict refuses them instead (exit 1, nothing applied).")]
    Apply {
        #[command(flatten)]
        file: FileArg,
        /// Show what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Refuse fields Weft accepts but does not enforce, instead of warning.
        #[arg(long)]
        strict: bool,
        /// Output format.
        #[arg(short, long, value_enum)]
        output: Option<Format>,
    },
    /// Show what `apply` would change, as a unified diff of the YAML (exit 3 when it
    /// differs).
    #[command(after_help = "Example:\n  weft policy diff -f web.yaml")]
    Diff {
        #[command(flatten)]
        file: FileArg,
    },
    /// List policies with their realization on nodes.
    #[command(
        after_help = "Examples:\n  weft policy list\n  weft policy list -l team=web -o json"
    )]
    List {
        /// Label selector, e.g. `team=web,env!=dev`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Show one policy.
    #[command(after_help = "Example:\n  weft policy get web-from-frontend -o yaml")]
    Get {
        name: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Delete policies by name, or those named in a file.
    #[command(
        after_help = "Examples:\n  weft policy delete web-from-frontend\n  weft policy delete -f web.yaml"
    )]
    Delete {
        names: Vec<String>,
        /// Delete the policies this file names.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "FILE",
            conflicts_with = "names"
        )]
        file: Option<String>,
    },
}

pub enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    fn as_str(&self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

/// The live object by name: (normalized, ETag), or `None`.
async fn live(
    client: &Client,
    kind: Kind,
    coll: &str,
    name: &str,
) -> Result<Option<(Value, Option<String>)>> {
    match client.get_opt(&format!("{coll}/{}", seg(name))).await? {
        None => Ok(None),
        Some(r) => Ok(Some((manifest::normalize_live(kind, &r.body)?, r.etag))),
    }
}

/// The `NotEnforced` conditions of a policy object, as `field: reason` (the API answers the
/// same as `Warning` headers; this is for what is not sent: dry runs and unchanged objects).
pub fn not_enforced(kind: Kind, o: &Object) -> Vec<String> {
    if kind != Kind::Policy {
        return Vec::new();
    }
    let specs: Vec<weft_model::policy::PolicySpec> = match (o.body.get("specs"), o.body.get("spec"))
    {
        (Some(v), _) if !v.is_null() => serde_json::from_value(v.clone()).unwrap_or_default(),
        (_, Some(v)) if !v.is_null() => serde_json::from_value(v.clone())
            .map(|s| vec![s])
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    weft_model::policy::conditions(&specs)
        .into_iter()
        .map(|c| format!("{}: not enforced: {}", c.field, c.reason))
        .collect()
}

/// Applies objects to the collection at `coll`, printing one line each. Warnings go to
/// standard error as `Warning: …`; with `strict` any makes the whole apply fail first.
pub async fn apply(
    client: &Client,
    kind: Kind,
    coll: &str,
    objects: &[Object],
    dry_run: bool,
    strict: bool,
    output: Option<Format>,
) -> Result<()> {
    if strict {
        let refused: Vec<String> = objects
            .iter()
            .flat_map(|o| {
                not_enforced(kind, o)
                    .into_iter()
                    .map(move |w| format!("{}/{}: {w}", kind.as_str(), o.name))
            })
            .collect();
        if !refused.is_empty() {
            for r in &refused {
                eprintln!("error: {r}");
            }
            anyhow::bail!(
                "--strict: {} field(s) Weft accepts but does not enforce; nothing applied",
                refused.len()
            );
        }
    }
    let query = if strict { "?strict=true" } else { "" };
    let mut report = Vec::new();
    for o in objects {
        let mut warnings = None;
        let outcome = match live(client, kind, coll, &o.name).await? {
            None => {
                if !dry_run {
                    let r = client
                        .post(&format!("{coll}{query}"), o.body.clone())
                        .await?;
                    warnings = Some(r.warnings);
                }
                Outcome::Created
            }
            Some((current, _)) if current == o.body => Outcome::Unchanged,
            Some((_, etag)) => {
                if !dry_run {
                    let r = client
                        .put(
                            &format!("{coll}/{}{query}", seg(&o.name)),
                            o.body.clone(),
                            etag.as_deref(),
                        )
                        .await?;
                    warnings = Some(r.warnings);
                }
                Outcome::Configured
            }
        };
        for w in warnings.unwrap_or_else(|| not_enforced(kind, o)) {
            eprintln!("Warning: {}/{}: {w}", kind.as_str(), o.name);
        }
        let suffix = if dry_run { " (dry run)" } else { "" };
        if output.is_none() {
            println!("{}/{} {}{suffix}", kind.as_str(), o.name, outcome.as_str());
        }
        report.push(json!({"kind": kind.as_str(), "name": o.name, "result": outcome.as_str(), "dry_run": dry_run}));
    }
    if let Some(fmt) = output {
        output::print(
            fmt,
            &Value::Array(report.clone()),
            &["kind", "name", "result"],
            || {
                report
                    .iter()
                    .map(|r| {
                        vec![
                            output::cell(&r["kind"]),
                            output::cell(&r["name"]),
                            output::cell(&r["result"]),
                        ]
                    })
                    .collect()
            },
        )?;
    }
    Ok(())
}

/// Prints the diff of each object against the live one; `Exit(3)` when any differs.
pub async fn diff(client: &Client, kind: Kind, coll: &str, objects: &[Object]) -> Result<()> {
    let mut differs = false;
    for o in objects {
        let wanted = manifest::to_yaml(&o.body)?;
        let (from, current) = match live(client, kind, coll, &o.name).await? {
            Some((cur, _)) => (
                format!("live/{}/{}", kind.as_str(), o.name),
                manifest::to_yaml(&cur)?,
            ),
            None => ("/dev/null".to_string(), String::new()),
        };
        let to = format!("file/{}/{} ({})", kind.as_str(), o.name, o.origin);
        if let Some(d) = crate::diff::unified(&from, &to, &current, &wanted) {
            print!("{d}");
            differs = true;
        }
    }
    if differs {
        return Err(Exit(EXIT_NOT_READY).into());
    }
    Ok(())
}

pub fn realized(v: &Value) -> String {
    format!(
        "{}/{}",
        v["status"]["realized_nodes"].as_i64().unwrap_or(0),
        v["status"]["total_nodes"].as_i64().unwrap_or(0)
    )
}

fn policy_row(p: &Value) -> Vec<String> {
    let clusters = match p["clusters"].as_array() {
        Some(cs) => cs.iter().map(output::cell).collect::<Vec<_>>().join(","),
        None => "all".into(),
    };
    vec![
        output::cell(&p["name"]),
        p["specs"].as_array().map_or(0, Vec::len).to_string(),
        clusters,
        realized(p),
        output::labels(&p["labels"]),
        output::age(&p["created_at"]),
    ]
}

const POLICY_HEADERS: [&str; 6] = ["name", "rules", "clusters", "realized", "labels", "age"];

pub async fn policy(target: &Target, cmd: PolicyCmd) -> Result<()> {
    let client = Client::new(target).await?;
    let coll = client.tpath("/policies")?;
    match cmd {
        PolicyCmd::Apply {
            file,
            dry_run,
            strict,
            output,
        } => {
            let objects = manifest::policies(&file.read()?)?;
            apply(
                &client,
                Kind::Policy,
                &coll,
                &objects,
                dry_run,
                strict,
                output,
            )
            .await
        }
        PolicyCmd::Diff { file } => {
            let objects = manifest::policies(&file.read()?)?;
            diff(&client, Kind::Policy, &coll, &objects).await
        }
        PolicyCmd::List { selector, output } => {
            let q: Vec<(&str, String)> = selector.into_iter().map(|s| ("labels", s)).collect();
            let items = client.list_all(&coll, &q).await?;
            output::print(
                output,
                &Value::Array(items.clone()),
                &POLICY_HEADERS,
                || items.iter().map(policy_row).collect(),
            )
        }
        PolicyCmd::Get { name, output } => {
            let p = client.get(&format!("{coll}/{}", seg(&name))).await?.body;
            output::print(output, &p, &POLICY_HEADERS, || vec![policy_row(&p)])
        }
        PolicyCmd::Delete { names, file } => {
            let names = match file {
                Some(f) => manifest::policies(&FileArg { file: f }.read()?)?
                    .into_iter()
                    .map(|o| o.name)
                    .collect(),
                None if names.is_empty() => {
                    anyhow::bail!("name the policies to delete, or give -f FILE")
                }
                None => names,
            };
            for n in names {
                client.delete(&format!("{coll}/{}", seg(&n))).await?;
                println!("policy/{n} deleted");
            }
            Ok(())
        }
    }
}
