//! Online OCSP for NVIDIA device chains (`[gpu] ocsp_fetch`) against a
//! local HTTP responder on 127.0.0.1 that serves the genuine H100 OCSP
//! responses of google/go-nvattest-tools (signed by NVIDIA's delegated
//! responders on 2025-08-21, 24-hour windows), checked at a time inside
//! their window: fetched responses show the genuine chain good and are
//! cached until their nextUpdate, as are `revoked` and `unknown` answers
//! (signed under a test PKI made in the test: no captured vector holds
//! one); a responder that fails or answers garbage is backed off and leaves the device `not_checked` (best effort)
//! or refused (required), without a panic.
//!
//! Vectors come from `$KBS_TEST_VECTORS`, by default
//! `$CARGO_MANIFEST_DIR/../../shared/vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use kbs::audit::AuditLog;
use kbs::challenge::ChallengeSealer;
use kbs::evidence::anchors::SnpAnchors;
use kbs::evidence::collateral::VekResolver;
use kbs::evidence::gpu::ocsp::{self, OcspError};
use kbs::evidence::gpu::{GpuNonce, GpuSetClaims, SetRevocation};
use kbs::evidence::gpu_ocsp::{GpuOcspConfig, GpuOcspFetcher, OcspFetch};
use kbs::evidence::snp::SnpVerifier;
use kbs::reason::ReasonCode;
use kbs::release::{Broker, GpuInput};
use kbs::store::local::{Kek, LocalStore};
use time::OffsetDateTime;
use time::macros::datetime;

#[path = "../../tests/tests/support/vectors.rs"]
mod vectors;

use vectors::vector;

const GOOGLE: &str = "nvidia/google-go-nvattest-tools/testing/testdata";
/// The nonce of google/go-nvattest-tools' H100 report.
const NONCE_931D: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
/// Inside every device-chain response's window (2025-08-21, one day).
const FRESH: OffsetDateTime = datetime!(2025-08-21 12:00 UTC);

fn chain_pem() -> Vec<u8> {
    vector(&format!("{GOOGLE}/test_gpu_attestation_certificate_chain.dat"))
}

/// The genuine chain as the verifier parses it (DER, leaf first).
fn chain_ders() -> Vec<Vec<u8>> {
    kbs::evidence::gpu::chain::pem_chain(&chain_pem()).unwrap()
}

fn report() -> Vec<u8> {
    vector(&format!("{GOOGLE}/test_raw_gpu_attestation_report.dat"))
}

/// The genuine responses for the BROM, Provisioner ICA and Identity
/// certificates (levels 4, 3, 2).
fn genuine_responses() -> Vec<Vec<u8>> {
    [4, 3, 2]
        .into_iter()
        .map(|level| {
            let text = vector(&format!("{GOOGLE}/ocsp/test_gpu_certificate_l{level}_base64encoded_ocsp_response.dat"));
            let text: Vec<u8> = text.into_iter().filter(|b| !b.is_ascii_whitespace()).collect();
            B64.decode(text).unwrap()
        })
        .collect()
}

/// How the local responder answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The genuine response whose CertID the request names.
    Genuine,
    /// HTTP 500.
    Fail,
    /// HTTP 200 with bytes that are no OCSP response.
    Garbage,
    /// Accepts the request and never answers.
    Silent,
    /// As `Genuine`, after holding each request until another one is in
    /// flight too, or for 300 ms at most (under the fetcher's timeout).
    Gathering,
}

struct Responder {
    url: String,
    requests: Arc<AtomicUsize>,
    /// Most requests in flight at once.
    peak: Arc<AtomicUsize>,
}

/// `(tag, content, rest)` of one DER TLV (short and two-byte lengths).
fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let (tag, first) = (input[0], input[1]);
    let (len, at) = match first {
        0..=0x7F => (usize::from(first), 2),
        0x81 => (usize::from(input[2]), 3),
        _ => (usize::from(u16::from_be_bytes([input[2], input[3]])), 4),
    };
    (tag, &input[at..at + len], &input[at + len..])
}

/// The CertID of an OCSP request, read independently of the broker's
/// encoder: OCSPRequest / TBSRequest / requestList / Request / CertID.
fn requested_cert_id(request: &[u8]) -> Vec<u8> {
    let (_, tbs_request, _) = tlv(request);
    let (_, request_list, _) = tlv(tbs_request);
    let (_, requests, _) = tlv(request_list);
    let (_, one, others) = tlv(requests);
    assert!(others.is_empty(), "one request per certificate");
    let (tag, cert_id, _) = tlv(one);
    assert_eq!(tag, 0x30);
    let (_, _algorithm, fields) = tlv(cert_id);
    // issuerNameHash, issuerKeyHash and serialNumber, as TLVs: the response's
    // CertID repeats them byte for byte.
    fields.to_vec()
}

async fn start_responder(mode: Mode) -> Responder {
    start_responder_with(mode, genuine_responses()).await
}

/// A responder that answers from `responses` (by the CertID asked for).
async fn start_responder_with(mode: Mode, responses: Vec<Vec<u8>>) -> Responder {
    use axum::body::Bytes;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let responses = Arc::new(responses);
    let requests = Arc::new(AtomicUsize::new(0));
    let (in_flight, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counters = (Arc::clone(&requests), Arc::clone(&in_flight), Arc::clone(&peak));
    let handler = move |headers: axum::http::HeaderMap, body: Bytes| {
        let responses = Arc::clone(&responses);
        let (counter, in_flight, peak) = (Arc::clone(&counters.0), Arc::clone(&counters.1), Arc::clone(&counters.2));
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let now_in_flight = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now_in_flight, Ordering::SeqCst);
            if mode == Mode::Gathering {
                for _ in 0..30 {
                    if in_flight.load(Ordering::SeqCst) > 1 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
            assert_eq!(headers[header::CONTENT_TYPE], "application/ocsp-request");
            match mode {
                Mode::Fail => return (StatusCode::INTERNAL_SERVER_ERROR, b"down".to_vec()).into_response(),
                Mode::Garbage => return (StatusCode::OK, vec![0x30, 0x03, 0x0A, 0x01, 0x00]).into_response(),
                Mode::Silent => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return StatusCode::OK.into_response();
                }
                Mode::Genuine | Mode::Gathering => {}
            }
            let wanted = requested_cert_id(&body);
            match responses.iter().find(|r| r.windows(wanted.len()).any(|w| w == wanted.as_slice())) {
                Some(found) => ([(header::CONTENT_TYPE, "application/ocsp-response")], found.clone()).into_response(),
                None => (StatusCode::NOT_FOUND, b"unknown certificate".to_vec()).into_response(),
            }
        }
    };
    let app = axum::Router::new().route("/", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    tokio::spawn(async move {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
            });
        }
    });
    Responder { url, requests, peak }
}

fn fetcher(responder: &Responder, policy: OcspFetch) -> Arc<GpuOcspFetcher> {
    let config = GpuOcspConfig {
        url: Some(responder.url.clone()),
        timeout: Duration::from_millis(500),
        ..GpuOcspConfig::new(policy)
    };
    Arc::new(GpuOcspFetcher::new(config).unwrap())
}

/// A broker pinning NVIDIA's device root (its default), with `fetcher`.
fn broker(dir: &std::path::Path, fetcher: Option<Arc<GpuOcspFetcher>>) -> Broker {
    let store = Arc::new(LocalStore::open(&dir.join("secrets"), &Kek::new([3; 32])).unwrap());
    let audit = Arc::new(AuditLog::file(&dir.join("audit.jsonl"), "test", None).unwrap());
    let broker = Broker::new(
        ChallengeSealer::new(&[7; 32], &[]).unwrap(),
        Duration::from_secs(60),
        SnpVerifier::new(SnpAnchors::amd().unwrap()),
        VekResolver::new(None, None),
        store,
        audit,
        kbs::release::system_clock(),
    );
    match fetcher {
        Some(f) => broker.with_gpu_ocsp(f),
        None => broker,
    }
}

async fn verify(
    broker: &Broker,
    stapled: Vec<Vec<u8>>,
    now: OffsetDateTime,
) -> Result<GpuSetClaims, kbs::error::Error> {
    let gpus = vec![GpuInput { report: report(), cert_chain: chain_pem(), ocsp: stapled }];
    let digest = [0u8; 48];
    broker.verify_gpu_set(&gpus, &GpuNonce::from_hex(NONCE_931D).unwrap(), &digest, now).await
}

#[tokio::test]
async fn fetched_responses_show_the_genuine_chain_good_and_are_cached_until_next_update() {
    let responder = start_responder(Mode::Genuine).await;
    let fetcher = fetcher(&responder, OcspFetch::Require);
    let fetched = fetcher.responses(&chain_ders(), FRESH).await;
    assert_eq!(fetched.len(), 3);
    let good = ocsp::verify_chain_ocsp(&chain_ders(), &fetched, FRESH).unwrap();
    let subjects: Vec<&str> = good.iter().map(|g| g.subject.as_str()).collect();
    assert_eq!(subjects, ["GH100 A01 GSP BROM", "NVIDIA GH100 Provisioner ICA 1", "NVIDIA GH100 Identity"]);
    assert_eq!((responder.requests.load(Ordering::SeqCst), fetcher.cached()), (3, 3));
    // From the cache while fresh: the responder is not asked again.
    assert_eq!(fetcher.responses(&chain_ders(), FRESH + time::Duration::hours(11)).await, fetched);
    assert_eq!(responder.requests.load(Ordering::SeqCst), 3);

    // Through the release flow: the device's revocation is good.
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path(), Some(Arc::clone(&fetcher)));
    let set = verify(&broker, Vec::new(), FRESH).await.unwrap();
    assert_eq!(set.revocation, SetRevocation::Good);
    let revocation = set.devices[0].revocation.as_ref().unwrap();
    assert_eq!(revocation.certificates.len(), 3);
    assert_eq!(responder.requests.load(Ordering::SeqCst), 3);

    // Past nextUpdate the cache is not used: the responder is asked, its
    // (now stale) answer does not verify, it is backed off, the device is
    // refused under `require`.
    let later = FRESH + time::Duration::days(2);
    let err = verify(&broker, Vec::new(), later).await.unwrap_err();
    assert_eq!(err.reason(), ReasonCode::CollateralUnavailable, "{err}");
    let asked = responder.requests.load(Ordering::SeqCst);
    assert!((4..=6).contains(&asked), "at most one request per certificate, then the responder is backed off");
    assert!(verify(&broker, Vec::new(), later).await.is_err());
    assert_eq!(responder.requests.load(Ordering::SeqCst), asked, "backed off");
}

/// The certificates of a chain are asked for at once, and releases that
/// need the same response share one request: one slow responder answer
/// does not queue every other fetch behind it.
#[tokio::test]
async fn certificates_are_fetched_at_once_and_one_response_is_fetched_once() {
    let responder = start_responder(Mode::Gathering).await;
    let fetcher = fetcher(&responder, OcspFetch::Require);
    let chain = chain_ders();
    let (a, b) = tokio::join!(fetcher.responses(&chain, FRESH), fetcher.responses(&chain, FRESH));
    assert_eq!((a.len(), b.len()), (3, 3));
    assert_eq!(a, b);
    assert!(responder.peak.load(Ordering::SeqCst) >= 2, "the chain's requests were sent one after another");
    assert_eq!(responder.requests.load(Ordering::SeqCst), 3, "one request per certificate, whoever asked");
    assert_eq!((fetcher.cached(), fetcher.fetching()), (3, 0));

    // A release dropped while it waits for a responder leaves nothing behind.
    let silent = start_responder(Mode::Silent).await;
    let fetcher = self::fetcher(&silent, OcspFetch::Require);
    let dropped = tokio::time::timeout(Duration::from_millis(50), fetcher.responses(&chain, FRESH)).await;
    assert!(dropped.is_err(), "the silent responder answered");
    assert_eq!(silent.requests.load(Ordering::SeqCst), 3);
    assert_eq!(fetcher.fetching(), 0);
}

#[tokio::test]
async fn stapled_responses_are_used_first_and_off_keeps_todays_behaviour() {
    let responder = start_responder(Mode::Genuine).await;
    let dir = tempfile::tempdir().unwrap();
    let online = broker(dir.path(), Some(fetcher(&responder, OcspFetch::Require)));
    let set = verify(&online, genuine_responses(), FRESH).await.unwrap();
    assert_eq!(set.revocation, SetRevocation::Good);
    assert_eq!(responder.requests.load(Ordering::SeqCst), 0, "fresh stapled responses need no fetch");

    // Without a fetcher: stapled only, none is not_checked, stale is refused.
    let dir = tempfile::tempdir().unwrap();
    let offline = broker(dir.path(), None);
    assert_eq!(verify(&offline, Vec::new(), FRESH).await.unwrap().revocation, SetRevocation::NotChecked);
    let stale = verify(&offline, genuine_responses(), FRESH + time::Duration::days(2)).await.unwrap_err();
    assert_eq!(stale.reason(), ReasonCode::CollateralExpired);
    assert_eq!(responder.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_failing_responder_is_backed_off_and_leaves_revocation_not_checked_or_refused() {
    for mode in [Mode::Fail, Mode::Garbage, Mode::Silent] {
        let responder = start_responder(mode).await;
        let dir = tempfile::tempdir().unwrap();
        let best_effort = fetcher(&responder, OcspFetch::BestEffort);
        let broker_best = broker(dir.path(), Some(Arc::clone(&best_effort)));
        let set = verify(&broker_best, Vec::new(), FRESH).await.unwrap();
        assert_eq!(set.revocation, SetRevocation::NotChecked);
        assert!(set.devices[0].revocation.is_none());
        assert_eq!(best_effort.cached(), 0, "nothing that failed is cached");
        // The chain's three certificates were asked for at once; each
        // failed, and the responder is backed off.
        let asked = responder.requests.load(Ordering::SeqCst);
        assert!((1..=3).contains(&asked), "{asked} requests");
        assert!(verify(&broker_best, Vec::new(), FRESH).await.is_ok());
        assert_eq!(responder.requests.load(Ordering::SeqCst), asked, "still backed off");

        let dir = tempfile::tempdir().unwrap();
        let required = broker(dir.path(), Some(fetcher(&responder, OcspFetch::Require)));
        let err = verify(&required, Vec::new(), FRESH).await.unwrap_err();
        assert_eq!(err.reason(), ReasonCode::CollateralUnavailable, "{err}");
        // A stale stapled response and a failing responder: still refused.
        let err = verify(&required, genuine_responses(), FRESH + time::Duration::days(2)).await.unwrap_err();
        assert_eq!(err.reason(), ReasonCode::CollateralUnavailable, "{err}");
    }
}

/// Nothing is asked for a chain longer than a device chain's PEM may hold
/// (one certificate more than a device chain), as when the fetcher parsed
/// the PEM itself.
#[tokio::test]
async fn nothing_is_asked_for_a_chain_longer_than_a_pem_chain_may_hold() {
    let responder = start_responder(Mode::Genuine).await;
    let fetcher = fetcher(&responder, OcspFetch::Require);
    let mut six = chain_ders();
    six.push(six[4].clone());
    let mut seven = six.clone();
    seven.push(six[4].clone());
    assert!(fetcher.responses(&seven, FRESH).await.is_empty());
    assert_eq!((responder.requests.load(Ordering::SeqCst), fetcher.cached()), (0, 0));
    // Six is still asked for: the three genuine responses, and none for
    // the root as its own issuer.
    assert_eq!(fetcher.responses(&six, FRESH).await, genuine_responses());
    assert_eq!(responder.requests.load(Ordering::SeqCst), 4);
}

/// DER TLV (content below 64 KiB).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let mut out = vec![tag];
    match len {
        0..=0x7F => out.push(len as u8),
        0x80..=0xFF => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

fn generalized_time(at: OffsetDateTime) -> Vec<u8> {
    let text = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    );
    der(0x18, text.as_bytes())
}

/// The status a test response gives.
#[derive(Clone, Copy)]
enum Status {
    Good,
    Revoked,
    Unknown,
}

/// INSECURE: a device chain of NVIDIA's shape (leaf, BROM, Provisioner ICA,
/// Identity, root) under a test PKI made here, whose issuer keys sign OCSP
/// responses in NVIDIA's format (SHA-384 CertID, ECDSA P-384/SHA-384, the
/// issuer itself as responder). No NVIDIA responder signed these: they stand
/// for the `revoked` and `unknown` answers no captured vector holds.
struct TestChain {
    /// Leaf first.
    ders: Vec<Vec<u8>>,
    /// The key of each certificate, in the same order.
    keys: Vec<rcgen::KeyPair>,
}

impl TestChain {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, PKCS_ECDSA_P384_SHA384};
        let params = |cn: &str, serial: u8, ca: bool| {
            let mut p = CertificateParams::default();
            p.distinguished_name = rcgen::DistinguishedName::new();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&[serial]));
            p.is_ca = if ca { IsCa::Ca(BasicConstraints::Unconstrained) } else { IsCa::ExplicitNoCa };
            p
        };
        // Root first here; reversed at the end.
        let names =
            ["KBS TEST OCSP root", "NVIDIA GH100 Identity", "NVIDIA GH100 Provisioner ICA 1", "GH100 A01 GSP BROM"];
        let mut keys: Vec<KeyPair> = Vec::new();
        let mut ders = Vec::new();
        let mut issuer: Option<Issuer<'static, KeyPair>> = None;
        for (at, cn) in names.iter().chain(&["GH100 A01 GSP FMC LF"]).enumerate() {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
            let p = params(cn, at as u8 + 1, at < names.len());
            let cert = match &issuer {
                None => p.self_signed(&key).unwrap(),
                Some(issuer) => p.signed_by(&key, issuer).unwrap(),
            };
            ders.push(cert.der().to_vec());
            let copy = KeyPair::from_pem(&key.serialize_pem()).unwrap();
            issuer = Some(Issuer::new(p, copy));
            keys.push(key);
        }
        ders.reverse();
        keys.reverse();
        Self { ders, keys }
    }

    /// A response for covered certificate `at` (1: BROM, 2: ICA, 3:
    /// Identity) with `status`, valid for a day from an hour before `FRESH`.
    fn response(&self, at: usize, status: Status) -> Vec<u8> {
        use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, EcdsaKeyPair};
        let this_update = FRESH - time::Duration::hours(1);
        let sha384 =
            der(0x30, &[der(0x06, &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02]), vec![0x05, 0x00]].concat());
        let fields = requested_cert_id(&ocsp::request(&self.ders[at], &self.ders[at + 1]).unwrap());
        let cert_id = der(0x30, &[sha384, fields].concat());
        let status = match status {
            Status::Good => vec![0x80, 0x00],
            Status::Revoked => der(0xA1, &generalized_time(datetime!(2025-06-01 00:00 UTC))),
            Status::Unknown => vec![0x82, 0x00],
        };
        let next_update = der(0xA0, &generalized_time(this_update + time::Duration::days(1)));
        let single = der(0x30, &[cert_id, status, generalized_time(this_update), next_update].concat());
        let (_, issuer) = x509_parser::parse_x509_certificate(&self.ders[at + 1]).unwrap();
        let responder = der(0xA1, issuer.subject().as_raw());
        let tbs = der(0x30, &[responder, generalized_time(this_update), der(0x30, &single)].concat());
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &self.keys[at + 1].serialize_der()).unwrap();
        let signature = key.sign(&aws_lc_rs::rand::SystemRandom::new(), &tbs).unwrap();
        let algorithm = der(0x30, &der(0x06, &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x03]));
        let bits = der(0x03, &[&[0u8][..], signature.as_ref()].concat());
        let basic = der(0x30, &[tbs, algorithm, bits].concat());
        let basic_oid = der(0x06, &[0x2B, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01]);
        let bytes = der(0xA0, &der(0x30, &[basic_oid, der(0x04, &basic)].concat()));
        der(0x30, &[vec![0x0A, 0x01, 0x00], bytes].concat())
    }
}

/// Authentic, fresh answers that are not `good` are cached until their
/// nextUpdate too: a revoked device does not make each release ask the
/// responder again, and the caller's check refuses it from the cache as
/// it did from the responder.
#[tokio::test]
async fn revoked_and_unknown_answers_are_cached_until_next_update_and_still_refuse() {
    let chain = TestChain::new();
    let statuses = [Status::Revoked, Status::Unknown, Status::Good];
    let responses: Vec<Vec<u8>> = statuses.iter().enumerate().map(|(i, s)| chain.response(i + 1, *s)).collect();
    // What each answer says, as the pure check reads it.
    for (i, response) in responses.iter().enumerate() {
        let answer = ocsp::verify_ocsp_answer(response, &chain.ders[i + 1], &chain.ders[i + 2], FRESH).unwrap();
        assert_eq!(answer.next_update, FRESH + time::Duration::hours(23));
        match statuses[i] {
            Status::Revoked => assert!(matches!(answer.status, Err(OcspError::Revoked { reason: None, .. }))),
            Status::Unknown => assert_eq!(answer.status, Err(OcspError::Unknown)),
            Status::Good => assert!(answer.status.is_ok()),
        }
    }

    let responder = start_responder_with(Mode::Genuine, responses.clone()).await;
    let fetcher = fetcher(&responder, OcspFetch::Require);
    let fetched = fetcher.responses(&chain.ders, FRESH).await;
    assert_eq!(fetched, responses);
    assert_eq!((responder.requests.load(Ordering::SeqCst), fetcher.cached()), (3, 3));
    let refused = ocsp::verify_chain_ocsp(&chain.ders, &fetched, FRESH).unwrap_err();
    assert!(matches!(refused, OcspError::Revoked { .. }), "{refused}");
    // Unknown alone refuses as well.
    let unknown = [responses[1].clone(), responses[2].clone(), chain.response(1, Status::Good)];
    assert_eq!(ocsp::verify_chain_ocsp(&chain.ders, &unknown, FRESH), Err(OcspError::Unknown));

    // From the cache while fresh: the responder is not asked again, and the
    // outcome is the same.
    let later = FRESH + time::Duration::hours(22);
    let cached = fetcher.responses(&chain.ders, later).await;
    assert_eq!(cached, fetched);
    assert_eq!(responder.requests.load(Ordering::SeqCst), 3);
    assert_eq!(ocsp::verify_chain_ocsp(&chain.ders, &cached, later), Err(refused));

    // Past nextUpdate the cache is not used: the responder is asked again
    // (its answers, stale by then, are not kept).
    let stale = FRESH + time::Duration::days(2);
    assert!(fetcher.responses(&chain.ders, stale).await.is_empty());
    assert!(responder.requests.load(Ordering::SeqCst) > 3);
}

#[test]
fn requests_name_the_certificates_the_genuine_responses_answer() {
    let ders: Vec<Vec<u8>> =
        x509_parser::pem::Pem::iter_from_buffer(&chain_pem()).map(|p| p.unwrap().contents).collect();
    let responses = genuine_responses();
    for ((target, issuer), response) in ocsp::covered(&ders).zip(&responses) {
        let request = ocsp::request(target, issuer).unwrap();
        let cert_id = requested_cert_id(&request);
        assert!(response.windows(cert_id.len()).any(|w| w == cert_id.as_slice()));
        assert!(ocsp::verify_ocsp_response(response, target, issuer, FRESH).is_ok());
    }
    // NVIDIA's intermediate names its responder (over http; the fetcher asks over https).
    assert_eq!(ocsp::responder_url(&ders[2]).as_deref(), Some("http://ocsp.ndis.nvidia.com"));
    assert_eq!(ocsp::responder_url(&ders[1]), None, "the device identity certificate names none");
    assert_eq!(ocsp::responder_url(&ders[4]), None);
    assert!(matches!(ocsp::request(b"junk", &ders[2]), Err(OcspError::Malformed(_))));
}
