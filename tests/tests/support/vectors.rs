//! The shared hardware test vectors (`../shared/vectors`, or
//! `KBS_TEST_VECTORS`), for the test binaries of `kbs` and `kbs-e2e`
//! (`#[path]`-included; both crates sit two levels below the shared folder).
#![allow(dead_code, clippy::panic)]

use std::path::PathBuf;

/// The vectors' directory.
pub fn vectors_dir() -> PathBuf {
    std::env::var_os("KBS_TEST_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"))
}

/// The bytes of the vector at `rel`; panics, saying how to point at the
/// vectors, when it is missing.
pub fn vector(rel: &str) -> Vec<u8> {
    let path = vectors_dir().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("test vector {} is missing ({e}); set KBS_TEST_VECTORS to the shared vectors directory", path.display())
    })
}
