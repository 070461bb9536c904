//! The TDX collateral fetcher against a local HTTP server speaking the PCS
//! v4 URL scheme, serving the real Intel collateral of the shared vectors:
//! fetch, cache by FMSPC, refresh before nextUpdate, back off on errors,
//! serve the cache meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kbs::evidence::EvidenceError;
use kbs::evidence::anchors::TdxAnchors;
use kbs::evidence::pcs::{PcsConfig, PcsFetcher, TdxCollateralDir, TdxCollateralResolver};
use kbs::evidence::tdx::{TdxPolicy, TdxVerifier};
use kbs::evidence::tdx_collateral::{Fmspc, PckCa, TdxCollateral};
use time::macros::datetime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn vector(rel: &str) -> Vec<u8> {
    let dir = std::env::var_os("KBS_TEST_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/vectors"));
    let path = dir.join(rel);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!("test vector {} is missing ({e}); set KBS_TEST_VECTORS to the shared vectors directory", path.display())
    })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A PCS look-alike: answers the four collateral URLs from one
/// `QuoteCollateralV3` set; fails with 503 while `fail` is set.
struct Pcs {
    url: String,
    requests: Arc<AtomicUsize>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
}

async fn start_pcs(set: &TdxCollateral) -> Pcs {
    let v3 = set.as_v3().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let requests = Arc::new(AtomicUsize::new(0));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (r, f, p) = (Arc::clone(&requests), Arc::clone(&fail), Arc::clone(&paths));
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let (v3, r, f, p) = (v3.clone(), Arc::clone(&r), Arc::clone(&f), Arc::clone(&p));
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut len = 0;
                while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = sock.read(&mut buf[len..]).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    len += n;
                }
                let head = String::from_utf8_lossy(&buf[..len]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                r.fetch_add(1, Ordering::SeqCst);
                p.lock().unwrap().push(path.clone());
                let (status, headers, body): (&str, String, Vec<u8>) = if f.load(Ordering::SeqCst) {
                    ("503 Service Unavailable", String::new(), b"busy".to_vec())
                } else if path.starts_with("/tdx/certification/v4/tcb?fmspc=B0C06F000000") {
                    let body = format!(
                        "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                        v3.tcb_info,
                        hex::encode(&v3.tcb_info_signature)
                    );
                    let h = format!("TCB-Info-Issuer-Chain: {}\r\n", percent_encode(&v3.tcb_info_issuer_chain));
                    ("200 OK", h, body.into_bytes())
                } else if path == "/tdx/certification/v4/qe/identity" {
                    let body = format!(
                        "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                        v3.qe_identity,
                        hex::encode(&v3.qe_identity_signature)
                    );
                    let h = format!(
                        "SGX-Enclave-Identity-Issuer-Chain: {}\r\n",
                        percent_encode(&v3.qe_identity_issuer_chain)
                    );
                    ("200 OK", h, body.into_bytes())
                } else if path == "/sgx/certification/v4/pckcrl?ca=platform&encoding=der" {
                    let h = format!("SGX-PCK-CRL-Issuer-Chain: {}\r\n", percent_encode(&v3.pck_crl_issuer_chain));
                    ("200 OK", h, v3.pck_crl.clone())
                } else if path == "/sgx/certification/v4/rootcacrl" {
                    // A PCCS serves the root CA CRL as hex text.
                    ("200 OK", String::new(), hex::encode(&v3.root_ca_crl).into_bytes())
                } else {
                    ("404 Not Found", String::new(), Vec::new())
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Pcs { url, requests, fail, paths }
}

fn fetcher(pcs: &Pcs, cache: &std::path::Path) -> PcsFetcher {
    let mut config = PcsConfig::new(pcs.url.clone(), cache);
    config.min_backoff = Duration::from_secs(60);
    PcsFetcher::new(config).unwrap()
}

#[tokio::test]
async fn fetches_caches_refreshes_and_backs_off() {
    let set = TdxCollateral::from_json(&vector("dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let pcs = start_pcs(&set).await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&pcs, cache.path());
    let fmspc = Fmspc::from_hex("B0C06F000000").unwrap();
    let at = datetime!(2025-07-01 00:00 UTC);

    // First use: four requests, then the set is in the cache.
    let got = fetcher.get(fmspc, PckCa::Platform, at).await.unwrap();
    assert_eq!(pcs.requests.load(Ordering::SeqCst), 4);
    assert_eq!(got.as_v3().tcb_info, set.as_v3().tcb_info);
    let paths = pcs.paths.lock().unwrap().clone();
    assert!(paths.contains(&"/tdx/certification/v4/tcb?fmspc=B0C06F000000".to_owned()), "{paths:?}");
    let cached = TdxCollateralDir::new(cache.path()).lookup(fmspc, PckCa::Platform).await.unwrap().unwrap();
    assert_eq!(cached.expires_at(), set.expires_at());
    // The fetched set verifies the quote it belongs to.
    let verifier = TdxVerifier::new(TdxAnchors::intel().unwrap(), TdxPolicy::default());
    verifier.verify_ignoring_report_data(&vector("dcap-qvl/tdx_quote"), &got, at).unwrap();

    // Well before nextUpdate: served from the cache, no request.
    fetcher.get(fmspc, PckCa::Platform, at).await.unwrap();
    assert_eq!(pcs.requests.load(Ordering::SeqCst), 4);

    // Within a day of nextUpdate: refreshed.
    let late = set.expires_at() - time::Duration::hours(2);
    fetcher.get(fmspc, PckCa::Platform, late).await.unwrap();
    assert_eq!(pcs.requests.load(Ordering::SeqCst), 8);

    // The service fails: the cached set is served and the fetcher backs
    // off (no request while backing off).
    pcs.fail.store(true, Ordering::SeqCst);
    let served = fetcher.get(fmspc, PckCa::Platform, late).await.unwrap();
    assert_eq!(served.fmspc(), fmspc);
    let after_failure = pcs.requests.load(Ordering::SeqCst);
    assert_eq!(after_failure, 9);
    fetcher.get(fmspc, PckCa::Platform, late).await.unwrap();
    assert_eq!(pcs.requests.load(Ordering::SeqCst), after_failure);

    // Past nextUpdate the cached set is still returned, and the verifier refuses it.
    let expired = set.expires_at() + time::Duration::hours(1);
    let stale = fetcher.get(fmspc, PckCa::Platform, expired).await.unwrap();
    assert!(matches!(
        verifier.verify_ignoring_report_data(&vector("dcap-qvl/tdx_quote"), &stale, expired),
        Err(EvidenceError::CollateralExpired(_))
    ));
}

#[tokio::test]
async fn without_a_cache_a_failing_service_is_unavailable() {
    let set = TdxCollateral::from_json(&vector("dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let pcs = start_pcs(&set).await;
    pcs.fail.store(true, Ordering::SeqCst);
    let cache = tempfile::tempdir().unwrap();
    let resolver = TdxCollateralResolver::new(None, Some(fetcher(&pcs, cache.path())));
    let fmspc = Fmspc::from_hex("B0C06F000000").unwrap();
    let at = datetime!(2025-07-01 00:00 UTC);
    let err = resolver.resolve(fmspc, PckCa::Platform, at).await.unwrap_err();
    assert_eq!(err.reason().as_str(), "collateral_unavailable");
    // Unknown FMSPCs are not found (404).
    pcs.fail.store(false, Ordering::SeqCst);
    let other = fetcher(&pcs, cache.path());
    assert!(other.get(Fmspc::from_hex("00906ED50000").unwrap(), PckCa::Platform, at).await.is_err());
    // The PCS responses are also kept as files, readable offline.
    let fresh = fetcher(&pcs, cache.path());
    fresh.get(fmspc, PckCa::Platform, at).await.unwrap();
    let offline = TdxCollateralDir::new(cache.path().join("pcs"));
    let set2 = offline.lookup(fmspc, PckCa::Platform).await.unwrap().unwrap();
    assert_eq!(set2.as_v3().tcb_info, set.as_v3().tcb_info);
    // The resolver prefers a current set and remembers it.
    let resolver = TdxCollateralResolver::new(Some(TdxCollateralDir::new(cache.path())), None);
    assert!(resolver.resolve(fmspc, PckCa::Platform, at).await.unwrap().is_current(at));
}

/// `kbsctl collateral fetch` writes a directory the broker (and `kbsctl
/// verify --collateral DIR`) reads offline.
#[tokio::test]
async fn kbsctl_fetches_collateral_for_an_air_gapped_broker() {
    let set = TdxCollateral::from_json(&vector("dcap-qvl/tdx_quote_collateral.json")).unwrap();
    let pcs = start_pcs(&set).await;
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("collateral");
    let (url, dir_arg) = (pcs.url.clone(), dir.display().to_string());
    let run = move |time: &'static str| {
        let (url, dir_arg) = (url.clone(), dir_arg.clone());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kbsctl"))
                .args(["collateral", "fetch", "--fmspc", "B0C06F000000", "--pcs-url", &url, "--out", &dir_arg])
                .args(["--time", time])
                .output()
                .unwrap()
        })
    };
    let ok = run("2025-07-01T00:00:00Z").await.unwrap();
    assert_eq!(ok.status.code(), Some(0), "{}", String::from_utf8_lossy(&ok.stderr));
    let cached = TdxCollateralDir::new(&dir).lookup(Fmspc::from_hex("B0C06F000000").unwrap(), PckCa::Platform).await;
    let cached = cached.unwrap().expect("the set is in the output directory");
    let verifier = TdxVerifier::new(TdxAnchors::intel().unwrap(), TdxPolicy::default());
    verifier
        .verify_ignoring_report_data(&vector("dcap-qvl/tdx_quote"), &cached, datetime!(2025-07-01 00:00 UTC))
        .unwrap();
    // Collateral the service itself serves expired is refused, exit 2.
    let late = run("2030-01-01T00:00:00Z").await.unwrap();
    assert_eq!(late.status.code(), Some(2), "{}", String::from_utf8_lossy(&late.stderr));
    assert!(String::from_utf8_lossy(&late.stderr).contains("collateral_expired"));
}
