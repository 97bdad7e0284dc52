//! Whether this machine can run the datapath.

/// Returns false (after printing why) when the datapath cannot run here. With
/// `WEFT_REQUIRE_BPF=1` (set by `cargo xtask test`) a missing object, privilege or BTF is a
/// failure instead.
pub fn bpf_available(test: &str) -> bool {
    let required = std::env::var("WEFT_REQUIRE_BPF").is_ok_and(|v| v == "1");
    let problem = if node_agent::datapath::EMBEDDED_OBJECT.is_empty() {
        Some("node-agent was built without WEFT_BPF_OBJ (run `cargo xtask test`)")
    } else if unsafe { libc::geteuid() } != 0 {
        Some("not running as root")
    } else if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        Some("kernel without BTF")
    } else {
        None
    };
    match problem {
        None => true,
        Some(p) if required => panic!("{test}: WEFT_REQUIRE_BPF=1 but {p}"),
        Some(p) => {
            eprintln!("SKIPPED {test}: {p}");
            false
        }
    }
}
