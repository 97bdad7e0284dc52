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
        _ => eprintln!("usage: cargo xtask ebpf"),
    }
    Ok(())
}
