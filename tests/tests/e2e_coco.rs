//! End-to-end: the CoCo KBS protocol (`/kbs/v0`, version 0.4.0) over real
//! HTTPS against a broker started in-process, with a client written from the
//! protocol document: RCAR handshake, evidence from the simulated SNP TEE in
//! the CoCo JSON shape bound to the JCS runtime data, resource GET, JWE
//! decryption with the guest's EC P-256 or RSA key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::sync::Arc;

use attester_client::client::{ClientConfig, KbsClient};
use attester_client::simulated::{
    ARK_GUID, ASK_GUID, Generation, SimulatedGpus, SimulatedSnp, SimulatedTdx, VCEK_GUID, decode_cert_table,
};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use aws_lc_rs::rsa::{KeySize, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kbs_e2e::coco::{jcs, report_data as coco_report_data};
use kbs_proto::v1::PutSecretRequest;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha384};
use tonic::Request;

#[path = "support/app.rs"]
mod app;
#[path = "support/bao.rs"]
mod bao;
#[path = "support/otlp.rs"]
mod otlp;

use app::{Handshake, Options, TestApp};

/// A dev-mode broker with the CoCo front end.
fn coco() -> Options {
    Options { coco: true, ..Default::default() }
}

const MEASUREMENT: [u8; 48] = [0x5a; 48];
const OTHER_MEASUREMENT: [u8; 48] = [0x77; 48];
const MRTD: [u8; 48] = [0x7d; 48];
const RESOURCE: &str = "default/model/key";

impl TestApp {
    async fn put(&self, name: &str, value: &[u8], allowed: &[[u8; 48]]) -> u64 {
        let mut req = Request::new(PutSecretRequest {
            name: name.into(),
            value: value.to_vec(),
            allowed_measurements: allowed.iter().map(hex::encode).collect(),
            ..Default::default()
        });
        req.metadata_mut().insert("authorization", format!("Bearer {}", self.token).parse().unwrap());
        self.admin().await.put_secret(req).await.unwrap().into_inner().version
    }
}

// ---------------------------------------------------------------------------
// The guest side, from the protocol document.

/// The guest's ephemeral key pair.
enum GuestKey {
    Ec(PrivateKey),
    Rsa(PrivateDecryptingKey),
}

impl GuestKey {
    fn ec() -> Self {
        Self::Ec(PrivateKey::generate(&ECDH_P256).unwrap())
    }

    fn rsa() -> Self {
        Self::Rsa(PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap())
    }

    fn jwk(&self) -> Value {
        self.jwk_with_alg(None)
    }

    fn jwk_with_alg(&self, alg: Option<&str>) -> Value {
        match self {
            Self::Ec(sk) => {
                let pk = sk.compute_public_key().unwrap();
                json!({
                    "kty": "EC", "crv": "P-256", "alg": alg.unwrap_or("ECDH-ES+A256KW"),
                    "x": URL_SAFE_NO_PAD.encode(&pk.as_ref()[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&pk.as_ref()[33..65]),
                })
            }
            Self::Rsa(sk) => {
                use x509_parser::prelude::FromDer;
                let der = sk.public_key().as_der().unwrap();
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref()).unwrap();
                let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else { panic!() };
                json!({
                    "kty": "RSA", "alg": alg.unwrap_or("RSA-OAEP-256"),
                    "n": URL_SAFE_NO_PAD.encode(rsa.modulus), "e": URL_SAFE_NO_PAD.encode(rsa.exponent),
                })
            }
        }
    }

    /// Opens a flattened-JSON JWE (RFC 7516) addressed to this key.
    fn decrypt(&self, jwe: &Value) -> Vec<u8> {
        let field = |name: &str| URL_SAFE_NO_PAD.decode(jwe[name].as_str().unwrap()).unwrap();
        let protected_b64 = jwe["protected"].as_str().unwrap();
        let header: Value = serde_json::from_slice(&field("protected")).unwrap();
        assert_eq!(header["enc"], "A256GCM");
        let cek = match self {
            Self::Ec(sk) => {
                assert_eq!(header["alg"], "ECDH-ES+A256KW");
                assert_eq!(header["epk"]["crv"], "P-256");
                let mut epk = vec![4u8];
                epk.extend(URL_SAFE_NO_PAD.decode(header["epk"]["x"].as_str().unwrap()).unwrap());
                epk.extend(URL_SAFE_NO_PAD.decode(header["epk"]["y"].as_str().unwrap()).unwrap());
                // RFC 7518 §4.6.2: Concat KDF, SHA-256, AlgorithmID = the alg,
                // empty PartyUInfo/PartyVInfo, SuppPubInfo = 256.
                let kek: Vec<u8> = agreement::agree(sk, UnparsedPublicKey::new(&ECDH_P256, &epk), (), |z| {
                    let alg = b"ECDH-ES+A256KW";
                    let mut h = sha2::Sha256::new();
                    h.update([0, 0, 0, 1]);
                    h.update(z);
                    h.update((alg.len() as u32).to_be_bytes());
                    h.update(alg);
                    h.update([0u8; 8]);
                    h.update(256u32.to_be_bytes());
                    Ok(h.finalize().to_vec())
                })
                .unwrap();
                let mut cek = vec![0u8; 32];
                AesKek::new(&AES_256, &kek).unwrap().unwrap(&field("encrypted_key"), &mut cek).unwrap();
                cek
            }
            Self::Rsa(sk) => {
                assert_eq!(header["alg"], "RSA-OAEP-256");
                let oaep = OaepPrivateDecryptingKey::new(sk.clone()).unwrap();
                let mut out = vec![0u8; oaep.min_output_size()];
                oaep.decrypt(&OAEP_SHA256_MGF1SHA256, &field("encrypted_key"), &mut out, None).unwrap().to_vec()
            }
        };
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).unwrap());
        let mut buf = field("ciphertext");
        buf.extend(field("tag"));
        let iv: [u8; 12] = field("iv").try_into().unwrap();
        key.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(protected_b64.as_bytes()), &mut buf)
            .unwrap()
            .to_vec()
    }
}

/// The SNP evidence as the guest attester serializes it: the report as its
/// fields (SEV-SNP ABI, ATTESTATION_REPORT), the certificates as typed entries.
fn snp_evidence(sim: &SimulatedSnp, report_data: &[u8; 64]) -> Value {
    let r = sim.report(report_data).unwrap();
    let u32_at = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().unwrap());
    let bytes = |o: usize, n: usize| r[o..o + n].to_vec();
    let version = u32_at(0);
    let turin = version >= 3 && r[0x188] == 0x1a;
    let tcb = |o: usize| {
        if turin {
            json!({"fmc": r[o], "bootloader": r[o + 1], "tee": r[o + 2], "snp": r[o + 3], "microcode": r[o + 7]})
        } else {
            json!({"fmc": null, "bootloader": r[o], "tee": r[o + 1], "snp": r[o + 6], "microcode": r[o + 7]})
        }
    };
    let opt = |present: bool, v: Value| if present { v } else { Value::Null };
    let report = json!({
        "version": version, "guest_svn": u32_at(4), "policy": u64_at(8),
        "family_id": bytes(0x10, 16), "image_id": bytes(0x20, 16), "vmpl": u32_at(0x30), "sig_algo": u32_at(0x34),
        "current_tcb": tcb(0x38), "plat_info": u64_at(0x40), "key_info": u32_at(0x48),
        "report_data": bytes(0x50, 64), "measurement": bytes(0x90, 48), "host_data": bytes(0xC0, 32),
        "id_key_digest": bytes(0xE0, 48), "author_key_digest": bytes(0x110, 48),
        "report_id": bytes(0x140, 32), "report_id_ma": bytes(0x160, 32), "reported_tcb": tcb(0x180),
        "cpuid_fam_id": opt(version >= 3, json!(r[0x188])),
        "cpuid_mod_id": opt(version >= 3, json!(r[0x189])),
        "cpuid_step": opt(version >= 3, json!(r[0x18A])),
        "chip_id": bytes(0x1A0, 64), "committed_tcb": tcb(0x1E0),
        "current": {"build": r[0x1E8], "minor": r[0x1E9], "major": r[0x1EA]},
        "committed": {"build": r[0x1EC], "minor": r[0x1ED], "major": r[0x1EE]},
        "launch_tcb": tcb(0x1F0),
        "launch_mit_vector": opt(version >= 5, json!(u64_at(0x1F8))),
        "current_mit_vector": opt(version >= 5, json!(u64_at(0x200))),
        "signature": {"r": bytes(0x2A0, 72), "s": bytes(0x2E8, 72)},
    });
    let certs: Vec<Value> = decode_cert_table(&sim.cert_table().unwrap())
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let kind = match e.guid {
                g if g == VCEK_GUID => "VCEK",
                g if g == ASK_GUID => "ASK",
                g if g == ARK_GUID => "ARK",
                _ => "Empty",
            };
            json!({"cert_type": kind, "data": e.data})
        })
        .collect();
    json!({"attestation_report": report, "cert_chain": certs})
}

/// One CoCo session: the HTTP client and the cookie jar of one guest.
struct Session<'a> {
    app: &'a TestApp,
    http: reqwest::Client,
    cookie: Option<String>,
}

/// How to break one step of a handshake.
#[derive(Default)]
struct Tamper {
    /// Send this version instead of 0.4.0.
    version: Option<&'static str>,
    /// Bind the evidence to this nonce instead of the challenge's.
    bind_nonce: Option<String>,
    /// Send this nonce in runtime-data.
    send_nonce: Option<String>,
    /// Bind the evidence to this JWK instead of the one sent.
    bind_key: Option<Value>,
    /// Send this JWK instead of the guest's.
    send_key: Option<Value>,
    /// The `tee` to claim.
    tee: Option<&'static str>,
    /// Send this evidence instead.
    evidence: Option<Value>,
    /// Quote with this simulated TDX instead of the SNP one (`tee` "tdx").
    tdx: Option<SimulatedTdx>,
    /// Send this init-data document (TOML).
    init_data: Option<String>,
    /// Present this many simulated GPUs in the additional evidence.
    gpus: usize,
    /// Make the GPU evidence for this JWK instead of the one sent.
    gpu_key: Option<Value>,
    /// Bind the GPUs but send no additional evidence.
    strip_gpus: bool,
    /// This simulated GPU runs firmware its RIMs do not describe.
    wrong_firmware: Option<usize>,
}

#[derive(Debug)]
struct Problem {
    status: StatusCode,
    detail: String,
}

async fn problem(resp: reqwest::Response) -> Problem {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Problem { status, detail: body["detail"].as_str().unwrap_or("").to_owned() }
}

#[track_caller]
fn assert_problem<T: std::fmt::Debug>(r: Result<T, Problem>, status: StatusCode, detail: &str) {
    let p = r.expect_err("the broker must refuse");
    assert_eq!((p.status, p.detail.as_str()), (status, detail), "{p:?}");
}

impl<'a> Session<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self { app, http: app.http(), cookie: None }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/kbs/v0/{path}", self.app.coco_url)
    }

    fn keep_cookie(&mut self, resp: &reqwest::Response) {
        for v in resp.headers().get_all(reqwest::header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
            assert!(attrs.contains("Secure") && attrs.contains("HttpOnly"), "{v}");
            if let Some(value) = pair.strip_prefix("kbs-session-id=") {
                self.cookie = Some(value.to_owned());
            }
        }
    }

    fn with_cookie(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.cookie {
            Some(c) => req.header(reqwest::header::COOKIE, format!("kbs-session-id={c}")),
            None => req,
        }
    }

    /// `POST /auth`: returns the nonce string.
    async fn auth(&mut self, tee: &str, version: &str) -> Result<(String, Value), Problem> {
        let body = json!({
            "version": version, "tee": tee,
            "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]},
        });
        let resp = self.http.post(self.url("auth")).json(&body).send().await.unwrap();
        if resp.status() != StatusCode::OK {
            return Err(problem(resp).await);
        }
        self.keep_cookie(&resp);
        let challenge: Value = resp.json().await.unwrap();
        let nonce = challenge["nonce"].as_str().unwrap().to_owned();
        assert_eq!(STANDARD.decode(&nonce).unwrap().len(), 32, "32 random bytes, padded standard base64");
        Ok((nonce, challenge["extra-params"].clone()))
    }

    /// Runs auth + attest for `sim` with `key`; returns the token.
    async fn attest(&mut self, sim: &SimulatedSnp, key: &GuestKey, t: Tamper) -> Result<String, Problem> {
        let tee = t.tee.unwrap_or("snp");
        let (nonce, extra) = self.auth(tee, t.version.unwrap_or("0.4.0")).await?;
        assert_eq!(extra["selected-hash-algorithm"], "sha384");
        let jwk = t.send_key.clone().unwrap_or_else(|| key.jwk());
        // report_data = SHA-384(JCS({"additional-evidence", "nonce", "tee-pubkey"})), zero-padded.
        let bound_key = t.bind_key.clone().unwrap_or_else(|| jwk.clone());
        // GPUs (guest-components' shape): each signs the first 32 bytes of
        // SHA-384(JCS({"nonce", "tee-pubkey"})).
        let additional = if t.gpus == 0 {
            String::new()
        } else {
            use attester_client::evidence::GpuEvidenceSource as _;
            let gpu_key = t.gpu_key.clone().unwrap_or_else(|| jwk.clone());
            let digest = Sha384::digest(jcs(&json!({"nonce": nonce, "tee-pubkey": gpu_key})).unwrap());
            let gpu_nonce: [u8; 32] = digest[..32].try_into().unwrap();
            let mut simulated = SimulatedGpus::new(t.gpus).unwrap();
            if let Some(index) = t.wrong_firmware {
                simulated = simulated.with_wrong_firmware(index);
            }
            let devices = simulated.gpu_evidence(&gpu_nonce).unwrap();
            let list: Vec<Value> = devices
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    json!({"arch": "HOPPER", "uuid": format!("GPU-{i}"), "evidence": STANDARD.encode(&d.report),
                           "certificate": STANDARD.encode(&d.cert_chain)})
                })
                .collect();
            json!({"nvidia": {"device_evidence_list": list}}).to_string()
        };
        let bound_nonce = t.bind_nonce.clone().unwrap_or_else(|| nonce.clone());
        let report_data = coco_report_data(&bound_nonce, &bound_key, &additional).unwrap();
        let evidence = match (&t.evidence, tee) {
            (Some(e), _) => e.clone(),
            (None, "sample") => json!({"svn": "1", "report_data": STANDARD.encode(&report_data[..48])}),
            (None, "tdx") => {
                let quote = t.tdx.as_ref().unwrap().quote(&report_data).unwrap();
                json!({"quote": STANDARD.encode(quote), "cc_eventlog": null})
            }
            (None, _) => snp_evidence(sim, &report_data),
        };
        let mut body = json!({
            "runtime-data": {"nonce": t.send_nonce.unwrap_or(nonce), "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": evidence,
                             "additional_evidence": if t.strip_gpus { String::new() } else { additional }},
        });
        if let Some(init_data) = t.init_data {
            body["init-data"] = json!({"format": "toml", "body": init_data});
        }
        let resp = self.with_cookie(self.http.post(self.url("attest")).json(&body)).send().await.unwrap();
        if resp.status() != StatusCode::OK {
            return Err(problem(resp).await);
        }
        self.keep_cookie(&resp);
        let token = resp.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
        assert_eq!(self.cookie.as_deref(), Some(token.as_str()), "the cookie now carries the token");
        Ok(token)
    }

    /// `GET /resource/<name>` with the cookie, or with a bearer token.
    async fn get(&self, name: &str, bearer: Option<&str>) -> Result<Value, Problem> {
        let req = self.http.get(self.url(&format!("resource/{name}")));
        let req = match bearer {
            Some(t) => req.bearer_auth(t),
            None => self.with_cookie(req),
        };
        let resp = req.send().await.unwrap();
        if resp.status() != StatusCode::OK {
            return Err(problem(resp).await);
        }
        Ok(resp.json().await.unwrap())
    }
}

fn guest() -> SimulatedSnp {
    SimulatedSnp::new(Generation::Genoa).measurement(MEASUREMENT)
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn snp_guest_gets_its_resource_with_ec_and_rsa_keys_by_cookie_and_bearer() {
    let app = TestApp::start_with(coco()).await;
    let value: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    app.put(RESOURCE, &value, &[MEASUREMENT]).await;
    for key in [GuestKey::ec(), GuestKey::rsa()] {
        for generation in [Generation::Milan, Generation::Genoa, Generation::Turin] {
            let sim = SimulatedSnp::new(generation).measurement(MEASUREMENT);
            let mut s = Session::new(&app);
            let token = s.attest(&sim, &key, Tamper::default()).await.unwrap();
            // The stock attestation-agent sends the cookie alone.
            assert_eq!(key.decrypt(&s.get(RESOURCE, None).await.unwrap()), value, "{generation:?}");
            // confidential-data-hub's token path sends the bearer token alone.
            let fresh = Session::new(&app);
            assert_eq!(key.decrypt(&fresh.get(RESOURCE, Some(&token)).await.unwrap()), value);
        }
    }

    // The token is an ES256 JWT carrying the claims and the guest key.
    let key = GuestKey::ec();
    let token = Session::new(&app).attest(&guest(), &key, Tamper::default()).await.unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "ES256");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["tee-pubkey"], key.jwk());
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
    assert_eq!(claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["measurement"], hex::encode(MEASUREMENT));
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 300);
    // A key sent with members beside the key's own (they are bound to the
    // evidence like the rest) is carried in the token as its key alone.
    let mut padded = key.jwk();
    padded["kid"] = json!("guest");
    padded["x-padding"] = json!("p".repeat(3000));
    let mut s = Session::new(&app);
    let tamper = Tamper { send_key: Some(padded), ..Tamper::default() };
    let token = s.attest(&guest(), &key, tamper).await.unwrap();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert_eq!(claims["tee-pubkey"], key.jwk());
    assert_eq!(key.decrypt(&s.get(RESOURCE, None).await.unwrap()), value);

    // The same secret, through the gRPC protocol.
    let config = ClientConfig::new(app.guest_url.clone(), app.ca.clone());
    let mut client = KbsClient::connect(&config).await.unwrap();
    let secrets = client.fetch(Arc::new(guest()), &[RESOURCE.to_owned()]).await.unwrap();
    assert_eq!(secrets[0].value.to_vec(), value);

    // Every decision is audited, chained.
    let log = app.audit_log();
    assert!(log.contains("\"action\":\"coco.attest\""), "{log}");
    assert!(log.contains("\"action\":\"coco.resource\""), "{log}");
    assert!(!log.contains(&hex::encode(&value[..32])));
    kbs::audit::verify_lines(log.as_bytes()).unwrap();
}

#[tokio::test]
async fn guests_with_gpus_attest_with_the_trustee_binding() {
    const GPU_RESOURCE: &str = "default/model/gpu-key";
    let app = TestApp::start_with(coco()).await;
    let mut req = Request::new(PutSecretRequest {
        name: GPU_RESOURCE.into(),
        value: b"needs eight GPUs".to_vec(),
        allowed_measurements: vec![hex::encode(MEASUREMENT)],
        labels: [("gpus".to_owned(), "8".to_owned())].into(),
        ..Default::default()
    });
    req.metadata_mut().insert("authorization", format!("Bearer {}", app.token).parse().unwrap());
    app.admin().await.put_secret(req).await.unwrap();

    for gpus in [1, 8] {
        let key = GuestKey::ec();
        let mut s = Session::new(&app);
        let token = s.attest(&guest(), &key, Tamper { gpus, ..Default::default() }).await.unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
        let gpu = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["gpu"];
        assert_eq!(gpu["count"], gpus, "{gpu}");
        assert_eq!(gpu["devices"][0]["evidence"]["nonce"], "match");
        assert_eq!(gpu["devices"][0]["measurements"], json!([]), "the token leaves measurements out");
        // ... but carries each device's RIM appraisal.
        assert_eq!(gpu["measurements"], "match", "{gpu}");
        assert_eq!(gpu["devices"][0]["rim"]["result"], "match");
        assert_eq!(gpu["devices"][0]["rim"]["driver"]["version"], "570.124.06");
        // One EAR appraisal per GPU, in evidence order, beside the CPU's.
        let submods = claims["submods"].as_object().unwrap();
        assert_eq!(submods.len(), 1 + gpus, "{:?}", submods.keys());
        for (i, device) in gpu["devices"].as_array().unwrap().iter().enumerate() {
            let appraisal = &submods[&format!("gpu{i}")];
            assert_eq!(appraisal["ear.status"], "affirming");
            assert_eq!(appraisal["ear.trustworthiness-vector"], json!({"instance-identity": 2, "hardware": 2}));
            let evidence = &appraisal["ear.veraison.annotated-evidence"];
            assert_eq!(evidence["device_key_sha256"], device["device_key_sha256"]);
            assert_eq!(evidence["revocation"], "not_checked");
        }
        let got = s.get(GPU_RESOURCE, None).await;
        if gpus == 8 {
            assert_eq!(key.decrypt(&got.unwrap()), b"needs eight GPUs");
        } else {
            assert_problem(got, StatusCode::FORBIDDEN, "gpu_count_mismatch");
        }
    }
    // No GPUs at all.
    let mut s = Session::new(&app);
    s.attest(&guest(), &GuestKey::ec(), Tamper::default()).await.unwrap();
    assert_problem(s.get(GPU_RESOURCE, None).await, StatusCode::FORBIDDEN, "gpu_count_mismatch");
    // Eight GPUs, one on firmware its RIMs do not describe: attested (the
    // token says so), refused the secret that needs GPUs.
    let mut s = Session::new(&app);
    let wrong = Tamper { gpus: 8, wrong_firmware: Some(3), ..Default::default() };
    let token = s.attest(&guest(), &GuestKey::ec(), wrong).await.unwrap();
    let claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    let gpu = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["gpu"];
    assert_eq!((&gpu["measurements"], &gpu["devices"][3]["rim"]["mismatched"]), (&json!("mismatch"), &json!([9])));
    assert_problem(s.get(GPU_RESOURCE, None).await, StatusCode::FORBIDDEN, "gpu_measurement_mismatch");
    // GPU evidence made for another key.
    let other = GuestKey::ec().jwk();
    let relayed = Tamper { gpus: 1, gpu_key: Some(other), ..Default::default() };
    let refused = Session::new(&app).attest(&guest(), &GuestKey::ec(), relayed).await;
    assert_problem(refused, StatusCode::FORBIDDEN, "gpu_evidence_invalid");
    // GPUs the CPU evidence committed to, stripped.
    let stripped = Tamper { gpus: 2, strip_gpus: true, ..Default::default() };
    let refused = Session::new(&app).attest(&guest(), &GuestKey::ec(), stripped).await;
    assert_problem(refused, StatusCode::FORBIDDEN, "report_data_mismatch");
}

#[tokio::test]
async fn every_refusal_has_its_status_and_reason() {
    let app = TestApp::start_with(coco()).await;
    app.put(RESOURCE, b"k", &[MEASUREMENT]).await;
    app.put("default/model/other", b"o", &[OTHER_MEASUREMENT]).await;
    let key = GuestKey::ec();
    let (bad, unauth, forbidden) = (StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN);

    // `/auth` refusals are 401, as the protocol document says: a protocol
    // version other than 0.4.0, a TEE this front end does not speak.
    let r = Session::new(&app).attest(&guest(), &key, Tamper { version: Some("0.1.0"), ..Default::default() }).await;
    assert_problem(r, unauth, "invalid_request");
    let r = Session::new(&app).attest(&guest(), &key, Tamper { tee: Some("sgx"), ..Default::default() }).await;
    assert_problem(r, unauth, "unsupported_tee");
    // RSA1_5 (and unknown algorithms) are refused before any evidence work.
    let rsa = GuestKey::rsa();
    let t = Tamper { send_key: Some(rsa.jwk_with_alg(Some("RSA1_5"))), ..Default::default() };
    assert_problem(Session::new(&app).attest(&guest(), &rsa, t).await, bad, "invalid_request");
    let t = Tamper { send_key: Some(json!({"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"})), ..Default::default() };
    assert_problem(Session::new(&app).attest(&guest(), &key, t).await, bad, "invalid_request");
    // Malformed evidence.
    let t = Tamper { evidence: Some(json!({"attestation_report": {"version": 2}})), ..Default::default() };
    assert_problem(Session::new(&app).attest(&guest(), &key, t).await, bad, "evidence_malformed");

    // A nonce other than the session's.
    let t = Tamper { send_nonce: Some(STANDARD.encode([1u8; 32])), ..Default::default() };
    assert_problem(Session::new(&app).attest(&guest(), &key, t).await, unauth, "challenge_mismatch");
    // Evidence bound to another nonce, or to another key than the one sent.
    let t = Tamper { bind_nonce: Some(STANDARD.encode([1u8; 32])), ..Default::default() };
    assert_problem(Session::new(&app).attest(&guest(), &key, t).await, forbidden, "report_data_mismatch");
    let t = Tamper { bind_key: Some(GuestKey::ec().jwk()), ..Default::default() };
    assert_problem(Session::new(&app).attest(&guest(), &key, t).await, forbidden, "report_data_mismatch");
    // Hardware evidence that fails verification.
    let r = Session::new(&app).attest(&guest().foreign(), &key, Tamper::default()).await;
    assert_problem(r, forbidden, "untrusted_root");

    // Attest without the session cookie, or with a forged one.
    let body = json!({"runtime-data": {"nonce": "x", "tee-pubkey": key.jwk()},
                      "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""}});
    let s = Session::new(&app);
    let resp = s.http.post(s.url("attest")).json(&body).send().await.unwrap();
    assert_problem(Err::<(), _>(problem(resp).await), unauth, "unauthenticated");
    let resp = s
        .http
        .post(s.url("attest"))
        .header("cookie", format!("kbs-session-id={}", URL_SAFE_NO_PAD.encode([1u8; 80])))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_problem(Err::<(), _>(problem(resp).await), unauth, "challenge_invalid");
    // Oversized body.
    let big = json!({"runtime-data": {"nonce": "x".repeat(2 << 20), "tee-pubkey": {}}});
    let resp = s.http.post(s.url("attest")).json(&big).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // Resource GET: no token, a bad token, the pre-attestation cookie.
    assert_problem(Session::new(&app).get(RESOURCE, None).await, unauth, "unauthenticated");
    assert_problem(Session::new(&app).get(RESOURCE, Some("a.b.c")).await, unauth, "unauthenticated");
    let mut s = Session::new(&app);
    s.auth("snp", "0.4.0").await.unwrap();
    assert_problem(s.get(RESOURCE, None).await, unauth, "unauthenticated");
    // Missing resources are reported only to attested guests (401 above,
    // 404 below); policy refusals are 403.
    let mut s = Session::new(&app);
    let token = s.attest(&guest(), &key, Tamper::default()).await.unwrap();
    assert_problem(s.get("default/model/missing", None).await, StatusCode::NOT_FOUND, "secret_not_found");
    assert_problem(s.get("default/model/other", None).await, forbidden, "measurement_not_allowed");
    assert_problem(s.get("default/model", None).await, bad, "invalid_request");
    // A token whose payload was altered.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    claims["tee-pubkey"] = GuestKey::ec().jwk();
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap());
    assert_problem(Session::new(&app).get(RESOURCE, Some(&parts.join("."))).await, unauth, "unauthenticated");
    // A token from another broker.
    let other = TestApp::start_with(coco()).await;
    let foreign = Session::new(&other).attest(&guest(), &key, Tamper::default()).await.unwrap();
    assert_problem(Session::new(&app).get(RESOURCE, Some(&foreign)).await, unauth, "unauthenticated");
    // An expired token, by bearer or by cookie.
    assert!(s.get(RESOURCE, Some(&token)).await.is_ok());
    app.advance(301);
    assert_problem(s.get(RESOURCE, Some(&token)).await, unauth, "unauthenticated");
    assert_problem(s.get(RESOURCE, None).await, unauth, "unauthenticated");
    // The stock client's answer to a 401: a new handshake, which works.
    let token = s.attest(&guest(), &key, Tamper::default()).await.unwrap();
    assert!(s.get(RESOURCE, Some(&token)).await.is_ok());

    let log = app.audit_log();
    assert!(log.contains("\"reason\":\"report_data_mismatch\""), "{log}");
    assert!(log.contains("\"reason\":\"measurement_not_allowed\""), "{log}");
    assert!(log.contains("\"reason\":\"secret_not_found\""), "{log}");
    // Refusals before any session or token are audited too: `/auth`
    // refusals, resource requests without a token or with a bad one.
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let refused = |action: &str, reason: &str| {
        records.iter().filter(|r| r["action"] == action && r["decision"] == "deny" && r["reason"] == reason).count()
    };
    assert_eq!(refused("coco.auth", "invalid_request"), 1, "{log}");
    assert_eq!(refused("coco.auth", "unsupported_tee"), 1, "{log}");
    assert_eq!(refused("coco.resource", "unauthenticated"), 7, "{log}");
    kbs::audit::verify_lines(log.as_bytes()).unwrap();
}

/// The broker remembers a token after its first GET, but every GET is
/// still decided: the secret's current version and allow-list, an audit
/// record each; and the remembered token is refused once it has expired.
#[tokio::test]
async fn every_get_with_a_remembered_token_is_decided_and_audited() {
    let app = TestApp::start_with(coco()).await;
    app.put(RESOURCE, b"first", &[MEASUREMENT]).await;
    let key = GuestKey::ec();
    let mut s = Session::new(&app);
    let token = s.attest(&guest(), &key, Tamper::default()).await.unwrap();
    for _ in 0..3 {
        assert_eq!(key.decrypt(&s.get(RESOURCE, Some(&token)).await.unwrap()), b"first");
    }
    app.put(RESOURCE, b"second", &[MEASUREMENT]).await;
    assert_eq!(key.decrypt(&s.get(RESOURCE, Some(&token)).await.unwrap()), b"second");
    // The next version allows another measurement only: refused.
    app.put(RESOURCE, b"third", &[OTHER_MEASUREMENT]).await;
    assert_problem(s.get(RESOURCE, Some(&token)).await, StatusCode::FORBIDDEN, "measurement_not_allowed");
    app.put(RESOURCE, b"fourth", &[MEASUREMENT]).await;
    app.advance(299);
    assert_eq!(key.decrypt(&s.get(RESOURCE, None).await.unwrap()), b"fourth");
    app.advance(1);
    assert_problem(s.get(RESOURCE, Some(&token)).await, StatusCode::UNAUTHORIZED, "unauthenticated");
    let log = app.audit_log();
    let records: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let gets =
        |decision: &str| records.iter().filter(|r| r["action"] == "coco.resource" && r["decision"] == decision).count();
    assert_eq!((gets("allow"), gets("deny")), (5, 2), "{log}");
    // The claims the remembered token keeps prepared are the ones attested:
    // every decided GET records the attestation's id, measurement and
    // claims digest.
    let attested = records.iter().find(|r| r["action"] == "coco.attest").unwrap();
    let decided: Vec<&Value> =
        records.iter().filter(|r| r["action"] == "coco.resource" && r["reason"] != "unauthenticated").collect();
    assert_eq!(decided.len(), 6, "{log}");
    for record in decided {
        for field in ["attestation_id", "measurement", "claims_digest"] {
            assert!(attested[field].as_str().is_some_and(|v| !v.is_empty()), "{field}: {attested}");
            assert_eq!(record[field], attested[field], "{field}: {record}");
        }
    }
}

#[tokio::test]
async fn an_expired_session_cookie_is_refused() {
    let app = TestApp::start_with(coco()).await;
    let key = GuestKey::ec();
    let mut s = Session::new(&app);
    let (nonce, _) = s.auth("snp", "0.4.0").await.unwrap();
    app.advance(61);
    let rd = coco_report_data(&nonce, &key.jwk(), "").unwrap();
    let body = json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk()},
        "tee-evidence": {"primary_evidence": snp_evidence(&guest(), &rd), "additional_evidence": ""},
    });
    let resp = s.with_cookie(s.http.post(s.url("attest")).json(&body)).send().await.unwrap();
    assert_problem(Err::<(), _>(problem(resp).await), StatusCode::UNAUTHORIZED, "challenge_expired");
}

#[tokio::test]
async fn a_session_started_at_one_replica_finishes_at_another() {
    let a = TestApp::start_with(coco()).await;
    let b =
        TestApp::start_with(Options { coco: true, keys_from: Some(a.dir.path().to_path_buf()), ..Default::default() })
            .await;
    a.put(RESOURCE, b"shared", &[MEASUREMENT]).await;
    let key = GuestKey::ec();
    // auth at a, attest at b (same challenge key), GET at a (same token key).
    let mut at_a = Session::new(&a);
    let (nonce, _) = at_a.auth("snp", "0.4.0").await.unwrap();
    let mut at_b = Session::new(&b);
    at_b.cookie = at_a.cookie.clone();
    let rd = coco_report_data(&nonce, &key.jwk(), "").unwrap();
    let body = json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": key.jwk()},
        "tee-evidence": {"primary_evidence": snp_evidence(&guest(), &rd), "additional_evidence": ""},
    });
    let resp = at_b.with_cookie(at_b.http.post(at_b.url("attest")).json(&body)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    at_b.keep_cookie(&resp);
    at_a.cookie = at_b.cookie.clone();
    assert_eq!(key.decrypt(&at_a.get(RESOURCE, None).await.unwrap()), b"shared");
    // A replica with other keys refuses both.
    let c = TestApp::start_with(coco()).await;
    c.put(RESOURCE, b"shared", &[MEASUREMENT]).await;
    let mut at_c = Session::new(&c);
    at_c.cookie = at_a.cookie.clone();
    assert_problem(at_c.get(RESOURCE, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn the_sample_tee_works_only_in_insecure_dev_mode() {
    let sample = [0u8; 48];
    let key = GuestKey::ec();
    let dev = TestApp::start_with(coco()).await;
    dev.put(RESOURCE, b"sample-ok", &[sample]).await;
    let mut s = Session::new(&dev);
    s.attest(&guest(), &key, Tamper { tee: Some("sample"), ..Default::default() }).await.unwrap();
    assert_eq!(key.decrypt(&s.get(RESOURCE, None).await.unwrap()), b"sample-ok");
    // Sample evidence bound to another key is still refused.
    let t = Tamper { tee: Some("sample"), bind_key: Some(GuestKey::ec().jwk()), ..Default::default() };
    assert_problem(Session::new(&dev).attest(&guest(), &key, t).await, StatusCode::FORBIDDEN, "report_data_mismatch");

    let prod = TestApp::start_with(Options { production: true, ..coco() }).await;
    let r = Session::new(&prod).attest(&guest(), &key, Tamper { tee: Some("sample"), ..Default::default() }).await;
    assert_problem(r, StatusCode::UNAUTHORIZED, "unsupported_tee");
    // A sample session minted by a dev broker is refused by a production
    // broker even with the same keys: a dev broker's token is no token there.
    let prod2 =
        TestApp::start_with(Options { production: true, keys_from: Some(dev.dir.path().to_path_buf()), ..coco() })
            .await;
    prod2.put(RESOURCE, b"sample-ok", &[sample]).await;
    let mut s2 = Session::new(&prod2);
    s2.cookie = s.cookie.clone();
    assert_problem(s2.get(RESOURCE, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn tdx_guest_gets_its_resource() {
    let app = TestApp::start_with(coco()).await;
    app.put(RESOURCE, b"tdx-key", &[MRTD]).await;
    for (sim, key) in
        [(SimulatedTdx::new().mr_td(MRTD), GuestKey::ec()), (SimulatedTdx::new().mr_td(MRTD).v5(true), GuestKey::rsa())]
    {
        let mut s = Session::new(&app);
        let t = Tamper { tee: Some("tdx"), tdx: Some(sim), ..Default::default() };
        s.attest(&guest(), &key, t).await.unwrap();
        assert_eq!(key.decrypt(&s.get(RESOURCE, None).await.unwrap()), b"tdx-key");
    }
    // A quote bound to another key; a TD with another MRTD.
    let key = GuestKey::ec();
    let t = Tamper {
        tee: Some("tdx"),
        tdx: Some(SimulatedTdx::new().mr_td(MRTD)),
        bind_key: Some(GuestKey::ec().jwk()),
        ..Default::default()
    };
    assert_problem(Session::new(&app).attest(&guest(), &key, t).await, StatusCode::FORBIDDEN, "report_data_mismatch");
    let mut s = Session::new(&app);
    let t = Tamper { tee: Some("tdx"), tdx: Some(SimulatedTdx::new().mr_td([1; 48])), ..Default::default() };
    s.attest(&guest(), &key, t).await.unwrap();
    assert_problem(s.get(RESOURCE, None).await, StatusCode::FORBIDDEN, "measurement_not_allowed");
    assert!(app.audit_log().contains("\"tee\":\"tdx\""));
}

#[tokio::test]
async fn init_data_must_be_what_the_guest_was_launched_with() {
    let app = TestApp::start_with(coco()).await;
    app.put(RESOURCE, b"k", &[MEASUREMENT]).await;
    let init_data = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = 'x'\n".to_owned();
    // SNP HOST_DATA holds the first 32 bytes of the SHA-384 of the document.
    let mut host_data = [0u8; 32];
    host_data.copy_from_slice(&Sha384::digest(init_data.as_bytes())[..32]);
    let key = GuestKey::ec();
    let t = Tamper { init_data: Some(init_data.clone()), ..Default::default() };
    let mut s = Session::new(&app);
    s.attest(&guest().host_data(host_data), &key, t).await.unwrap();
    assert_eq!(key.decrypt(&s.get(RESOURCE, None).await.unwrap()), b"k");
    // Launched with other init-data: refused.
    let t = Tamper { init_data: Some(init_data), ..Default::default() };
    let r = Session::new(&app).attest(&guest().host_data([9; 32]), &key, t).await;
    assert_problem(r, StatusCode::FORBIDDEN, "policy_denied");
    assert!(app.audit_log().contains("init_data_mismatch"));
}

#[test]
fn the_test_client_canonicalizes_like_rfc8785() {
    let v = json!({"tee-pubkey": {"y": "b", "x": "a", "kty": "EC"}, "nonce": "n\"\u{1}", "additional-evidence": ""});
    assert_eq!(
        String::from_utf8(jcs(&v).unwrap()).unwrap(),
        r#"{"additional-evidence":"","nonce":"n\"\u0001","tee-pubkey":{"kty":"EC","x":"a","y":"b"}}"#
    );
}

/// A TLS client of the CoCo listener that trusts the dev CA.
fn tls_connector(app: &TestApp) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&app.ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Reads until the peer closes (EOF or a reset) or `within` passes; returns
/// what was read and whether it closed.
async fn read_until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S, within: std::time::Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

/// No peer can hold the CoCo listener's connections: one address gets at
/// most `max_connections_per_peer` at once (the next is closed at once), a
/// connection that goes silent after its TLS handshake is closed after the
/// idle bound, and a request whose body is trickled in is answered 408
/// at the same bound. Real clients are served afterwards.
#[tokio::test]
async fn idle_slow_and_crowding_peers_cannot_hold_the_coco_listener() {
    use tokio::io::AsyncWriteExt;
    let app = TestApp::start_with(Options {
        coco: true,
        server_extra: "max_connections_per_peer = 3\nidle_timeout_seconds = 2".into(),
        ..Default::default()
    })
    .await;
    let port: u16 = app.coco_url.rsplit(':').next().unwrap().parse().unwrap();
    let connector = tls_connector(&app);
    let tls = || async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap()
    };

    // Three idle TLS connections (HTTP/1.1 and HTTP/2 alike send nothing
    // more): a fourth from the same address is closed at once.
    let mut held = vec![tls().await, tls().await, tls().await];
    let mut fourth = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (_, closed) = read_until_closed(&mut fourth, std::time::Duration::from_millis(1500)).await;
    assert!(closed, "a fourth connection from one peer was kept");

    // The idle ones are closed by the idle bound (2 s), not before 1 s.
    let started = std::time::Instant::now();
    for conn in &mut held {
        let (_, closed) = read_until_closed(conn, std::time::Duration::from_secs(10)).await;
        assert!(closed, "an idle connection stayed open for {:?}", started.elapsed());
    }
    assert!(started.elapsed() >= std::time::Duration::from_secs(1), "closed after {:?}", started.elapsed());
    drop(held);

    // A body trickled a byte every 300 ms: answered 408 at the bound.
    let mut slow = tls().await;
    slow.write_all(b"POST /kbs/v0/auth HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n")
        .await
        .unwrap();
    let trickle = async {
        for _ in 0..30 {
            if slow.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(12), trickle).await.unwrap();
    let (answer, _) = read_until_closed(&mut slow, std::time::Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Real clients still get through.
    let response = app.http().post(format!("{}/kbs/v0/auth", app.coco_url)).body("{}").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A body over the limit gets a readable 413 problem document over HTTP/1.1
/// and HTTP/2, and the client's next request is served.
#[tokio::test]
async fn an_oversized_body_gets_a_readable_413() {
    let app = TestApp::start_with(coco()).await;
    let ca = reqwest::Certificate::from_pem(&app.ca).unwrap();
    let http1 = reqwest::Client::builder().tls_certs_only(vec![ca]).http1_only().build().unwrap();
    for http in [http1, app.http()] {
        let url = format!("{}/kbs/v0/attest", app.coco_url);
        let declared = http.post(&url).body(vec![b' '; 2 << 20]).send().await.unwrap();
        assert_eq!(declared.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let problem: Value = declared.json().await.unwrap();
        assert_eq!(problem["detail"], "evidence_too_large");
        // The client goes on.
        let next = http.post(format!("{}/kbs/v0/auth", app.coco_url)).body("{}").send().await.unwrap();
        assert_eq!(next.status(), StatusCode::UNAUTHORIZED);
    }
}

/// A dev broker that shares its key files with a production one (a copied
/// set-up) cannot mint what the production broker accepts: neither its
/// tokens for guests whose evidence only the dev broker's test roots vouch
/// for, nor its challenges.
#[tokio::test]
async fn tokens_and_challenges_of_a_dev_broker_are_refused_in_production() {
    let key = GuestKey::ec();
    let dev = TestApp::start_with(coco()).await;
    dev.put(RESOURCE, b"dev", &[MEASUREMENT]).await;
    let mut s = Session::new(&dev);
    s.attest(&guest(), &key, Tamper::default()).await.unwrap();
    assert_eq!(key.decrypt(&s.get(RESOURCE, None).await.unwrap()), b"dev");

    let prod =
        TestApp::start_with(Options { production: true, keys_from: Some(dev.dir.path().to_path_buf()), ..coco() })
            .await;
    prod.put(RESOURCE, b"production", &[MEASUREMENT]).await;
    let mut at_prod = Session::new(&prod);
    at_prod.cookie = s.cookie.clone();
    assert_problem(at_prod.get(RESOURCE, None).await, StatusCode::UNAUTHORIZED, "unauthenticated");

    // A gRPC challenge of the dev broker is not one at the production broker.
    let challenge = dev
        .guest()
        .await
        .get_challenge(kbs_proto::v1::GetChallengeRequest {
            tee: kbs_proto::v1::Tee::Snp as i32,
            secret_names: vec![RESOURCE.into()],
        })
        .await
        .unwrap()
        .into_inner();
    let release = kbs_proto::v1::ReleaseSecretsRequest {
        challenge: challenge.challenge,
        evidence: Some(kbs_proto::v1::release_secrets_request::Evidence::Snp(kbs_proto::v1::SnpEvidence {
            report: vec![0; 1184],
            cert_table: Vec::new(),
        })),
        hpke_suite: Some(kbs_proto::SuiteId::X25519_SHA256_AES256GCM.to_wire()),
        hpke_public_key: vec![9; 32],
        secret_names: vec![RESOURCE.into()],
        gpus: Vec::new(),
        want_attestation_token: false,
    };
    let status = prod.guest().await.release_secrets(release).await.unwrap_err();
    assert_eq!(status.metadata().get("kbs-reason").unwrap(), "challenge_invalid", "{status:?}");
}

/// Guest-facing calls past the rate limit are refused before any work:
/// gRPC with RESOURCE_EXHAUSTED, `rate_limited` and `retry-after`; the CoCo
/// front end with 429 and `Retry-After`.
#[tokio::test]
async fn calls_past_the_rate_limit_are_refused_with_a_retry_time() {
    let app = TestApp::start_with(Options { coco: true, rate_limit: Some((5, 1000)), ..Default::default() }).await;
    let mut guest = app.guest().await;
    // A CoCo connection opened while within the rate (a new one past it is
    // closed before its handshake).
    let http = app.http();
    let jwks = http.get(format!("{}/.well-known/jwks.json", app.coco_url)).send().await.unwrap();
    assert_eq!(jwks.status(), StatusCode::OK);
    let ask = || kbs_proto::v1::GetChallengeRequest {
        tee: kbs_proto::v1::Tee::Snp as i32,
        secret_names: vec![RESOURCE.into()],
    };
    let mut refused = None;
    for _ in 0..20 {
        if let Err(status) = guest.get_challenge(ask()).await {
            refused = Some(status);
            break;
        }
    }
    let status = refused.expect("20 challenges at once were all served under a limit of 5 a second");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.metadata().get("kbs-reason").unwrap(), "rate_limited");
    let after: u64 = status.metadata().get("retry-after").unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&after), "{after}");

    // The same peer on the CoCo front end shares its bucket.
    let resp = http.post(format!("{}/kbs/v0/auth", app.coco_url)).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().get(reqwest::header::RETRY_AFTER).is_some());
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["detail"], "rate_limited");

    // After the wait, served again.
    tokio::time::sleep(std::time::Duration::from_secs(after)).await;
    guest.get_challenge(ask()).await.unwrap();
}

/// On the CoCo listener as on the guest listener: a peer over its rate has
/// its new connections closed before the TLS handshake, and one that keeps
/// calling far past its rate is cut off, its open connection no longer
/// read; meanwhile another peer completes a flow, and the first is served
/// again once its cut-off has ended.
#[tokio::test]
async fn a_coco_peer_flooding_past_its_rate_is_cut_off_at_the_connection() {
    let app = TestApp::start_with(Options { coco: true, rate_limit: Some((2, 1000)), ..Default::default() }).await;
    app.put(RESOURCE, b"coco-rate-limited", &[MEASUREMENT]).await;
    let flooder: std::net::IpAddr = [127, 0, 0, 1].into();
    let other: std::net::IpAddr = [127, 0, 0, 2].into();
    assert_eq!(app.handshake(&app.coco_url, flooder).await, Handshake::Completed, "a peer within its rate connects");
    // `/auth` as fast as answers come back, on one kept-alive connection:
    // refused with 429 past the first two, then not answered at all (and a
    // new connection held unread too).
    let http = app.http();
    let (mut limited, mut cut) = (0, None);
    for _ in 0..5000 {
        let auth = http.post(format!("{}/kbs/v0/auth", app.coco_url)).body("{}");
        match auth.timeout(std::time::Duration::from_secs(2)).send().await {
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                assert!(r.headers().get(reqwest::header::RETRY_AFTER).is_some());
                limited += 1;
            }
            Ok(_) => {}
            Err(e) => {
                cut = Some(e);
                break;
            }
        }
    }
    let cut = cut.expect("the flooding peer's connection was still read");
    assert!(cut.is_timeout(), "the flooding peer's request failed instead of waiting: {cut:?}");
    assert!(limited >= 2, "stalled after {limited} refusals: {cut:?}");
    assert_eq!(app.handshake(&app.coco_url, flooder).await, Handshake::Held, "a flooding peer got a handshake");
    // Another peer is not held back: a whole flow, resource included.
    let ca = reqwest::Certificate::from_pem(&app.ca).unwrap();
    let elsewhere = reqwest::Client::builder().tls_certs_only(vec![ca]).local_address(other).build().unwrap();
    let mut session = Session { app: &app, http: elsewhere, cookie: None };
    let key = GuestKey::ec();
    session.attest(&guest(), &key, Tamper::default()).await.unwrap();
    assert_eq!(key.decrypt(&session.get(RESOURCE, None).await.unwrap()), b"coco-rate-limited");
    // Once its cut-off has ended, the first peer is served again.
    let mut served = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if app.handshake(&app.coco_url, flooder).await == Handshake::Completed {
            served = true;
            break;
        }
    }
    assert!(served, "the peer was never let back in");
    // Let back with an empty bucket: a second later it has tokens.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let (nonce, _) = Session::new(&app).auth("snp", "0.4.0").await.unwrap();
    assert!(!nonce.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_coco_request_is_traced_under_the_callers_trace_without_secrets() {
    let (collector, endpoint) = otlp::Collector::start().await;
    let app =
        TestApp::start_with(Options { extra_config: format!("[telemetry]\notlp_endpoint = \"{endpoint}\""), ..coco() })
            .await;
    let telemetry = otlp::install(&app.dir.path().join("kbs.toml"));
    let value = b"coco-model-key:5b1e0c7a9f3d2468";
    app.put(RESOURCE, value, &[MEASUREMENT]).await;
    // A guest whose every request carries its span (W3C trace context).
    let (traceparent, trace_id, caller) = otlp::traceparent();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("traceparent", traceparent.parse().unwrap());
    let http = reqwest::Client::builder()
        .tls_certs_only(vec![reqwest::Certificate::from_pem(&app.ca).unwrap()])
        .default_headers(headers)
        .build()
        .unwrap();
    let mut session = Session { app: &app, http, cookie: None };
    let key = GuestKey::ec();
    let token = session.attest(&guest(), &key, Tamper::default()).await.unwrap();
    let jwe = session.get(RESOURCE, None).await.unwrap();
    assert_eq!(key.decrypt(&jwe), value);
    let admin_token = app.token.trim().to_owned();
    drop(app);
    otlp::shutdown(telemetry).await;

    let spans = collector.spans();
    let root = |name: &str| {
        let found: Vec<&otlp::Span> = spans.iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "{name}: {spans:#?}");
        let root = found[0];
        assert_eq!((root.trace_id.as_str(), root.parent_span_id.as_str()), (trace_id.as_str(), caller.as_str()));
        assert_eq!(root.int("http.response.status_code"), Some(200), "{root:?}");
        root
    };
    let children = |parent: &otlp::Span| -> std::collections::BTreeSet<String> {
        spans.iter().filter(|s| s.parent_span_id == parent.span_id).map(|s| s.name.clone()).collect()
    };
    root("kbs.coco.auth");
    let attest = root("kbs.coco.attest");
    assert_eq!((attest.str("tee"), attest.str("outcome")), (Some("snp"), Some("allow")));
    assert_eq!(children(attest), ["verify".to_owned()].into());
    let verify = spans.iter().find(|s| s.name == "verify").unwrap();
    assert_eq!(children(verify), ["collateral", "evidence_parse"].map(String::from).into());
    let resource = root("kbs.coco.resource");
    assert_eq!((resource.str("tee"), resource.str("outcome")), (Some("snp"), Some("allow")));
    assert_eq!(resource.int("secrets"), Some(1));
    assert_eq!(children(resource), ["policy", "seal", "store"].map(String::from).into());

    let jwk = key.jwk();
    let field = |v: &Value, name: &str| v[name].as_str().unwrap().as_bytes().to_vec();
    otlp::assert_no_secret(
        &collector,
        &[
            ("resource value", value),
            ("resource name", RESOURCE.as_bytes()),
            ("attestation token", token.as_bytes()),
            ("admin token", admin_token.as_bytes()),
            ("guest key x", &field(&jwk, "x")),
            ("guest key y", &field(&jwk, "y")),
            ("JWE ciphertext", &field(&jwe, "ciphertext")),
            ("JWE encrypted key", &field(&jwe, "encrypted_key")),
            ("certificate table", &guest().cert_table().unwrap()),
        ],
    );
}

// ---------------------------------------------------------------------------
// Attestation results for other relying parties: OpenBao's JWT auth.

/// The `[coco]` lines of a broker whose tokens OpenBao relies on.
const RELYING: &str = "token_issuer = \"https://kbs.test\"\ntoken_audiences = [\"openbao\"]";

/// The claims of a compact JWS, unverified.
fn payload(token: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

/// The `kid` a token's header names.
fn kid(token: &str) -> String {
    let header: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
    header["kid"].as_str().unwrap().to_owned()
}

/// The JSON document `/.well-known/{name}` of `app`'s CoCo listener.
async fn well_known(app: &TestApp, name: &str) -> Value {
    app.http().get(format!("{}/.well-known/{name}", app.coco_url)).send().await.unwrap().json().await.unwrap()
}

/// `POST /v1/{path}` as root; panics unless OpenBao accepts it.
async fn bao_write(bao: &bao::Bao, path: &str, body: Value) {
    let resp =
        bao.http().post(format!("{}/v1/{path}", bao.addr)).header("X-Vault-Token", &bao.root).json(&body).send().await;
    let resp = resp.unwrap();
    let status = resp.status();
    assert!(status.is_success(), "{path}: {status} {}", resp.text().await.unwrap_or_default());
}

/// Points OpenBao's JWT auth at `app`'s JWKS, over HTTPS trusting its CA.
async fn bao_trust(bao: &bao::Bao, app: &TestApp) {
    bao_write(
        bao,
        "auth/jwt/config",
        json!({
            "jwks_url": format!("{}/.well-known/jwks.json", app.coco_url),
            "jwks_ca_pem": String::from_utf8(app.ca.clone()).unwrap(),
            "bound_issuer": "https://kbs.test",
        }),
    )
    .await;
}

/// A JWT login to the `attested` role: the client token, or OpenBao's
/// refusal (status and errors).
async fn bao_login(bao: &bao::Bao, jwt: &str) -> Result<String, (u16, String)> {
    let resp = bao
        .http()
        .post(format!("{}/v1/auth/jwt/login", bao.addr))
        .json(&json!({"role": "attested", "jwt": jwt}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match body["auth"]["client_token"].as_str() {
        Some(token) if status == 200 => Ok(token.to_owned()),
        _ => Err((status, body["errors"].to_string())),
    }
}

/// A secret read with an OpenBao token: the status and the body.
async fn bao_read(bao: &bao::Bao, token: &str, path: &str) -> (u16, Value) {
    let resp = bao.http().get(format!("{}/v1/{path}", bao.addr)).header("X-Vault-Token", token).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

/// An attested guest reaches OpenBao directly with the broker's attestation
/// result: a JWT auth role bound to the broker's JWKS (fetched over HTTPS,
/// the broker's CA pinned), its audience, and the EAR status and
/// measurement of the CPU appraisal, gives it a token whose policy reads
/// its model key. Refused: a tampered token, an expired one, a debuggable
/// guest's (contraindicated), one for another audience, and one signed by
/// a key the broker no longer publishes. Rotation: a token signed by the
/// previous key verifies, at OpenBao and at the broker, while that key is
/// in the JWKS.
#[tokio::test]
async fn openbao_relies_on_the_attestation_result_through_the_jwks() {
    let Some(bao) = bao::Bao::start(false).await else { return };
    let key = GuestKey::ec();

    // Broker A: the first token key.
    let relying = |extra: &str| Options { coco: true, coco_extra: format!("{RELYING}\n{extra}"), ..Default::default() };
    let a = TestApp::start_with(relying("")).await;
    let token_a = Session::new(&a).attest(&guest(), &key, Tamper::default()).await.unwrap();

    // Broker B: rotated. A new key signs; A's key file is kept as the
    // previous key, so A's tokens in flight stay good.
    let old_key = std::fs::read(a.dir.path().join("coco-token.key")).unwrap();
    let b = TestApp::start_with(Options {
        files: vec![("previous-token.key".into(), old_key)],
        ..relying("token_previous_key_files = [\"previous-token.key\"]")
    })
    .await;
    let token_b = Session::new(&b).attest(&guest(), &key, Tamper::default()).await.unwrap();
    assert_ne!(kid(&token_a), kid(&token_b));

    // The JWKS: both keys, the signer first, each named by its thumbprint;
    // the discovery document points at it.
    let jwks = well_known(&b, "jwks.json").await;
    let kids: Vec<&str> = jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [kid(&token_b), kid(&token_a)]);
    for jwk in jwks["keys"].as_array().unwrap() {
        let required = json!({"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"], "y": jwk["y"]});
        let thumbprint = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(jcs(&required).unwrap()));
        assert_eq!(jwk["kid"].as_str(), Some(thumbprint.as_str()), "kid is the RFC 7638 thumbprint");
        assert!(jwk.get("d").is_none());
    }
    let discovery = well_known(&b, "openid-configuration").await;
    assert_eq!(discovery["issuer"], "https://kbs.test");
    assert_eq!(discovery["jwks_uri"], "https://kbs.test/.well-known/jwks.json");

    // The EAR claims of B's token.
    let claims = payload(&token_b);
    assert_eq!(claims["eat_profile"], "tag:github.com,2023:veraison/ear");
    assert_eq!((claims["iss"].as_str(), claims["aud"].clone()), (Some("https://kbs.test"), json!(["openbao"])));
    assert_eq!(claims["nbf"], claims["iat"]);
    let cpu = &claims["submods"]["cpu0"];
    assert_eq!(cpu["ear.status"], "affirming");
    assert_eq!(cpu["ear.trustworthiness-vector"], json!({"instance-identity": 2, "configuration": 3, "hardware": 2}));
    assert_eq!(cpu["ear.veraison.annotated-evidence"]["measurement"], hex::encode(MEASUREMENT));
    assert_eq!(claims["tee-pubkey"], key.jwk());
    let bare = json!({"crv": "P-256", "kty": "EC", "x": key.jwk()["x"], "y": key.jwk()["y"]});
    assert_eq!(
        claims["cnf"]["jkt"].as_str().unwrap(),
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(jcs(&bare).unwrap()))
    );
    assert_eq!(claims["sub"], claims["cnf"]["jkt"]);
    // The claims digest is the one the audit record of the attestation holds.
    let digest = claims["kbs.claims-digest"].as_str().unwrap();
    let attested = b.audit_log().lines().find(|l| l.contains("\"coco.attest\"")).unwrap().to_owned();
    assert!(attested.contains(&format!("\"claims_digest\":\"{digest}\"")), "{attested}");
    assert!(attested.contains(claims["jti"].as_str().unwrap()));

    // OpenBao: JWT auth bound to B's JWKS; a role bound to the audience,
    // the CPU appraisal's status and the measurement; a policy that reads
    // the model key only.
    bao_write(&bao, "sys/auth/jwt", json!({"type": "jwt"})).await;
    bao_trust(&bao, &b).await;
    bao_write(
        &bao,
        "sys/policies/acl/model-reader",
        json!({"policy": "path \"secret/data/models/llama\" { capabilities = [\"read\"] }"}),
    )
    .await;
    bao_write(
        &bao,
        "auth/jwt/role/attested",
        json!({
            "role_type": "jwt",
            "user_claim": "sub",
            "bound_audiences": ["openbao"],
            "bound_claims": {
                "/submods/cpu0/ear.status": "affirming",
                "/submods/cpu0/ear.veraison.annotated-evidence/measurement": hex::encode(MEASUREMENT),
            },
            "token_policies": ["model-reader"],
            "token_ttl": "60s",
        }),
    )
    .await;
    bao_write(&bao, "secret/data/models/llama", json!({"data": {"key": "c2VjcmV0LW1vZGVsLWtleQ=="}})).await;
    bao_write(&bao, "secret/data/models/other", json!({"data": {"key": "b3RoZXI="}})).await;

    // The guest logs in with its attestation result and reads its key.
    let vault_token = bao_login(&bao, &token_b).await.expect("OpenBao accepts the broker's token");
    let (status, read) = bao_read(&bao, &vault_token, "secret/data/models/llama").await;
    assert_eq!((status, read["data"]["data"]["key"].as_str()), (200, Some("c2VjcmV0LW1vZGVsLWtleQ==")));
    assert_eq!(bao_read(&bao, &vault_token, "secret/data/models/other").await.0, 403, "only what its policy grants");

    // Rotation: the token signed by the previous key verifies while that
    // key is in the JWKS, at OpenBao and at the broker.
    bao_login(&bao, &token_a).await.expect("a token of the previous key is still good");
    b.put(RESOURCE, b"rotated", &[MEASUREMENT]).await;
    assert_eq!(key.decrypt(&Session::new(&b).get(RESOURCE, Some(&token_a)).await.unwrap()), b"rotated");

    // The same attestation result through `kbs.v1`: a release that asks
    // for one gets it, bound to its HPKE key, and OpenBao takes it alike.
    let (released, hpke_key) = grpc_release(&b, true).await.unwrap();
    let grpc_token = released.attestation_token;
    assert_eq!(kid(&grpc_token), kid(&token_b));
    let grpc_claims = payload(&grpc_token);
    assert_eq!(grpc_claims["jti"].as_str(), Some(released.attestation_id.as_str()));
    assert_eq!(grpc_claims["submods"]["cpu0"]["ear.status"], "affirming");
    let x = URL_SAFE_NO_PAD.encode(hpke_key.public_key());
    assert_eq!(grpc_claims["tee-pubkey"], json!({"kty": "OKP", "crv": "X25519", "x": x}));
    let bare = json!({"crv": "X25519", "kty": "OKP", "x": x});
    assert_eq!(
        grpc_claims["cnf"]["jkt"].as_str().unwrap(),
        URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(jcs(&bare).unwrap()))
    );
    let audited = b.audit_log().lines().find(|l| l.contains(&released.attestation_id)).unwrap().to_owned();
    assert!(audited.contains(grpc_claims["kbs.claims-digest"].as_str().unwrap()), "{audited}");
    bao_login(&bao, &grpc_token).await.expect("OpenBao accepts the kbs.v1 attestation result");
    // Not asked for, none is made.
    assert_eq!(grpc_release(&b, false).await.unwrap().0.attestation_token, "");

    // A tampered token: another measurement, the signature kept.
    let mut parts: Vec<String> = token_b.split('.').map(str::to_owned).collect();
    let mut forged = claims.clone();
    forged["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["measurement"] = json!(hex::encode(OTHER_MEASUREMENT));
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
    let refused = bao_login(&bao, &parts.join(".")).await.unwrap_err();
    assert_eq!(refused.0, 400, "{refused:?}");
    // The same token unaltered still logs in: the refusal was the tampering.
    bao_login(&bao, &token_b).await.unwrap();

    // An expired token: issued an hour ago by the broker's clock.
    b.advance(-3600);
    let expired = Session::new(&b).attest(&guest(), &key, Tamper::default()).await.unwrap();
    b.advance(3600);
    assert!(payload(&expired)["exp"].as_i64().unwrap() < time::OffsetDateTime::now_utc().unix_timestamp() - 3000);
    let refused = bao_login(&bao, &expired).await.unwrap_err();
    assert!(refused.1.contains("expired"), "{refused:?}");

    // A debuggable guest: verified, but its appraisal is contraindicated,
    // and the role's bound claims refuse it.
    let debug_guest = guest().policy(0x3_0000 | 1 << 19);
    let debug_token = Session::new(&b).attest(&debug_guest, &key, Tamper::default()).await.unwrap();
    assert_eq!(payload(&debug_token)["submods"]["cpu0"]["ear.status"], "contraindicated");
    assert_eq!(payload(&debug_token)["submods"]["cpu0"]["ear.trustworthiness-vector"]["configuration"], 96);
    let refused = bao_login(&bao, &debug_token).await.unwrap_err();
    assert!(refused.1.contains("claim"), "{refused:?}");

    // A token for another audience.
    let elsewhere = TestApp::start_with(Options {
        coco: true,
        keys_from: Some(b.dir.path().to_path_buf()),
        coco_extra: "token_issuer = \"https://kbs.test\"\ntoken_audiences = [\"someone-else\"]".into(),
        ..Default::default()
    })
    .await;
    let foreign_audience = Session::new(&elsewhere).attest(&guest(), &key, Tamper::default()).await.unwrap();
    assert_eq!(kid(&foreign_audience), kid(&token_b), "the same key signed it");
    let refused = bao_login(&bao, &foreign_audience).await.unwrap_err();
    assert!(refused.1.contains("aud"), "{refused:?}");

    // Broker C: A's key removed. OpenBao reads the new JWKS (its key set
    // is rebuilt when its configuration is written) and refuses A's token;
    // B's still logs in, and the broker itself refuses A's token too.
    let c = TestApp::start_with(Options { keys_from: Some(b.dir.path().to_path_buf()), ..relying("") }).await;
    let jwks = well_known(&c, "jwks.json").await;
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    bao_trust(&bao, &c).await;
    let refused = bao_login(&bao, &token_a).await.unwrap_err();
    assert_eq!(refused.0, 400, "{refused:?}");
    bao_login(&bao, &token_b).await.expect("the current key's token");
    c.put(RESOURCE, b"rotated", &[MEASUREMENT]).await;
    assert_problem(Session::new(&c).get(RESOURCE, Some(&token_a)).await, StatusCode::UNAUTHORIZED, "unauthenticated");
}

/// A `kbs.v1` release of [`RESOURCE`] by the simulated SNP guest, asking
/// for an attestation result or not.
async fn grpc_release(
    app: &TestApp,
    want_attestation_token: bool,
) -> Result<(kbs_proto::v1::ReleaseSecretsResponse, attester_client::hpke::EphemeralKey), tonic::Status> {
    use kbs_proto::v1::{GetChallengeRequest, Tee};
    let suite = kbs_proto::SuiteId::X25519_SHA256_AES256GCM;
    let mut rpc = app.guest().await;
    let challenge = rpc
        .get_challenge(GetChallengeRequest { tee: Tee::Snp.into(), secret_names: vec![RESOURCE.into()] })
        .await?
        .into_inner();
    let (mut req, key, _) = app::snp_release_request(&guest(), challenge, suite, vec![RESOURCE.into()]);
    req.want_attestation_token = want_attestation_token;
    Ok((rpc.release_secrets(req).await?.into_inner(), key))
}

/// A broker without the CoCo front end has no token keys to sign with: a
/// release that asks for an attestation result is refused before anything
/// is released, and one that does not is served as before.
#[tokio::test]
async fn attestation_results_need_the_coco_front_end() {
    let app = TestApp::start().await;
    app.put(RESOURCE, b"no token", &[MEASUREMENT]).await;
    let refused = grpc_release(&app, true).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(refused.metadata().get("kbs-reason").unwrap(), "invalid_request");
    let (released, _) = grpc_release(&app, false).await.unwrap();
    assert_eq!((released.secrets.len(), released.attestation_token.as_str()), (1, ""));
}

/// With the default issuer (`kbs`, not a URL) the discovery document points
/// at the JWKS under the host the relying party asked for, as trustee's
/// `trusted_jwk_sets = ["https://host:port"]` expects; the JWKS holds the
/// key that signed a fresh token.
#[tokio::test]
async fn the_discovery_document_names_the_jwks_under_the_requested_host() {
    let app = TestApp::start_with(coco()).await;
    let http = app.http();
    let discovery = well_known(&app, "openid-configuration").await;
    assert_eq!(discovery["issuer"], "kbs");
    let jwks_uri = discovery["jwks_uri"].as_str().unwrap();
    assert_eq!(jwks_uri, format!("{}/.well-known/jwks.json", app.coco_url));
    let resp = http.get(jwks_uri).send().await.unwrap();
    assert_eq!(resp.headers().get("content-type").unwrap(), "application/json");
    let jwks: Value = resp.json().await.unwrap();
    let token = Session::new(&app).attest(&guest(), &GuestKey::ec(), Tamper::default()).await.unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    assert_eq!(jwks["keys"][0]["kid"].as_str().unwrap(), kid(&token));
    assert_eq!(payload(&token)["iss"], "kbs");
    assert!(payload(&token).get("aud").is_none(), "no audience unless configured");
}
