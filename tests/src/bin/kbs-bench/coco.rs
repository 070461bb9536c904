//! The guest side of the CoCo KBS protocol (`/kbs/v0`, version 0.4.0), for
//! `kbs-bench --coco`: `POST /auth`, `POST /attest` with evidence from the
//! simulated TEE (SNP report fields and certificate table, TDX quote, or
//! the unsigned `sample` TEE) bound to the JCS runtime data, `GET
//! /resource` with the token, and the JWE opened with the guest's EC P-256
//! key and its bytes checked.

use attester_client::simulated::{ARK_GUID, ASK_GUID, SimulatedSnp, SimulatedTdx, VCEK_GUID, decode_cert_table};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::Digest as _;

/// The evidence a guest produces (one value per run: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Tee {
    Snp(SimulatedSnp),
    Tdx(SimulatedTdx),
    /// Unsigned (the broker accepts it only in its insecure dev mode).
    Sample,
}

impl Tee {
    fn name(&self) -> &'static str {
        match self {
            Self::Snp(_) => "snp",
            Self::Tdx(_) => "tdx",
            Self::Sample => "sample",
        }
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Value, String> {
        match self {
            Self::Snp(sim) => snp_evidence(sim, report_data),
            Self::Tdx(sim) => {
                let quote = sim.quote(report_data).map_err(|_| "guest_side".to_owned())?;
                Ok(json!({"quote": STANDARD.encode(quote), "cc_eventlog": null}))
            }
            Self::Sample => {
                Ok(json!({"svn": "1", "report_data": STANDARD.encode(report_data.get(..48).unwrap_or_default())}))
            }
        }
    }
}

/// What the guests of a CoCo run share.
pub struct Coco {
    /// `https://localhost:PORT`.
    pub url: String,
    /// The TLS client configuration each guest starts from.
    pub tls: rustls::ClientConfig,
    /// Whether each guest keeps its TLS sessions and resumes them.
    pub resume: bool,
    pub tee: Tee,
    /// `repo/type/tag`.
    pub resource: String,
    pub expected: Vec<u8>,
}

/// A guest that has attested: its HTTP client (one kept-alive connection),
/// token and key.
pub struct Attested {
    http: reqwest::Client,
    token: String,
    key: PrivateKey,
}

fn rejected(status: reqwest::StatusCode, body: &Value) -> String {
    format!("http_{}_{}", status.as_u16(), body.get("detail").and_then(Value::as_str).unwrap_or("-"))
}

impl Coco {
    /// A new HTTPS client: its first request opens a new connection.
    pub fn client(&self, tls: &rustls::ClientConfig) -> Result<reqwest::Client, String> {
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls.clone())
            .build()
            .map_err(|_| "client_config".to_owned())
    }

    fn url(&self, path: &str) -> String {
        format!("{}/kbs/v0/{path}", self.url)
    }

    /// `/auth` and `/attest` on a new connection.
    pub async fn attest(&self, tls: &rustls::ClientConfig) -> Result<Attested, String> {
        let http = self.client(tls)?;
        let body = json!({
            "version": "0.4.0", "tee": self.tee.name(),
            "extra-params": {"supported-hash-algorithms": ["sha384"]},
        });
        let resp = http.post(self.url("auth")).json(&body).send().await.map_err(|_| "connect".to_owned())?;
        let status = resp.status();
        let cookie = session_cookie(&resp);
        let challenge: Value = resp.json().await.map_err(|_| "protocol".to_owned())?;
        if status != reqwest::StatusCode::OK {
            return Err(rejected(status, &challenge));
        }
        let (Some(cookie), Some(nonce)) = (cookie, challenge.get("nonce").and_then(Value::as_str)) else {
            return Err("protocol".to_owned());
        };
        let key = PrivateKey::generate(&ECDH_P256).map_err(|_| "guest_side".to_owned())?;
        let public = key.compute_public_key().map_err(|_| "guest_side".to_owned())?;
        let point = public.as_ref();
        let (x, y) = (point.get(1..33).unwrap_or_default(), point.get(33..65).unwrap_or_default());
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW",
            "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
        });
        let report_data = kbs_e2e::coco::report_data(nonce, &jwk, "").map_err(|_| "guest_side".to_owned())?;
        let body = json!({
            "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
            "tee-evidence": {"primary_evidence": self.tee.evidence(&report_data)?, "additional_evidence": ""},
        });
        let resp = http
            .post(self.url("attest"))
            .header(reqwest::header::COOKIE, format!("kbs-session-id={cookie}"))
            .json(&body)
            .send()
            .await
            .map_err(|_| "connect".to_owned())?;
        let status = resp.status();
        let answer: Value = resp.json().await.map_err(|_| "protocol".to_owned())?;
        if status != reqwest::StatusCode::OK {
            return Err(rejected(status, &answer));
        }
        let token = answer.get("token").and_then(Value::as_str).ok_or("protocol")?.to_owned();
        Ok(Attested { http, token, key })
    }

    /// `GET /resource` with the token; opens the JWE and checks the bytes.
    pub async fn get(&self, guest: &Attested) -> Result<(), String> {
        let resp = guest
            .http
            .get(self.url(&format!("resource/{}", self.resource)))
            .bearer_auth(&guest.token)
            .send()
            .await
            .map_err(|_| "connect".to_owned())?;
        let status = resp.status();
        let jwe: Value = resp.json().await.map_err(|_| "protocol".to_owned())?;
        if status != reqwest::StatusCode::OK {
            return Err(rejected(status, &jwe));
        }
        match decrypt(&guest.key, &jwe) {
            Some(plain) if plain == self.expected => Ok(()),
            Some(_) => Err("wrong_bytes".to_owned()),
            None => Err("jwe_open_failed".to_owned()),
        }
    }

    /// The whole flow on one new connection.
    pub async fn flow(&self, tls: &rustls::ClientConfig) -> Result<(), String> {
        let guest = self.attest(tls).await?;
        self.get(&guest).await
    }
}

fn session_cookie(resp: &reqwest::Response) -> Option<String> {
    resp.headers().get_all(reqwest::header::SET_COOKIE).iter().find_map(|v| {
        let pair = v.to_str().ok()?.split(';').next()?;
        pair.strip_prefix("kbs-session-id=").map(str::to_owned)
    })
}

/// Opens a flattened-JSON JWE (RFC 7516) with `ECDH-ES+A256KW` and `A256GCM`.
fn decrypt(key: &PrivateKey, jwe: &Value) -> Option<Vec<u8>> {
    let field = |name: &str| URL_SAFE_NO_PAD.decode(jwe.get(name)?.as_str()?).ok();
    let protected_b64 = jwe.get("protected")?.as_str()?;
    let header: Value = serde_json::from_slice(&field("protected")?).ok()?;
    if header.get("alg")? != "ECDH-ES+A256KW" || header.get("enc")? != "A256GCM" {
        return None;
    }
    let coordinate = |c: &str| URL_SAFE_NO_PAD.decode(header.get("epk")?.get(c)?.as_str()?).ok();
    let mut epk = vec![4u8];
    epk.extend(coordinate("x")?);
    epk.extend(coordinate("y")?);
    // RFC 7518 §4.6.2: Concat KDF, SHA-256, AlgorithmID = the alg, empty
    // PartyUInfo/PartyVInfo, SuppPubInfo = 256.
    let kek: Vec<u8> = agreement::agree(key, UnparsedPublicKey::new(&ECDH_P256, &epk), (), |z| {
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
    .ok()?;
    let mut cek = [0u8; 32];
    AesKek::new(&AES_256, &kek).ok()?.unwrap(&field("encrypted_key")?, &mut cek).ok()?;
    let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).ok()?);
    let mut buf = field("ciphertext")?;
    buf.extend(field("tag")?);
    let iv: [u8; 12] = field("iv")?.try_into().ok()?;
    aead.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(protected_b64.as_bytes()), &mut buf)
        .ok()
        .map(|p| p.to_vec())
}

/// The SNP evidence as the guest attester serializes it: the report as its
/// fields (SEV-SNP ABI, ATTESTATION_REPORT), the certificates as typed entries.
fn snp_evidence(sim: &SimulatedSnp, report_data: &[u8; 64]) -> Result<Value, String> {
    let r = sim.report(report_data).map_err(|_| "guest_side".to_owned())?;
    let b = |o: usize| r.get(o).copied().unwrap_or(0);
    let bytes = |o: usize, n: usize| r.get(o..o + n).map(<[u8]>::to_vec).unwrap_or_default();
    let u32_at = |o: usize| u32::from_le_bytes(r.get(o..o + 4).and_then(|s| s.try_into().ok()).unwrap_or_default());
    let u64_at = |o: usize| u64::from_le_bytes(r.get(o..o + 8).and_then(|s| s.try_into().ok()).unwrap_or_default());
    let version = u32_at(0);
    let turin = version >= 3 && b(0x188) == 0x1a;
    let tcb = |o: usize| {
        if turin {
            json!({"fmc": b(o), "bootloader": b(o + 1), "tee": b(o + 2), "snp": b(o + 3), "microcode": b(o + 7)})
        } else {
            json!({"fmc": null, "bootloader": b(o), "tee": b(o + 1), "snp": b(o + 6), "microcode": b(o + 7)})
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
        "cpuid_fam_id": opt(version >= 3, json!(b(0x188))),
        "cpuid_mod_id": opt(version >= 3, json!(b(0x189))),
        "cpuid_step": opt(version >= 3, json!(b(0x18A))),
        "chip_id": bytes(0x1A0, 64), "committed_tcb": tcb(0x1E0),
        "current": {"build": b(0x1E8), "minor": b(0x1E9), "major": b(0x1EA)},
        "committed": {"build": b(0x1EC), "minor": b(0x1ED), "major": b(0x1EE)},
        "launch_tcb": tcb(0x1F0),
        "launch_mit_vector": opt(version >= 5, json!(u64_at(0x1F8))),
        "current_mit_vector": opt(version >= 5, json!(u64_at(0x200))),
        "signature": {"r": bytes(0x2A0, 72), "s": bytes(0x2E8, 72)},
    });
    let table = sim.cert_table().map_err(|_| "guest_side".to_owned())?;
    let certs: Vec<Value> = decode_cert_table(&table)
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
    Ok(json!({"attestation_report": report, "cert_chain": certs}))
}
