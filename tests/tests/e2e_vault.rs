//! End-to-end on the production store: a broker backed by a real OpenBao
//! server. An operator has the broker generate a key, a simulated guest
//! fetches it, and the bytes equal what OpenBao holds; an encrypted model
//! decrypts with its key from OpenBao. A store that goes
//! down means UNAVAILABLE, never a wrong answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::simulated::{Generation, SimulatedSnp, test_ark_pem};
use base64::Engine;
use kbs::config::Config;
use kbs_proto::v1::GenerateSecretRequest;
use kbs_proto::v1::admin_client::AdminClient;
use tonic::Request;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

const MEASUREMENT: [u8; 48] = [0x3c; 48];

#[path = "support/bao.rs"]
mod bao;

use bao::Bao;

#[tokio::test]
async fn generated_key_reaches_the_guest_through_openbao() {
    let Some(bao) = Bao::start(false).await else { return };

    // A dev broker whose store is OpenBao instead of the embedded store.
    let dir = tempfile::tempdir().unwrap();
    let ark = dir.path().join("test-ark.pem");
    std::fs::write(&ark, test_ark_pem()).unwrap();
    let files = kbs::dev::init(
        dir.path(),
        &kbs::dev::DevOptions {
            guest_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            snp_test_roots: vec![ark],
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(dir.path().join("bao.token"), &bao.root).unwrap();
    let text = std::fs::read_to_string(&files.config).unwrap().replace(
        "[store]\nkind = \"local\"\ndir = \"secrets\"\nkek_file = \"kek\"\n",
        &format!(
            "[store]\nkind = \"vault\"\naddress = \"{}\"\nprefix = \"kbs-e2e\"\ncache_ttl_ms = 0\n[store.auth]\nmethod = \"token\"\ntoken_file = \"bao.token\"\n",
            bao.addr
        ),
    );
    assert!(text.contains("kind = \"vault\""));
    std::fs::write(&files.config, text).unwrap();
    let config = Config::load(&files.config, |_| None).unwrap();
    let app = kbs::server::build(&config, kbs::release::system_clock(), true).await.unwrap();
    let guest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let guest_url = format!("https://localhost:{}", guest.local_addr().unwrap().port());
    let admin_url = format!("https://localhost:{}", admin.local_addr().unwrap().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kbs::server::run(app, guest, admin, async move {
        let _ = stopped.await;
    }));
    let ca = std::fs::read(&files.ca).unwrap();
    let token = std::fs::read_to_string(&files.admin_token).unwrap();

    // One admin channel for the operator's calls.
    let admin_channel = Channel::from_shared(admin_url.clone())
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca)))
        .unwrap()
        .connect()
        .await
        .unwrap();

    // The operator has the broker generate the key: it exists only in the
    // broker and OpenBao.
    let mut req = Request::new(GenerateSecretRequest {
        name: "models/llama/key".into(),
        bytes: 32,
        allowed_measurements: vec![hex::encode(MEASUREMENT)],
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    let meta = AdminClient::new(admin_channel.clone()).generate_secret(req).await.unwrap().into_inner();
    assert_eq!((meta.version, meta.size), (1, 32));

    // What OpenBao stores.
    let stored = bao.get("secret/data/kbs-e2e/models/llama/key").await.expect("the key is in OpenBao");
    let stored =
        base64::engine::general_purpose::STANDARD.decode(stored["data"]["data"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(stored.len(), 32);

    // What the guest receives.
    let sim = SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT);
    let config = ClientConfig::new(guest_url.clone(), ca.clone());
    let mut client = KbsClient::connect(&config).await.unwrap();
    let got = client.fetch(Arc::new(sim.clone()), &["models/llama/key".to_owned()]).await.unwrap();
    assert_eq!(got[0].value.as_slice(), stored.as_slice());
    assert_eq!(got[0].version, 1);

    // An encrypted model whose key lives in OpenBao: the guest attests,
    // receives the key its header names and decrypts the file.
    let model_key = kbs_proto::model::ModelKey::generate("models/llama/weights-key", 1).unwrap();
    let mut req = Request::new(kbs_proto::v1::PutSecretRequest {
        name: "models/llama/weights-key".into(),
        value: model_key.expose_bytes().to_vec(),
        allowed_measurements: vec![hex::encode(MEASUREMENT)],
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(AdminClient::new(admin_channel.clone()).put_secret(req).await.unwrap().into_inner().version, 1);
    let work = tempfile::tempdir().unwrap();
    let weights: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let mut sealed = Vec::new();
    let options = kbs_proto::model::EncryptOptions { chunk_size: 64 * 1024, threads: 1 };
    let len = weights.len() as u64;
    kbs_proto::model::encrypt(&mut std::io::Cursor::new(&weights), len, &mut sealed, &model_key, &options).unwrap();
    std::fs::create_dir(work.path().join("enc")).unwrap();
    std::fs::write(work.path().join("enc/model.bin"), sealed).unwrap();
    let decrypt = attester_client::model::DecryptOptions { allow_persistent_disk: true, gpus: None, threads: None };
    let (input, out) = (work.path().join("enc"), work.path().join("out"));
    let guest_sim = Arc::new(sim.clone());
    attester_client::model::decrypt_models(&mut client, guest_sim, &input, &out, &decrypt).await.unwrap();
    assert_eq!(std::fs::read(out.join("model.bin")).unwrap(), weights);

    // 50 concurrent writers of one name: every write lands as a distinct
    // version or fails with a conflict; none is lost silently.
    let mut writers = Vec::new();
    for i in 0..50u8 {
        let channel = admin_channel.clone();
        let token = token.clone();
        writers.push(tokio::spawn(async move {
            let mut req = Request::new(kbs_proto::v1::PutSecretRequest {
                name: "models/race/key".into(),
                value: vec![i; 8],
                ..Default::default()
            });
            req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            AdminClient::new(channel).put_secret(req).await.map(|r| r.into_inner().version)
        }));
    }
    let mut landed = Vec::new();
    for w in writers {
        match w.await.unwrap() {
            Ok(version) => landed.push(version),
            Err(status) => assert_eq!(
                status.metadata().get("kbs-reason").and_then(|v| v.to_str().ok()),
                Some("version_conflict"),
                "{status:?}"
            ),
        }
    }
    assert!(!landed.is_empty());
    let distinct: std::collections::BTreeSet<u64> = landed.iter().copied().collect();
    assert_eq!(distinct.len(), landed.len(), "two writers got the same version: {landed:?}");
    let meta = bao.get("secret/metadata/kbs-e2e/models/race/key").await.unwrap();
    assert_eq!(meta["data"]["current_version"].as_u64(), distinct.iter().max().copied());

    // OpenBao goes away: the broker says UNAVAILABLE, never a wrong answer
    // (the read cache is off here, so the outage is seen at once).
    let port = bao.port();
    let root = bao.root.clone();
    drop(bao);
    let err = client.fetch(Arc::new(sim.clone()), &["models/llama/key".to_owned()]).await.unwrap_err();
    assert_eq!(err.reason(), Some("store_unavailable"), "{err:?}");

    // OpenBao comes back (a dev server: empty, same root token): the same
    // broker process recovers without a restart.
    let bao = Bao::start_at(port, &root, false).await.expect("OpenBao restarts on its port");
    let mut req = Request::new(kbs_proto::v1::PutSecretRequest {
        name: "models/llama/key".into(),
        value: b"after the outage".to_vec(),
        allowed_measurements: vec![hex::encode(MEASUREMENT)],
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    AdminClient::new(admin_channel).put_secret(req).await.unwrap();
    let got = client.fetch(Arc::new(sim), &["models/llama/key".to_owned()]).await.unwrap();
    assert_eq!(got[0].value.as_slice(), b"after the outage");
    drop(bao);
    let _ = stop.send(());
}
