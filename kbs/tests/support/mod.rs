//! What the integration tests of this crate that start a broker share: an
//! admin token entry for the config, and serving a config on loopback.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use kbs::config::Config;
use sha2::{Digest, Sha256};

/// A `[[admin.tokens]]` entry for `token` with `role`, to append to a
/// config.
pub fn token_entry(name: &str, token: &str, role: &str) -> String {
    format!(
        "\n[[admin.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
        hex::encode(Sha256::digest(token.as_bytes()))
    )
}

/// Loads `config` and serves it on loopback ports until the returned
/// sender is dropped. Returns the admin listener's URL.
pub async fn serve(config: &Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let config = Config::load(config, |_| None).unwrap();
    let app = kbs::server::build(&config, kbs::release::system_clock(), false).await.unwrap();
    let guest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://localhost:{}", admin.local_addr().unwrap().port());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kbs::server::run(app, guest, admin, async move {
        let _ = rx.await;
    }));
    (url, tx)
}
