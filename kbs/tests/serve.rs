//! `server::run` serves the gRPC listeners only: a configuration with a
//! CoCo or metrics front end is refused there, never left half-served.
//! And `kbs man`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kbs::config::Config;

#[tokio::test]
async fn run_refuses_front_ends_it_would_not_serve() {
    for (coco, metrics) in [(true, false), (false, true)] {
        let dir = tempfile::tempdir().unwrap();
        let options = kbs::dev::DevOptions {
            guest_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            coco_listen: coco.then(|| "127.0.0.1:0".into()),
            metrics_listen: metrics.then(|| "127.0.0.1:0".into()),
            ..Default::default()
        };
        let files = kbs::dev::init(dir.path(), &options).unwrap();
        let config = Config::load(&files.config, |_| None).unwrap();
        let app = kbs::server::build(&config, kbs::release::system_clock(), false).await.unwrap();
        let guest = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ran = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            kbs::server::run(app, guest, admin, std::future::pending()),
        )
        .await
        .expect("refused at once, not served");
        let err = ran.unwrap_err().to_string();
        assert!(err.contains("[coco] or [metrics]"), "{err}");
    }
}

/// `kbs man --dir DIR` writes a page per subcommand.
#[test]
fn manual_pages_cover_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kbs"))
        .args(["man", "--dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["kbs.1", "kbs-serve.1", "kbs-health.1", "kbs-dev-init.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.starts_with(".ie") && text.contains(".TH"), "{page}");
    }
    let serve = std::fs::read_to_string(dir.path().join("kbs-serve.1")).unwrap();
    assert!(serve.contains("\\-\\-config") && serve.contains("KBS_CONFIG"), "{serve}");
}
