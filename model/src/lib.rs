//! Weft's domain model. Pure logic with no I/O: every other Weft crate depends on it.

pub mod maglev;
pub mod names;
