//! Weft's domain model. Pure logic with no I/O: every other Weft crate depends on it.

pub mod cnp;
pub mod error;
pub mod labels;
pub mod names;
pub mod policy;
pub mod selector;
pub mod service;
