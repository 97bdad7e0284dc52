//! `sqlx::migrate!` embeds `db/migrations/` at build time; rebuild when that folder changes.

fn main() {
    println!("cargo:rerun-if-changed=../db/migrations");
}
