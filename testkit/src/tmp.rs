//! Temp dirs, removed on drop (the `tempfile` crate), named `weft-{tag}-…` so a leftover
//! says which test made it.

pub use tempfile::TempDir;

/// A new temp dir for `tag`.
pub fn dir(tag: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("weft-{tag}-"))
        .tempdir()
        .expect("temp dir")
}
