//! `server::run` serves the gRPC listeners only: a configuration with a
//! CoCo or metrics front end is refused there, never left half-served.
//! A GPU RIM directory is verified at start-up, file by file. And `kbs man`.
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

/// A dev-mode configuration whose `gpu.rim_dir` holds the simulated GPUs'
/// RIMs, the test RIM root pinned when `pin_test_root`.
fn rim_config(dir: &std::path::Path, pin_test_root: bool) -> (Config, std::path::PathBuf) {
    let rims = dir.join("gpu-rims");
    std::fs::create_dir_all(&rims).unwrap();
    for rim in attester_client::simulated::simulated_gpu_rims().unwrap() {
        std::fs::write(rims.join(format!("{}.xml", rim.id)), rim.xml).unwrap();
    }
    let root = dir.join("rim-root.pem");
    std::fs::write(&root, attester_client::simulated::gpu_test_rim_root_pem()).unwrap();
    let options = kbs::dev::DevOptions {
        guest_listen: "127.0.0.1:0".into(),
        admin_listen: "127.0.0.1:0".into(),
        insecure_simulated_tee: true,
        gpu_test_rim_roots: if pin_test_root { vec![root] } else { Vec::new() },
        gpu_rim_dir: Some(rims.clone()),
        ..Default::default()
    };
    let files = kbs::dev::init(dir, &options).unwrap();
    (Config::load(&files.config, |_| None).unwrap(), rims)
}

#[tokio::test]
async fn every_rim_is_verified_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let (config, rims) = rim_config(dir.path(), true);
    let clock = kbs::release::system_clock();
    let app = kbs::server::build(&config, clock.clone(), true).await.unwrap();
    assert_eq!(app.broker.gpu_rims().store().len(), 2);
    drop(app);

    // A tampered RIM refuses the start, naming the file.
    let vbios = rims.join(format!("{}.xml", attester_client::simulated::SIMULATED_VBIOS_RIM_ID));
    let text = std::fs::read_to_string(&vbios).unwrap();
    std::fs::write(&vbios, text.replacen("active=\"True\"", "active=\"False\"", 1)).unwrap();
    let err = kbs::server::build(&config, clock.clone(), true).await.expect_err("refused").to_string();
    assert!(err.contains("gpu.rim_dir") && err.contains(&vbios.display().to_string()), "{err}");
    assert!(err.contains("digest"), "{err}");

    // The test RIM root is pinned only in the insecure dev mode: without
    // it, the simulated GPUs' RIMs do not chain to NVIDIA's root.
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = rim_config(dir.path(), false);
    let err = kbs::server::build(&config, clock, true).await.expect_err("refused").to_string();
    assert!(err.contains("not a pinned RIM root"), "{err}");
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

/// `kbs serve`'s log is coloured by the rule kbsctl's usage errors follow
/// (see `kbsctl_verify`): on a terminal only, and never with a non-empty
/// `NO_COLOR` (no-color.org; an empty one does not count). A missing
/// configuration makes `kbs serve` log its error line and stop.
#[test]
fn log_colour_only_on_a_terminal_and_never_with_no_color() {
    let missing = tempfile::tempdir().unwrap().path().join("kbs.toml");
    let serve = format!("{} serve --config {}", env!("CARGO_BIN_EXE_kbs"), missing.display());
    let log = |terminal: bool, no_color: Option<&str>| {
        let mut command = if terminal {
            let mut command = std::process::Command::new("script");
            command.args(["-qec", &serve, "/dev/null"]);
            command
        } else {
            let mut command = std::process::Command::new("sh");
            command.args(["-c", &serve]);
            command
        };
        command.env("TERM", "xterm").env_remove("CLICOLOR").env_remove("CLICOLOR_FORCE").env_remove("NO_COLOR");
        command.env_remove("KBS_LOG").env_remove("KBS_CONFIG").env_remove("CI");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        let out = command.output().expect("script(1), from util-linux");
        assert!(!out.status.success());
        // Under `script` the terminal's output (the log) is on stdout.
        let text = String::from_utf8_lossy(if terminal { &out.stdout } else { &out.stderr }).into_owned();
        assert!(text.contains("ERROR") && text.contains("kbs.toml"), "{text}");
        text.contains('\x1b')
    };
    let cases = [
        (true, None, true),
        (true, Some(""), true),
        (true, Some("1"), false),
        (true, Some("false"), false),
        (false, None, false),
        (false, Some("1"), false),
    ];
    for (terminal, no_color, coloured) in cases {
        assert_eq!(log(terminal, no_color), coloured, "terminal {terminal}, NO_COLOR {no_color:?}");
    }
}
