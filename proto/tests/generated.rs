//! The checked-in generated code must match the `.proto` contract.

use std::path::Path;

fn generate(out: &Path) {
    let (file, include) = weft_proto::proto_files();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::LeanCodec")
        .out_dir(out)
        .compile_protos(&[file], &[include])
        .expect(
            "protoc compiles the contract (install protobuf-compiler; `cargo xtask test` does)",
        );
}

#[test]
fn generated_code_is_current() {
    let checked_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/gen");
    if std::env::var_os("WEFT_REGENERATE_PROTO").is_some() {
        generate(&checked_in);
        return;
    }
    let dir = std::env::temp_dir().join(format!("weft-proto-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    generate(&dir);
    let fresh = std::fs::read_to_string(dir.join("weft.agent.v1.rs")).expect("generated");
    let _ = std::fs::remove_dir_all(&dir);
    let current = std::fs::read_to_string(checked_in.join("weft.agent.v1.rs")).unwrap_or_default();
    assert!(
        fresh == current,
        "proto/src/gen is stale: run `cargo xtask proto` and commit it"
    );
}
