//! Unauthenticated evidence must not be able to starve the collateral
//! fetchers: a TDX quote is checked up to what needs no collateral (its PCK
//! chain to a pinned root, the QE report and quote signatures) before PCS
//! is asked anything for it; one platform's failures hold back only that
//! platform; a share of the KDS budget is kept for chips that attested
//! before. Local HTTP servers on loopback port 0 stand in for PCS and KDS
//! and count what reaches them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use attester_client::hpke::EphemeralKey;
use attester_client::simulated::{
    Chip, Generation, Pck, Platform, SimulatedSnp, SimulatedTdx, TdxTestPki, test_ark_der,
};
use kbs::audit::AuditLog;
use kbs::challenge::ChallengeSealer;
use kbs::evidence::anchors::{Generation as AmdGeneration, SnpAnchors, TdxAnchors};
use kbs::evidence::collateral::{KdsConfig, KdsFetcher, VekResolver, kds_vcek_url};
use kbs::evidence::pcs::{PcsConfig, PcsFetcher, TdxCollateralResolver};
use kbs::evidence::snp::{RawTcb, SnpVerifier};
use kbs::evidence::tdx::{TdxPolicy, TdxVerifier};
use kbs::evidence::tdx_collateral::{Fmspc, PckCa, TdxCollateral};
use kbs::release::{Broker, EvidenceInput, ReleaseRequest, SnpCerts, TEE_SNP, TEE_TDX, TdxSupport};
use kbs::store::local::{Kek, LocalStore};
use kbs::store::{NewSecret, SecretStore, SecretValue};
use kbs_proto::SuiteId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const SECRET: &str = "models/guarded/key";
const MEASUREMENT: [u8; 48] = [0x5a; 48];
const X25519: SuiteId = SuiteId::X25519_SHA256_AES256GCM;
/// Offset of `chip_id` in an SEV-SNP report.
const CHIP_ID_OFFSET: usize = 0x1A0;

/// One canned answer: status line, extra headers, body.
type Answer = (String, String, Vec<u8>);

/// A vendor service look-alike on loopback port 0: answers each request
/// with `answer(path)` and counts the requests. Stopped when dropped.
struct Stub {
    url: String,
    paths: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Stub {
    async fn start(answer: impl Fn(&str) -> Answer + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (seen, answer) = (Arc::clone(&paths), Arc::new(answer));
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                let (seen, answer) = (Arc::clone(&seen), Arc::clone(&answer));
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                        if len == buf.len() {
                            return;
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..len]).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                    seen.lock().unwrap().push(path.clone());
                    let (status, headers, body) = answer(&path);
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
        Self { url, paths, task }
    }

    fn requests(&self) -> usize {
        self.paths.lock().unwrap().len()
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(status: &str, headers: String, body: Vec<u8>) -> Answer {
    (status.to_owned(), headers, body)
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

/// PCS answers for the collateral `sets` (by FMSPC, 404 for any other);
/// the TCB info of an FMSPC (upper-case hex) in `failing` is answered with
/// the status given there instead.
fn pcs_answer(sets: Vec<TdxCollateral>, failing: HashMap<String, &'static str>) -> impl Fn(&str) -> Answer {
    move |path: &str| {
        let any = sets.first().map(|s| s.as_v3().clone());
        if let Some(fmspc) = path.strip_prefix("/tdx/certification/v4/tcb?fmspc=") {
            if let Some(status) = failing.get(fmspc) {
                return answer(status, String::new(), b"no".to_vec());
            }
            let Some(set) = sets.iter().find(|s| s.fmspc().to_hex_upper() == fmspc) else {
                return answer("404 Not Found", String::new(), Vec::new());
            };
            let v3 = set.as_v3();
            let body =
                format!("{{\"tcbInfo\":{},\"signature\":\"{}\"}}", v3.tcb_info, hex::encode(&v3.tcb_info_signature));
            let h = format!("TCB-Info-Issuer-Chain: {}\r\n", percent_encode(&v3.tcb_info_issuer_chain));
            return answer("200 OK", h, body.into_bytes());
        }
        let Some(v3) = any else { return answer("404 Not Found", String::new(), Vec::new()) };
        match path {
            "/tdx/certification/v4/qe/identity" => {
                let body = format!(
                    "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                    v3.qe_identity,
                    hex::encode(&v3.qe_identity_signature)
                );
                let h =
                    format!("SGX-Enclave-Identity-Issuer-Chain: {}\r\n", percent_encode(&v3.qe_identity_issuer_chain));
                answer("200 OK", h, body.into_bytes())
            }
            "/sgx/certification/v4/pckcrl?ca=platform&encoding=der" => {
                let h = format!("SGX-PCK-CRL-Issuer-Chain: {}\r\n", percent_encode(&v3.pck_crl_issuer_chain));
                answer("200 OK", h, v3.pck_crl.clone())
            }
            "/sgx/certification/v4/rootcacrl" => {
                answer("200 OK", String::new(), hex::encode(&v3.root_ca_crl).into_bytes())
            }
            _ => answer("404 Not Found", String::new(), Vec::new()),
        }
    }
}

fn names() -> Vec<String> {
    vec![SECRET.to_owned()]
}

async fn store(dir: &std::path::Path) -> Arc<dyn SecretStore> {
    let store = LocalStore::open(&dir.join("secrets"), &Kek::new([3; 32])).unwrap();
    store
        .put(NewSecret {
            name: SECRET.into(),
            value: SecretValue::new(vec![0x42; 32]),
            labels: BTreeMap::new(),
            allowed_measurements: vec![hex::encode(MEASUREMENT)],
            expected_version: None,
        })
        .await
        .unwrap();
    Arc::new(store)
}

fn snp_verifier() -> SnpVerifier {
    let mut anchors = SnpAnchors::amd().unwrap();
    for generation in [AmdGeneration::Milan, AmdGeneration::Genoa, AmdGeneration::Turin] {
        anchors.add_root(generation, test_ark_der()).unwrap();
    }
    SnpVerifier::new(anchors)
}

async fn broker(dir: &std::path::Path, vek: VekResolver, tdx: Option<TdxSupport>) -> Broker {
    Broker::new(
        ChallengeSealer::new(&[7; 32], &[]).unwrap(),
        Duration::from_secs(600),
        snp_verifier(),
        vek,
        store(dir).await,
        Arc::new(AuditLog::file(&dir.join("audit.jsonl"), "test", None).unwrap()),
        kbs::release::system_clock(),
    )
    .with_tdx(tdx)
}

/// A release request for `tee` whose evidence `make` builds from the
/// report_data the challenge asks for.
fn request(broker: &Broker, tee: u8, make: impl FnOnce(&[u8; 64]) -> EvidenceInput) -> ReleaseRequest {
    let issued = broker.challenge(tee, &names()).unwrap();
    let key = EphemeralKey::generate(X25519).unwrap();
    let rd = kbs_proto::report_data(&issued.nonce, X25519, key.public_key());
    ReleaseRequest {
        challenge: issued.token,
        evidence: make(&rd),
        suite: X25519,
        public_key: key.public_key().to_vec(),
        names: names(),
        caller: "test".into(),
        gpus: Vec::new(),
    }
}

fn tdx_support(pcs: &Stub, cache: &std::path::Path, trust_test_root: bool) -> TdxSupport {
    let mut anchors = TdxAnchors::intel().unwrap();
    if trust_test_root {
        anchors.add_root(TdxTestPki::get().unwrap().root_der()).unwrap();
    }
    let fetcher = PcsFetcher::new(PcsConfig::new(pcs.url.clone(), cache)).unwrap();
    TdxSupport {
        verifier: TdxVerifier::new(anchors, TdxPolicy::default()),
        collateral: TdxCollateralResolver::new(None, Some(fetcher)),
    }
}

fn tdx_quote(sim: SimulatedTdx) -> impl FnOnce(&[u8; 64]) -> EvidenceInput {
    move |rd| EvidenceInput::Tdx { quote: sim.mr_td(MEASUREMENT).quote(rd).unwrap() }
}

/// A quote whose PCK chain ends at a root the broker does not pin (a
/// self-made PCK certificate naming an FMSPC PCS does not know) is refused
/// for its chain, and PCS hears nothing of it. The same quote under a
/// broker that pins that root is fetched for (the server counts).
#[tokio::test]
async fn a_self_made_pck_chain_is_refused_before_any_pcs_request() {
    let dir = tempfile::tempdir().unwrap();
    let pcs = Stub::start(pcs_answer(Vec::new(), HashMap::new())).await;

    let intel_only = broker(dir.path(), VekResolver::new(None, None), Some(tdx_support(&pcs, dir.path(), false))).await;
    let forged = request(&intel_only, TEE_TDX, tdx_quote(SimulatedTdx::new().platform(Platform::OutOfDate)));
    let refused = intel_only.release(forged).await.unwrap_err();
    assert_eq!(refused.reason().as_str(), "untrusted_root", "{refused}");
    assert_eq!(pcs.requests(), 0, "PCS was asked: {:?}", pcs.paths());

    // A QE report signed by another key than the PCK's: refused for its
    // signature, before any fetch, even where the chain is trusted.
    let (dir, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let test_root = broker(dir.path(), VekResolver::new(None, None), Some(tdx_support(&pcs, cache.path(), true))).await;
    let wrong = request(&test_root, TEE_TDX, tdx_quote(SimulatedTdx::new().pck(Pck::Wrong)));
    let refused = test_root.release(wrong).await.unwrap_err();
    assert_eq!(refused.reason().as_str(), "signature_invalid", "{refused}");
    assert_eq!(pcs.requests(), 0, "PCS was asked: {:?}", pcs.paths());

    // The control: a quote whose chain verifies is fetched for.
    let genuine = request(&test_root, TEE_TDX, tdx_quote(SimulatedTdx::new().platform(Platform::OutOfDate)));
    let refused = test_root.release(genuine).await.unwrap_err();
    assert_eq!(refused.reason().as_str(), "collateral_unavailable", "{refused}");
    let fmspc = Fmspc(Platform::OutOfDate.fmspc()).to_hex_upper();
    assert_eq!(pcs.paths(), vec![format!("/tdx/certification/v4/tcb?fmspc={fmspc}")]);
}

/// Platform A's TCB info fails (HTTP 500, then for another platform 404):
/// platform B's collateral is fetched right after, while A stays held back.
#[tokio::test]
async fn a_failing_fmspc_does_not_hold_back_another() {
    let pki = TdxTestPki::get().unwrap();
    let set_b = TdxCollateral::from_json(pki.collateral_json(Platform::UpToDate).unwrap().as_bytes()).unwrap();
    let (a, gone) = (Fmspc(Platform::OutOfDate.fmspc()), Fmspc(Platform::ExpiredCollateral.fmspc()));
    let failing = HashMap::from([(a.to_hex_upper(), "500 Internal Server Error")]);
    let pcs = Stub::start(pcs_answer(vec![set_b.clone()], failing)).await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher = PcsFetcher::new(PcsConfig::new(pcs.url.clone(), cache.path())).unwrap();
    let now = time::OffsetDateTime::now_utc();

    assert!(fetcher.get(a, PckCa::Platform, now).await.is_err());
    assert_eq!(pcs.requests(), 1);
    let got = fetcher.get(set_b.fmspc(), PckCa::Platform, now).await.unwrap();
    assert_eq!(got.fmspc(), set_b.fmspc());
    assert_eq!(pcs.requests(), 5, "{:?}", pcs.paths());

    // A 404 holds back only its own FMSPC too.
    assert!(fetcher.get(gone, PckCa::Platform, now).await.is_err());
    assert_eq!(pcs.requests(), 6);
    let other_cache = tempfile::tempdir().unwrap();
    let refetch = PcsFetcher::new(PcsConfig::new(pcs.url.clone(), other_cache.path())).unwrap();
    assert!(refetch.get(gone, PckCa::Platform, now).await.is_err());
    refetch.get(set_b.fmspc(), PckCa::Platform, now).await.unwrap();
    assert_eq!(pcs.requests(), 11, "{:?}", pcs.paths());

    // A itself is still backing off, and the 404 is remembered: no request.
    let err = fetcher.get(a, PckCa::Platform, now).await.unwrap_err();
    assert!(err.to_string().contains("backing off"), "{err}");
    let err = fetcher.get(gone, PckCa::Platform, now).await.unwrap_err();
    assert!(err.to_string().contains("has no TCB info"), "{err}");
    assert_eq!(pcs.requests(), 11, "{:?}", pcs.paths());
}

fn kds_path(chip: Chip) -> String {
    let generation = match chip.generation() {
        Generation::Milan => AmdGeneration::Milan,
        Generation::Genoa => AmdGeneration::Genoa,
        Generation::Turin => AmdGeneration::Turin,
    };
    // With an empty base URL, the URL is its path.
    kds_vcek_url("", generation, &chip.chip_id(), RawTcb(chip.tcb().to_bytes(chip.generation())))
}

/// KDS answers: the VCEK of `served`, 500 for `failing`, 404 otherwise.
fn kds_answer(served: Chip, failing: Option<[u8; 64]>) -> impl Fn(&str) -> Answer {
    let path = kds_path(served);
    move |p: &str| {
        if p == path {
            return answer("200 OK", String::new(), served.vcek().cert_der().to_vec());
        }
        if let Some(chip) = failing
            && p.contains(&hex::encode(chip))
        {
            return answer("500 Internal Server Error", String::new(), b"oops".to_vec());
        }
        answer("404 Not Found", String::new(), Vec::new())
    }
}

fn kds_fetcher(kds: &Stub, cache: &std::path::Path) -> KdsFetcher {
    let mut config = KdsConfig::new(cache);
    config.base_url = kds.url.clone();
    KdsFetcher::new(config).unwrap()
}

fn random_chip(n: u64) -> [u8; 64] {
    let mut chip = [0u8; 64];
    chip[..8].copy_from_slice(&n.to_le_bytes());
    chip[8..16].copy_from_slice(&(!n).to_le_bytes());
    chip[63] = 0x5a;
    chip
}

/// Chip A's VCEK request fails with HTTP 500: chip B's is fetched right
/// after, and A is not asked again while it backs off.
#[tokio::test]
async fn a_failing_chip_does_not_hold_back_another() {
    let a = random_chip(1);
    let kds = Stub::start(kds_answer(Chip::Genoa, Some(a))).await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher = kds_fetcher(&kds, cache.path());
    let tcb = RawTcb(Chip::Genoa.tcb().to_bytes(Generation::Genoa));

    assert!(fetcher.fetch_vcek(AmdGeneration::Genoa, &a, tcb).await.is_err());
    assert_eq!(kds.requests(), 1);
    let der = fetcher.fetch_vcek(AmdGeneration::Genoa, &Chip::Genoa.chip_id(), tcb).await.unwrap();
    assert_eq!(der, Chip::Genoa.vcek().cert_der());
    assert_eq!(kds.requests(), 2, "{:?}", kds.paths());
    let err = fetcher.fetch_vcek(AmdGeneration::Genoa, &a, tcb).await.unwrap_err();
    assert!(err.to_string().contains("backing off"), "{err}");
    assert_eq!(kds.requests(), 2, "{:?}", kds.paths());
}

fn snp_report(sim: &SimulatedSnp, rd: &[u8; 64], chip: Option<[u8; 64]>) -> Vec<u8> {
    let mut report = sim.report(rd).unwrap();
    if let Some(chip) = chip {
        report[CHIP_ID_OFFSET..CHIP_ID_OFFSET + 64].copy_from_slice(&chip);
    }
    report
}

/// A flood of reports with made-up chip ids spends the KDS budget open to
/// unknown chips; a chip that attested before still gets its VCEK fetched.
#[tokio::test]
async fn known_chips_keep_a_share_of_the_kds_budget() {
    let dir = tempfile::tempdir().unwrap();
    let kds = Stub::start(kds_answer(Chip::Genoa, None)).await;
    let cache = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), VekResolver::new(None, Some(kds_fetcher(&kds, cache.path()))), None).await;
    let sim = SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT);

    // The chip attests once with its host's certificate table: no KDS.
    let table = sim.cert_table().unwrap();
    let first = request(&broker, TEE_SNP, |rd| EvidenceInput::Snp {
        report: snp_report(&sim, rd, None),
        certs: SnpCerts::Table(table),
    });
    broker.release(first).await.unwrap();
    assert_eq!(kds.requests(), 0);

    // Made-up chips, more than the whole per-minute budget.
    let budget = KdsConfig::new("/unused").max_requests_per_minute;
    for n in 0..(budget as u64 + 5) {
        let flood = request(&broker, TEE_SNP, |rd| EvidenceInput::Snp {
            report: snp_report(&sim, rd, Some(random_chip(n + 100))),
            certs: SnpCerts::none(),
        });
        let refused = broker.release(flood).await.unwrap_err();
        assert_eq!(refused.reason().as_str(), "collateral_unavailable", "{refused}");
    }
    let flooded = kds.requests();

    // The known chip, now without a table: its VCEK comes from KDS.
    let again = request(&broker, TEE_SNP, |rd| EvidenceInput::Snp {
        report: snp_report(&sim, rd, None),
        certs: SnpCerts::none(),
    });
    let released = broker.release(again).await.unwrap();
    assert_eq!(released.secrets.len(), 1);
    assert_eq!(kds.requests(), flooded + 1);
    assert_eq!(kds.paths().last().unwrap(), &kds_path(Chip::Genoa));
    assert!(flooded > 0 && flooded < budget, "{flooded} requests for unknown chips");
}

/// A report whose host supplies a certificate table is judged with that
/// table: a forged one is refused without spending any KDS request.
#[tokio::test]
async fn a_guest_certificate_table_is_used_before_kds() {
    let dir = tempfile::tempdir().unwrap();
    let kds = Stub::start(kds_answer(Chip::Genoa, None)).await;
    let cache = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), VekResolver::new(None, Some(kds_fetcher(&kds, cache.path()))), None).await;
    let sim = SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT);
    let table = sim.cert_table().unwrap();
    for n in 0..5u64 {
        let table = table.clone();
        let forged = request(&broker, TEE_SNP, |rd| EvidenceInput::Snp {
            report: snp_report(&sim, rd, Some(random_chip(n))),
            certs: SnpCerts::Table(table),
        });
        let refused = broker.release(forged).await.unwrap_err();
        assert_ne!(refused.reason().as_str(), "collateral_unavailable", "{refused}");
    }
    assert_eq!(kds.requests(), 0, "{:?}", kds.paths());
}
