//! `cargo xtask bench flows [--quick]`: starts a private PostgreSQL (as `xtask test` does),
//! builds the release benchmark (`control-api/examples/flows_bench/`) and runs it: ingest
//! over real gRPC from several agent connections, then query latency over a table filled to
//! 10 million flows (300,000 with `--quick`). Prints ratios against baselines measured in
//! the same run and writes `<cargo target dir>/bench/flows.json`.

use anyhow::{Context as _, Result};

use crate::{bench_example, test::TestPostgres};

pub fn run(args: &[String]) -> Result<()> {
    let quick = bench_example::quick(args)?;
    bench_example::build("control-api", "flows_bench")?;
    let pg = TestPostgres::start()?;
    let url = pg
        .cluster
        .as_ref()
        .map(|c| c.url("postgres"))
        .context("no PostgreSQL cluster")?;
    let result = bench_example::run("flows_bench", "flows", &["--database-url", &url], quick);
    drop(pg);
    result
}
