//! `cargo xtask bench compile [--quick]`: builds the release benchmark
//! (`model/examples/compile_bench.rs`) and runs it: one node's desired-state compile for
//! tenants of growing size, each as a ratio to the smallest measured in the same run, and a
//! one-endpoint diff against a full compile. Pure CPU, no root, no database. Writes
//! `<cargo target dir>/bench/compile.json`.

use anyhow::Result;

use crate::bench_example;

pub fn run(args: &[String]) -> Result<()> {
    let quick = bench_example::quick(args)?;
    bench_example::build("weft-model", "compile_bench")?;
    bench_example::run::<&str>("compile_bench", "compile", &[], quick)
}
