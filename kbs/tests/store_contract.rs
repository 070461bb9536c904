//! One contract, every store: the embedded store and the Vault/OpenBao
//! store (against a real `bao server -dev`) must behave the same wherever
//! the `SecretStore` trait says what they do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::sync::Arc;

use kbs::store::local::{Kek, LocalStore};
use kbs::store::vault::{VaultAuth, VaultConfig, VaultStore};
use kbs::store::{NewSecret, SecretStore, SecretValue, StoreError};

fn new(name: &str, value: &[u8], expected: Option<u64>) -> NewSecret {
    NewSecret {
        name: name.into(),
        value: SecretValue::new(value.to_vec()),
        labels: BTreeMap::from([("team".to_owned(), "ml".to_owned())]),
        allowed_measurements: vec!["ab".repeat(48)],
        expected_version: expected,
    }
}

/// The behaviour every store must have.
async fn contract(store: Arc<dyn SecretStore>) {
    // Binary-safe round trip, metadata without the value.
    let all: Vec<u8> = (0..=255u8).collect();
    let meta = store.put(new("c/a/key", &all, None)).await.unwrap();
    assert_eq!((meta.version, meta.size), (1, 256));
    let rec = store.get("c/a/key").await.unwrap();
    assert_eq!(rec.value.expose(), all.as_slice());
    assert_eq!(rec.meta.labels.get("team").map(String::as_str), Some("ml"));
    assert_eq!(rec.meta.allowed_measurements, vec!["ab".repeat(48)]);
    let empty = store.put(new("c/a/empty", b"", None)).await.unwrap();
    assert_eq!(empty.size, 0);
    assert!(store.get("c/a/empty").await.unwrap().value.is_empty());

    // Versions increase; check-and-set refuses a stale writer and keeps the value.
    assert_eq!(store.put(new("c/a/key", b"v2", Some(1))).await.unwrap().version, 2);
    assert!(matches!(
        store.put(new("c/a/key", b"stale", Some(1))).await,
        Err(StoreError::Conflict { expected: 1, found: 2 })
    ));
    assert!(matches!(store.put(new("c/a/key", b"x", Some(0))).await, Err(StoreError::Conflict { .. })));
    assert_eq!(store.get("c/a/key").await.unwrap().value.expose(), b"v2");
    assert_eq!(store.metadata("c/a/key").await.unwrap().versions, vec![1, 2]);

    // Listing: prefix, order, paging.
    for n in ["c/b/1", "c/b/2", "c/b/3", "c/bz"] {
        store.put(new(n, b"x", None)).await.unwrap();
    }
    let page = store.list("c/b/", None, 2).await.unwrap();
    let names: Vec<_> = page.items.iter().map(|m| m.name.clone()).collect();
    assert_eq!(names, ["c/b/1", "c/b/2"]);
    let rest = store.list("c/b/", page.next.as_deref(), 2).await.unwrap();
    assert_eq!(rest.items.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["c/b/3"]);

    // Destroying an older version leaves the current one served, and the
    // destroyed one is no longer listed.
    store.destroy_versions("c/a/key", &[1]).await.unwrap();
    assert_eq!(store.get("c/a/key").await.unwrap().value.expose(), b"v2");
    assert_eq!(store.metadata("c/a/key").await.unwrap().versions, vec![2]);

    // Destroying the newest version: the secret is not served (never an
    // older version instead) until a new version is written, which gets a
    // new number.
    store.put(new("c/d/key", b"d1", None)).await.unwrap();
    store.put(new("c/d/key", b"d2", None)).await.unwrap();
    store.destroy_versions("c/d/key", &[2]).await.unwrap();
    assert!(matches!(store.get("c/d/key").await, Err(StoreError::NotFound)));
    assert!(matches!(store.metadata("c/d/key").await, Err(StoreError::NotFound)));
    assert!(store.list("c/d/", None, 10).await.unwrap().items.is_empty());
    assert_eq!(store.put(new("c/d/key", b"d3", None)).await.unwrap().version, 3);
    assert_eq!(store.get("c/d/key").await.unwrap().value.expose(), b"d3");

    // Delete: gone, and NotFound everywhere afterwards.
    store.delete("c/b/2").await.unwrap();
    assert!(matches!(store.get("c/b/2").await, Err(StoreError::NotFound)));
    assert!(matches!(store.metadata("c/b/2").await, Err(StoreError::NotFound)));
    assert!(matches!(store.get("c/never").await, Err(StoreError::NotFound)));

    // Bad names never reach the backend.
    assert!(matches!(store.put(new("../x", b"x", None)).await, Err(StoreError::InvalidName(_))));
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path(), &Kek::new([5; 32])).unwrap();
    contract(Arc::new(store)).await;
}

#[path = "../../tests/tests/support/bao.rs"]
mod bao;

#[tokio::test]
async fn the_openbao_store_keeps_the_contract() {
    let Some(bao) = bao::Bao::start(false).await else { return };
    let mut config = VaultConfig::new(bao.addr.clone(), VaultAuth::Token(bao.root.as_str().into()));
    config.prefix = "contract".into();
    contract(Arc::new(VaultStore::connect(config).await.unwrap())).await;
}
