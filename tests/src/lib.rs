//! End-to-end tests live in `tests/`. This library holds what the test
//! binaries and the load generator (`kbs-bench`) share.

pub mod coco;
