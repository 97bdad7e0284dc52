//! `weft observe`: recent flows, or follow them live, hubble-style.

use anyhow::Result;
use clap::Args;

use crate::client::{Client, Target};
use crate::flows::{self, Flow, FlowFilters, FlowFormat};
use crate::output;

/// Show flows: what was forwarded or dropped, where and why.
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    weft observe --verdict DROPPED --last 20\n  \
    weft observe --from-label app=web --to-port 443 --follow\n  \
    weft observe --not-verdict FORWARDED --since 10m -o jsonl\n  \
    weft observe --to-ip 10.0.0.0/8 --protocol TCP --tcp-flags SYN -o table")]
pub struct ObserveArgs {
    #[command(flatten)]
    filters: FlowFilters,
    /// Show the newest N matching flows (default 20; with --follow, none unless given).
    #[arg(short = 'n', long)]
    last: Option<usize>,
    /// Keep streaming new flows.
    #[arg(short, long)]
    follow: bool,
    /// Only flows since this time: RFC 3339, or a duration ago (`10m`, `2h`, `1d`).
    #[arg(long)]
    since: Option<String>,
    /// Only flows until this time: RFC 3339, or a duration ago.
    #[arg(long)]
    until: Option<String>,
    /// Output format: compact (like `hubble observe --compact`), table, json, or
    /// jsonl (one flow per line).
    #[arg(short, long, value_enum, default_value = "compact")]
    output: FlowFormat,
}

struct Printer {
    format: FlowFormat,
}

impl Printer {
    /// One flow as a line: compact or JSON Lines.
    fn flow(&mut self, f: Flow) -> Result<()> {
        match self.format {
            FlowFormat::Jsonl => println!("{}", serde_json::to_string(&f)?),
            _ => println!("{}", flows::compact(&f)),
        }
        Ok(())
    }
}

pub async fn run(target: &Target, a: ObserveArgs) -> Result<()> {
    let client = Client::new(target).await?;
    let now = chrono::Utc::now();
    let since = a
        .since
        .as_deref()
        .map(|s| flows::parse_time(s, now))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| flows::parse_time(s, now))
        .transpose()?;
    // Without --follow, the newest 20 unless told; with it, only new flows unless told.
    let last = match (a.last, a.follow) {
        (Some(n), _) => Some(n),
        (None, false) => Some(20),
        (None, true) => None,
    };
    let q = flows::query(&a.filters, since.as_deref(), until.as_deref(), last);
    let mut printer = Printer { format: a.output };
    if !a.follow {
        let recent = flows::recent(&client, &q).await?;
        match a.output {
            FlowFormat::Json => println!("{}", serde_json::to_string_pretty(&recent)?),
            FlowFormat::Table => {
                let rows: Vec<_> = recent.iter().map(flows::table_row).collect();
                print!("{}", output::table(&flows::TABLE_HEADERS, &rows));
            }
            _ => {
                for f in recent {
                    printer.flow(f)?;
                }
            }
        }
        return Ok(());
    }
    // The stream sends the newest `last` stored flows first, then follows.
    flows::follow(&client, &q, |f| match a.output {
        FlowFormat::Json => {
            println!("{}", serde_json::to_string_pretty(&f)?);
            Ok(())
        }
        // A live table cannot align columns ahead of time: one row per flow.
        FlowFormat::Table => {
            println!("{}", flows::table_row(&f).join("   "));
            Ok(())
        }
        _ => printer.flow(f),
    })
    .await?;
    Ok(())
}
