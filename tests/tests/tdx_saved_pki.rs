//! A TDX test PKI saved to a file by one process signs, in another, quotes
//! that a broker pinning the saved root and collateral accepts: how
//! `kbs-bench --write-tdx-pki` / `--tdx-pki` drive a separately started
//! development broker. Its own test binary, since a process installs a
//! saved PKI only before anything else has asked for its test PKI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::simulated::{SimulatedTdx, TdxTestPki};
use kbs_proto::v1::PutSecretRequest;

#[path = "support/app.rs"]
mod app;

use app::TestApp;

const MRTD: [u8; 48] = [0x3c; 48];
const SECRET: &str = "models/bench/key";

#[tokio::test]
async fn a_saved_tdx_pki_signs_quotes_a_broker_pinning_it_accepts() {
    let files = tempfile::tempdir().unwrap();
    let path = files.path().join("pki.json");
    // The writing process: a new PKI, saved; the broker is given the root
    // and collateral of this original.
    let original = TdxTestPki::generate().unwrap();
    original.save(&path).unwrap();
    let (root, _) = original.write_broker_files(files.path()).unwrap();

    // The signing process: the saved PKI becomes its own, once.
    let installed = TdxTestPki::install_saved(&path).unwrap();
    assert_eq!(installed.root_der(), original.root_der());
    assert!(std::ptr::eq(installed, TdxTestPki::get().unwrap()));
    assert!(TdxTestPki::install_saved(&path).is_err(), "a second PKI must not replace the first");

    let app = TestApp::start().await;
    // The broker pins exactly the original's files.
    assert_eq!(std::fs::read(app.dir.path().join("tdx-test-root.pem")).unwrap(), std::fs::read(&root).unwrap());
    let value = b"a key for the bench".to_vec();
    let req = app.authed(PutSecretRequest {
        name: SECRET.into(),
        value: value.clone(),
        allowed_measurements: vec![hex::encode(MRTD)],
        ..Default::default()
    });
    app.admin().await.put_secret(req).await.unwrap();

    let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
    let mut client = KbsClient::connect(&config).await.unwrap();
    for sim in [SimulatedTdx::new(), SimulatedTdx::new().v5(true)] {
        let got = client.fetch(Arc::new(sim.mr_td(MRTD)), &[SECRET.to_owned()]).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value.to_vec(), value);
    }
    assert!(app.audit_log().contains("\"tee\":\"tdx\""));
}
