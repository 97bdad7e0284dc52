//! Whole-system tests live in `tests/`: Postgres (from `WEFT_TEST_DATABASE_URL`, started by
//! `cargo xtask test`), control-api's REST app and agent service in-process, and node agents
//! (library calls) programming real datapaths in network namespaces the tests create.
