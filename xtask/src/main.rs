mod bench_datapath;
mod ebpf;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // `cargo xtask ebpf`: prerequisites + eBPF build; prints the object path.
        Some("ebpf") => println!("{}", ebpf::prepare(&root)?.display()),
        // `cargo xtask bench datapath [--quick]`
        Some("bench") if args.get(1).map(String::as_str) == Some("datapath") => {
            bench_datapath::run(&root, &args[2..])?
        }
        _ => eprintln!("usage: cargo xtask ebpf | bench datapath [--quick]"),
    }
    Ok(())
}
