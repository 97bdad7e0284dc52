//! Embeds the eBPF object named by `WEFT_BPF_OBJ` (set by `cargo xtask`, which builds it with
//! nightly). Without it an empty object is embedded so `cargo check`/clippy/tests build on
//! stable alone; the datapath then reports `DatapathError::NoObject` at load time.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=WEFT_BPF_OBJ");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("weft-datapath.bpf.o");
    match env::var_os("WEFT_BPF_OBJ").filter(|p| !p.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            let bytes =
                fs::read(&path).unwrap_or_else(|e| panic!("WEFT_BPF_OBJ={}: {e}", path.display()));
            fs::write(&out, bytes).expect("writing the embedded eBPF object");
        }
        None => fs::write(&out, b"").expect("writing the empty eBPF object stub"),
    }
}
