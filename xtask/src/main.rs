//! `cargo xtask <command>`: Weft's developer and CI entry points.

mod bench_compile;
mod bench_datapath;
mod bench_example;
mod console;
mod demo;
mod demo_check;
mod ebpf;
mod fuzz;
mod http;
mod imports;
mod libfuzz;
mod nodes;
mod oidc;
mod pg;
mod schemathesis;
mod sh;
mod terraform;
mod test;

use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  demo [--detach]   run the whole system (Postgres, control-api, sample tenants);
                    --detach returns once it is ready and writes .weft/demo.env
  down              stop everything `demo` started
  test [--no-lint] [--demo] [--schemathesis] [nextest args...]
                    fmt + clippy + every test, against a private Postgres; then
                    (without nextest args, or with --demo) the demo check: `demo
                    --detach`, `weft status`, `weft connectivity test`, `down`
  schemathesis      the OpenAPI fuzzer against a control-api on a private Postgres,
                    about 3 minutes, seed 21 (a full `test` runs it too, or
                    `test --schemathesis`)
  console-test      the web console's checks (npm ci, tsc, vitest, build + size
                    budget), then its browser tests against `demo --detach`
  imports [crate...]
                    module graph check: no cycle between top-level modules, no
                    hand-written file over 800 lines (crates listed in
                    imports::ENFORCED fail, the others are reported)
  openapi           regenerate openapi/openapi.json from the code
  proto             regenerate proto/src/gen from proto/*.proto (needs protoc)
  ebpf              install the eBPF toolchain if missing, build the datapath object
  fuzz --list       the cargo-fuzz targets, one a line (target, what it checks)
  fuzz <target> [--seconds N]
                    one cargo-fuzz target (nightly, libFuzzer + ASan) from its seeds in
                    fuzz/seeds/<target> for N seconds (default 60); `cargo xtask test` runs
                    each for 30 s
  fuzz policy [--minutes N] [--seed S]
                    kernel-vs-model policy differential test for N minutes (default
                    10): random tenants and packets; prints cases run and mismatches
  fuzz api [--minutes N] [--seed S]
                    the OpenAPI fuzzer (as `schemathesis`) for N minutes (default 10),
                    a new seed each run unless given
  bench datapath [--quick]
                    datapath benchmark: policy/LB ns per packet, connect rates vs
                    iptables and no LB; writes target/bench/datapath.json
  bench l7 [--quick]
                    HTTP through the L7 proxy (1/10/100 rules) vs an L3/L4 allow:
                    requests/s, p50/p99, new connections/s; writes target/bench/l7.json
  bench flows [--quick]
                    flow ingest (gRPC -> PostgreSQL) and query latency over 10M
                    stored flows (300k with --quick); writes <target dir>/bench/flows.json
  bench propagation [--quick]
                    a policy change reaching 100 .. 10,000 simulated agents
                    (`node-agent sim`; up to 1,000 with --quick) over 2 control-api
                    processes: p50/p99, rows and CPU per change, RSS per agent, REST
                    p99 beside the fan-out, re-homing after a replica's SIGKILL, as
                    ratios to one agent; writes <target dir>/bench/propagation.json
  bench api [--quick]
                    REST load on one control-api process holding 1,000 policies and
                    10,000 flows: mixed reads and If-Match writes at 8 .. 256 clients
                    (8 and 32 with --quick) until p99 > 250 ms or errors (the knee),
                    beside GET /healthz at the same concurrency, with control-api and
                    PostgreSQL CPU; writes <target dir>/bench/api.json
  bench compile [--quick]
                    desired-state compiler: one node's compile for tenants of growing
                    size, as ratios to the smallest; writes <target dir>/bench/compile.json";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some(cmd) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "demo" => demo::demo(rest.iter().any(|a| a == "--detach")),
        "down" => demo::down(),
        "test" => test::test(rest),
        "imports" => imports::main(rest),
        "schemathesis" => schemathesis::main(rest),
        "console-test" => console::console_test(),
        "openapi" => openapi(),
        "proto" => proto(),
        "ebpf" => {
            println!("{}", ebpf::prepare(&sh::root())?.display());
            Ok(())
        }
        "fuzz" => fuzz::run(rest),
        "bench" if rest.first().map(String::as_str) == Some("datapath") => {
            bench_datapath::run(&sh::root(), &rest[1..])
        }
        "bench" if rest.first().map(String::as_str) == Some("l7") => {
            bench_datapath::run_l7(&sh::root(), &rest[1..])
        }
        "bench" if rest.first().map(String::as_str) == Some("flows") => {
            bench_example::with_postgres("flows_bench", "flows", &rest[1..])
        }
        "bench" if rest.first().map(String::as_str) == Some("propagation") => {
            bench_example::propagation(&rest[1..])
        }
        "bench" if rest.first().map(String::as_str) == Some("api") => {
            bench_example::api(&rest[1..])
        }
        "bench" if rest.first().map(String::as_str) == Some("compile") => {
            bench_compile::run(&rest[1..])
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{USAGE}"),
    }
}

fn openapi() -> Result<()> {
    let out = sh::output(Command::new(env!("CARGO")).args([
        "run",
        "-q",
        "-p",
        "control-api",
        "--",
        "openapi",
    ]))?;
    let path = sh::root().join("openapi/openapi.json");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn proto() -> Result<()> {
    test::ensure_protoc()?;
    sh::run(
        Command::new(env!("CARGO"))
            .current_dir(sh::root())
            .args(["test", "-q", "-p", "weft-proto", "--test", "generated"])
            .env("WEFT_REGENERATE_PROTO", "1"),
    )?;
    println!("regenerated proto/src/gen");
    Ok(())
}
