//! Attestation result tokens: EAR claims (the IETF RATS "EAT Attestation
//! Results" draft, as trustee issues them) in a compact JWS (RFC 7515)
//! with `ES256`, signed by the broker's token key.
//!
//! The token is the only state a CoCo session has after attestation: it
//! carries the verified claims and the guest's key, so any replica holding
//! the same token key can serve the resource GET. It is also an attestation
//! result other relying parties can check (an OpenBao/Vault JWT auth role,
//! a trustee KBS): every token names its key by `kid`, the RFC 7638
//! thumbprint of the public key, and the front end publishes the public
//! halves of the signing key and of the previous keys as a JWKS
//! ([`TokenKeys::jwks`]). Rotation: the new key signs, the previous keys
//! still verify (here and at relying parties) until they are removed.
//!
//! Replicas share the keys through `coco.token_key_file` and
//! `coco.token_previous_key_files`; without a key file each process makes
//! its own and tokens are good only at the replica that issued them.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, UnparsedPublicKey,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::evidence::gpu::{DeviceClass, GpuSetClaims};
use crate::evidence::{Claims, TeeKind};

/// Largest token accepted, in bytes. A token carries the verified claims
/// and one appraisal per device: about 6 KiB for a VM with one GPU, 20 KiB
/// with eight, so the 16 devices `kbs_proto::MAX_DEVICES` allows stay
/// well within this.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// Clock skew tolerated on `iat`, in seconds.
pub const MAX_SKEW_SECONDS: i64 = 60;
/// Most previous keys kept for verification.
pub const MAX_PREVIOUS_KEYS: usize = crate::config::MAX_PREVIOUS_TOKEN_KEYS;
/// The EAR profile the tokens follow.
pub const EAR_PROFILE: &str = "tag:github.com,2023:veraison/ear";
/// The path of the JWKS on the CoCo listener.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The OpenID discovery document on the CoCo listener (trustee's
/// `trusted_jwk_sets` and Vault's `oidc_discovery_url` read it).
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a compact JWS this broker could have issued.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not verify under this broker's key.
    #[error("token signature does not verify")]
    BadSignature,
    /// Signed by a key this broker does not hold (never held, or removed).
    #[error("token is signed by an unknown key")]
    UnknownKey,
    /// Past `exp`, or issued in the future.
    #[error("token is expired or not yet valid")]
    Expired,
    /// Minted by a broker in the other trust mode (insecure dev or not).
    #[error("token was minted by a broker in another trust mode")]
    OtherMode,
    /// The key file is unusable.
    #[error("token key: {0}")]
    Key(String),
}

/// The claim that marks a token minted by a broker in the insecure dev
/// mode. A broker verifies only tokens of its own mode, so a dev broker
/// that shares the token key file with a production one (a copied set-up)
/// mints nothing the production broker accepts.
const INSECURE_DEV_CLAIM: &str = "kbs-insecure-dev";

/// One token signing key.
pub struct TokenKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
    insecure_dev: bool,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl TokenKey {
    fn from_pair(pair: EcdsaKeyPair) -> Self {
        let kid = jwk_thumbprint(&ec_public_jwk(pair.public_key().as_ref())).unwrap_or_default();
        Self { pair, kid, rng: SystemRandom::new(), insecure_dev: false }
    }

    /// The key of a broker in the insecure dev mode: its tokens carry the
    /// dev mark, and it accepts only tokens that do.
    pub fn insecure_dev(mut self) -> Self {
        self.insecure_dev = true;
        self
    }

    /// A fresh key for this process only.
    pub fn generate() -> Result<Self, TokenError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| TokenError::Key("key generation failed".into()))?;
        Ok(Self::from_pair(pair))
    }

    /// A P-256 key from PKCS#8, DER or PEM (`-----BEGIN PRIVATE KEY-----`).
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, TokenError> {
        let der = match std::str::from_utf8(bytes) {
            Ok(text) if text.contains("-----BEGIN PRIVATE KEY-----") => {
                let body: String = text
                    .lines()
                    .skip_while(|l| !l.starts_with("-----BEGIN PRIVATE KEY-----"))
                    .skip(1)
                    .take_while(|l| !l.starts_with("-----END"))
                    .collect();
                zeroize::Zeroizing::new(
                    STANDARD.decode(body.trim()).map_err(|_| TokenError::Key("PEM body is not base64".into()))?,
                )
            }
            _ => zeroize::Zeroizing::new(bytes.to_vec()),
        };
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| TokenError::Key(format!("not a PKCS#8 P-256 key: {e}")))?;
        Ok(Self::from_pair(pair))
    }

    /// Reads [`Self::from_pkcs8`] from a file.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let bytes = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))?,
        );
        Self::from_pkcs8(&bytes).map_err(|e| TokenError::Key(format!("{}: {e}", path.display())))
    }

    /// A new PKCS#8 (DER) key, for operators and tests to write to a file.
    pub fn generate_pkcs8() -> Result<zeroize::Zeroizing<Vec<u8>>, TokenError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| TokenError::Key("key generation failed".into()))?;
        let der = pair.to_pkcs8v1().map_err(|_| TokenError::Key("key encoding failed".into()))?;
        Ok(zeroize::Zeroizing::new(der.as_ref().to_vec()))
    }

    /// The key id (not secret): the RFC 7638 SHA-256 thumbprint of the
    /// public JWK, base64url.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (with `kid`, `alg` and `use`).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = ec_public_jwk(self.pair.public_key().as_ref());
        if let Some(object) = jwk.as_object_mut() {
            object.insert("alg".into(), "ES256".into());
            object.insert("use".into(), "sig".into());
            object.insert("kid".into(), self.kid.clone().into());
        }
        jwk
    }

    /// Signs `claims` as a compact JWS whose header names this key.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        self.sign_claims(claims.clone()).map(|(token, _)| token)
    }

    /// [`TokenKey::sign`], also handing back the claims exactly as the
    /// token carries them (in the insecure dev mode, with its marker).
    pub fn sign_claims(&self, mut claims: Value) -> Result<(String, Value), TokenError> {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let enc = |v: &Value| serde_json::to_vec(v).map(|b| URL_SAFE_NO_PAD.encode(b));
        let header = enc(&header).map_err(|_| TokenError::Malformed("header"))?;
        if let (true, Some(object)) = (self.insecure_dev, claims.as_object_mut()) {
            object.insert(INSECURE_DEV_CLAIM.into(), Value::Bool(true));
        }
        let payload = enc(&claims).map_err(|_| TokenError::Malformed("claims"))?;
        let input = format!("{header}.{payload}");
        let sig = self.pair.sign(&self.rng, input.as_bytes()).map_err(|_| TokenError::Key("signing failed".into()))?;
        Ok((format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())), claims))
    }

    /// Verifies a token and returns its claims, if it was signed by this
    /// key and `now` (Unix seconds) is within `[iat - skew, exp)`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let parsed = Parsed::split(token)?;
        self.verify_parsed(&parsed, now)
    }

    fn verify_parsed(&self, parsed: &Parsed<'_>, now: i64) -> Result<Value, TokenError> {
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref());
        public.verify(parsed.signed.as_bytes(), &parsed.signature).map_err(|_| TokenError::BadSignature)?;
        let claims: Value = URL_SAFE_NO_PAD
            .decode(parsed.payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("claims"))?;
        let exp = claims.get("exp").and_then(Value::as_i64).ok_or(TokenError::Malformed("exp"))?;
        let iat = claims.get("iat").and_then(Value::as_i64).ok_or(TokenError::Malformed("iat"))?;
        if !current(iat, exp, now) {
            return Err(TokenError::Expired);
        }
        if claims.get(INSECURE_DEV_CLAIM).is_some() != self.insecure_dev {
            return Err(TokenError::OtherMode);
        }
        Ok(claims)
    }
}

/// Whether a token issued at `iat` and expiring at `exp` is valid at `now`
/// (Unix seconds): `now` within `[iat - skew, exp)`.
pub(super) fn current(iat: i64, exp: i64, now: i64) -> bool {
    now < exp && iat <= now.saturating_add(MAX_SKEW_SECONDS)
}

/// A compact JWS split into its parts; the header checked for `ES256`.
struct Parsed<'a> {
    kid: Option<String>,
    signed: &'a str,
    payload: &'a str,
    signature: Vec<u8>,
}

impl<'a> Parsed<'a> {
    fn split(token: &'a str) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(TokenError::Malformed("not three parts"));
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("header"))?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::Malformed("alg must be ES256"));
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(kid)) => Some(kid.clone()),
            Some(_) => return Err(TokenError::Malformed("kid must be a string")),
        };
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed("signature"))?;
        let signed = token.get(..h.len() + 1 + p.len()).ok_or(TokenError::Malformed("layout"))?;
        Ok(Self { kid, signed, payload: p, signature })
    }
}

/// The broker's token keys: the one that signs, and the previous ones
/// whose tokens still verify (rotation). All are published in the JWKS.
#[derive(Debug)]
pub struct TokenKeys {
    signer: TokenKey,
    previous: Vec<TokenKey>,
    jwks: Value,
    set_id: [u8; 32],
}

impl TokenKeys {
    /// `signer` signs; tokens of `previous` keys still verify. Refuses
    /// more than [`MAX_PREVIOUS_KEYS`] previous keys and duplicates.
    pub fn new(signer: TokenKey, previous: Vec<TokenKey>) -> Result<Self, TokenError> {
        if previous.len() > MAX_PREVIOUS_KEYS {
            return Err(TokenError::Key(format!("at most {MAX_PREVIOUS_KEYS} previous token keys")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for key in std::iter::once(&signer).chain(&previous) {
            if !seen.insert(key.kid.clone()) {
                return Err(TokenError::Key(format!("token key {} is listed twice", key.kid)));
            }
        }
        let keys: Vec<Value> = std::iter::once(&signer).chain(&previous).map(TokenKey::public_jwk).collect();
        let set_id = Self::identify(&signer, &previous);
        Ok(Self { signer, previous, jwks: json!({ "keys": keys }), set_id })
    }

    /// SHA-256 over the trust mode and the key ids, in order.
    fn identify(signer: &TokenKey, previous: &[TokenKey]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"kbs coco token key set\0");
        hash.update([u8::from(signer.insecure_dev)]);
        for key in std::iter::once(signer).chain(previous) {
            hash.update(key.kid.as_bytes());
            hash.update(b"\0");
        }
        hash.finalize().into()
    }

    /// What identifies this key set: its keys and its trust mode (not
    /// secret). Equal for the same keys, in the same order and mode.
    pub fn set_id(&self) -> [u8; 32] {
        self.set_id
    }

    /// Reads the signing key file and the previous key files.
    pub fn from_files(signer: &Path, previous: &[std::path::PathBuf]) -> Result<Self, TokenError> {
        let previous = previous.iter().map(|p| TokenKey::from_file(p)).collect::<Result<Vec<_>, _>>()?;
        Self::new(TokenKey::from_file(signer)?, previous)
    }

    /// Every key in the insecure dev mode ([`TokenKey::insecure_dev`]).
    pub fn insecure_dev(self) -> Self {
        let signer = self.signer.insecure_dev();
        let previous: Vec<TokenKey> = self.previous.into_iter().map(TokenKey::insecure_dev).collect();
        let set_id = Self::identify(&signer, &previous);
        Self { signer, previous, jwks: self.jwks, set_id }
    }

    /// The key that signs.
    pub fn signer(&self) -> &TokenKey {
        &self.signer
    }

    /// The JWKS (RFC 7517 §5): the signing key first, then the previous ones.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }

    /// Signs with the signing key.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        self.signer.sign(claims)
    }

    /// Signs with the signing key ([`TokenKey::sign_claims`]).
    pub fn sign_claims(&self, claims: Value) -> Result<(String, Value), TokenError> {
        self.signer.sign_claims(claims)
    }

    /// Verifies a token signed by any of the keys, found by its `kid`.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let parsed = Parsed::split(token)?;
        let kid = parsed.kid.as_deref().ok_or(TokenError::Malformed("no kid"))?;
        let key =
            std::iter::once(&self.signer).chain(&self.previous).find(|k| k.kid == kid).ok_or(TokenError::UnknownKey)?;
        key.verify_parsed(&parsed, now)
    }
}

/// A P-256 public point (SEC1 uncompressed) as a bare JWK.
fn ec_public_jwk(point: &[u8]) -> Value {
    json!({
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(point.get(1..33).unwrap_or_default()),
        "y": URL_SAFE_NO_PAD.encode(point.get(33..65).unwrap_or_default()),
    })
}

/// The RFC 7638 thumbprint of a public JWK (`EC`, `RSA` or `OKP`):
/// base64url of SHA-256 over its required members, in lexicographic
/// order, without whitespace.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, TokenError> {
    let member = |name: &'static str| {
        jwk.get(name).and_then(Value::as_str).ok_or(TokenError::Malformed("JWK lacks a required member"))
    };
    let kty = member("kty")?;
    let required: &[&'static str] = match kty {
        "EC" => &["crv", "kty", "x", "y"],
        "RSA" => &["e", "kty", "n"],
        "OKP" => &["crv", "kty", "x"],
        _ => return Err(TokenError::Malformed("JWK kty must be EC, RSA or OKP")),
    };
    // The members are base64url or fixed names, so their JSON string
    // forms need no escaping beyond what serde_json writes.
    let mut canonical = String::from("{");
    for (i, name) in required.iter().enumerate() {
        if i > 0 {
            canonical.push(',');
        }
        let value = serde_json::to_string(member(name)?).map_err(|_| TokenError::Malformed("JWK"))?;
        canonical.push_str(&format!("\"{name}\":{value}"));
    }
    canonical.push('}');
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// An HPKE public key (RFC 9180 serialization) of the `kbs.v1` suites as
/// a JWK: X25519 as `OKP` (RFC 8037), P-256 as `EC`.
pub fn hpke_public_jwk(suite: kbs_proto::SuiteId, key: &[u8]) -> Result<Value, TokenError> {
    const KEM_P256: u16 = 0x0010;
    const KEM_X25519: u16 = 0x0020;
    match (suite.kem, key.len()) {
        (KEM_X25519, 32) => Ok(json!({"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode(key)})),
        (KEM_P256, 65) if key.first() == Some(&4) => Ok(ec_public_jwk(key)),
        _ => Err(TokenError::Malformed("HPKE key of an unsupported suite or length")),
    }
}

// ---------------------------------------------------------------------------
// EAR claims.

/// AR4SI trustworthiness claim values used here (draft-ietf-rats-ar4si).
mod ar4si {
    /// instance-identity, hardware: the attester is recognized and genuine.
    pub const AFFIRMING: i8 = 2;
    /// configuration: no known vulnerabilities.
    pub const NO_KNOWN_VULNERABILITIES: i8 = 3;
    /// hardware or configuration: genuine, with known vulnerabilities.
    pub const UNSAFE: i8 = 32;
    /// configuration: unsupportable (a debuggable guest).
    pub const UNSUPPORTABLE: i8 = 96;
    /// hardware: not recognized (the insecure `sample` TEE).
    pub const UNRECOGNIZED: i8 = 97;
}

/// One appraisal (an EAR submodule): the trust vector, in AR4SI claim
/// names, and the status it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appraisal {
    /// `(claim name, value)`, only the claims the broker can speak to.
    pub vector: Vec<(&'static str, i8)>,
}

impl Appraisal {
    /// The EAR status: the worst tier among the claims set (affirming
    /// 2..=31, warning 32..=95, contraindicated 96..=127 and the rest).
    pub fn status(&self) -> &'static str {
        // 0 is "no claim"; 1 and negative values (a verifier fault)
        // count as contraindicated, so a fault never reads as affirming.
        let worst = self.vector.iter().map(|(_, v)| *v).fold(0u8, |acc, v| match v {
            0 => acc,
            2..=31 => acc.max(1),
            32..=95 => acc.max(2),
            _ => 3,
        });
        match worst {
            0 => "none",
            1 => "affirming",
            2 => "warning",
            _ => "contraindicated",
        }
    }

    fn to_json(&self) -> Value {
        let vector: Map<String, Value> = self.vector.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        json!({"ear.status": self.status(), "ear.trustworthiness-vector": vector})
    }

    /// The CPU TEE's appraisal from its verified claims. The verifiers
    /// passed, so the instance (its report signed by a key that chains to
    /// the vendor's root, bound to this request) is recognized; the
    /// hardware is genuine, with known vulnerabilities when TDX's TCB is
    /// not up to date; a debuggable guest's configuration is
    /// unsupportable. Executables are not claimed: measurements are
    /// appraised by each secret's release policy, not here (they are in
    /// the annotated evidence for relying parties to bind).
    pub fn of_cpu(claims: &Claims) -> Self {
        Self::cpu(claims.tee, claims.debug, claims.tdx.as_ref().map(|t| t.tcb_status.as_str()))
    }

    fn cpu(tee: TeeKind, debug: bool, tcb_status: Option<&str>) -> Self {
        let hardware = match (tee, tcb_status) {
            (TeeKind::Sample, _) => ar4si::UNRECOGNIZED,
            (_, None | Some("UpToDate" | "ConfigurationNeeded")) => ar4si::AFFIRMING,
            (_, Some(_)) => ar4si::UNSAFE,
        };
        let configuration = match (debug, tcb_status) {
            (true, _) => ar4si::UNSUPPORTABLE,
            (false, Some(s)) if s.contains("Configuration") => ar4si::UNSAFE,
            (false, _) => ar4si::NO_KNOWN_VULNERABILITIES,
        };
        Self {
            vector: vec![
                ("instance-identity", ar4si::AFFIRMING),
                ("configuration", configuration),
                ("hardware", hardware),
            ],
        }
    }

    /// One verified device's appraisal: its identity chains to the
    /// vendor's root and it signed this request's nonce.
    pub fn of_device() -> Self {
        Self { vector: vec![("instance-identity", ar4si::AFFIRMING), ("hardware", ar4si::AFFIRMING)] }
    }
}

/// What an attestation result says, before it is signed.
#[derive(Debug)]
pub struct EarInput<'a> {
    /// `iss`.
    pub issuer: &'a str,
    /// `aud` (omitted when empty).
    pub audiences: &'a [String],
    /// The attestation id (`jti`), as in the audit record.
    pub attestation_id: &'a str,
    /// Issue time, Unix seconds (`iat`, `nbf`).
    pub now: i64,
    /// Lifetime in seconds.
    pub ttl: i64,
    /// The verified claims (the GPUs' in [`Claims::gpu`]).
    pub claims: &'a Claims,
    /// The digest of the verified claims the audit record carries.
    pub claims_digest: &'a str,
    /// The TEE's name on this front end (`tee`).
    pub tee: &'a str,
    /// The requester's public key bound in the evidence, as a JWK.
    pub tee_pubkey: &'a Value,
}

/// The token claims of an attestation result: EAR (`eat_profile`, `iat`,
/// `ear.verifier-id`, `submods` with one appraisal per TEE: `cpu0`, then
/// `gpu0`.. and `nvswitch0`.. per device), the JWT claims relying parties
/// check (`iss`, `aud`, `sub`, `nbf`, `exp`, `jti`), the claims digest
/// (`kbs.claims-digest`) and the requester's key (`tee-pubkey`, the JWK;
/// `cnf.jkt`, its RFC 7638 thumbprint, which is also `sub`).
pub fn ear_claims(input: &EarInput<'_>) -> Result<Value, TokenError> {
    let thumbprint = jwk_thumbprint(input.tee_pubkey)?;
    let annotated = serde_json::to_value(input.claims).map_err(|_| TokenError::Malformed("claims"))?;
    let mut cpu = Appraisal::of_cpu(input.claims).to_json();
    if let Some(object) = cpu.as_object_mut() {
        object.insert("ear.veraison.annotated-evidence".into(), annotated);
    }
    let mut submods = Map::new();
    submods.insert("cpu0".into(), cpu);
    if let Some(set) = &input.claims.gpu {
        device_submods(set, &mut submods);
    }
    let mut token = json!({
        "eat_profile": EAR_PROFILE,
        "iss": input.issuer,
        "sub": thumbprint,
        "iat": input.now,
        "nbf": input.now,
        "exp": input.now.saturating_add(input.ttl),
        "jti": input.attestation_id,
        "ear.verifier-id": {"developer": "kbs", "build": concat!("kbs ", env!("CARGO_PKG_VERSION"))},
        "submods": submods,
        "kbs.claims-digest": input.claims_digest,
        "tee": input.tee,
        "tee-pubkey": input.tee_pubkey,
        "cnf": {"jkt": thumbprint},
    });
    if let (false, Some(object)) = (input.audiences.is_empty(), token.as_object_mut()) {
        object.insert("aud".into(), json!(input.audiences));
    }
    Ok(token)
}

/// One submodule per device, `gpu<n>` or `nvswitch<n>` in the order the
/// evidence listed them; its identity and versions, never measurements.
fn device_submods(set: &GpuSetClaims, submods: &mut Map<String, Value>) {
    let (mut gpus, mut switches) = (0usize, 0usize);
    for device in &set.devices {
        let name = match device.class {
            DeviceClass::Gpu => {
                gpus += 1;
                format!("gpu{}", gpus - 1)
            }
            DeviceClass::Nvswitch => {
                switches += 1;
                format!("nvswitch{}", switches - 1)
            }
        };
        let mut appraisal = Appraisal::of_device().to_json();
        if let Some(object) = appraisal.as_object_mut() {
            object.insert(
                "ear.veraison.annotated-evidence".into(),
                json!({
                    "vendor": device.vendor,
                    "chip": device.chip,
                    "ueid": device.ueid,
                    "device_key_sha256": device.device_key_sha256,
                    "driver_version": device.driver_version,
                    "vbios_version": device.vbios_version,
                    "revocation": if device.revocation.is_some() { "good" } else { "not_checked" },
                }),
            );
        }
        submods.insert(name, appraisal);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iat: i64, exp: i64) -> Value {
        json!({"iat": iat, "exp": exp, "tee-pubkey": {"kty": "EC"}})
    }

    #[test]
    fn tokens_are_good_only_in_the_mode_that_minted_them() {
        let der = TokenKey::generate_pkcs8().unwrap();
        let production = TokenKey::from_pkcs8(&der).unwrap();
        let dev = TokenKey::from_pkcs8(&der).unwrap().insecure_dev();
        let from_dev = dev.sign(&claims(0, 100)).unwrap();
        assert_eq!(production.verify(&from_dev, 10), Err(TokenError::OtherMode));
        assert!(dev.verify(&from_dev, 10).is_ok());
        let from_production = production.sign(&claims(0, 100)).unwrap();
        assert_eq!(dev.verify(&from_production, 10), Err(TokenError::OtherMode));
        assert!(production.verify(&from_production, 10).unwrap().get(INSECURE_DEV_CLAIM).is_none());
    }

    #[test]
    fn round_trip_and_expiry() {
        let key = TokenKey::generate().unwrap();
        let token = key.sign(&claims(100, 400)).unwrap();
        assert_eq!(key.verify(&token, 100).unwrap()["tee-pubkey"]["kty"], "EC");
        assert_eq!(key.verify(&token, 400), Err(TokenError::Expired));
        assert_eq!(key.verify(&token, 30), Err(TokenError::Expired));
    }

    #[test]
    fn foreign_and_altered_tokens_are_refused() {
        let a = TokenKey::generate().unwrap();
        let b = TokenKey::generate().unwrap();
        let token = a.sign(&claims(100, 400)).unwrap();
        assert_eq!(b.verify(&token, 100), Err(TokenError::BadSignature));
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(100, 99_999)).unwrap());
        assert_eq!(a.verify(&format!("{head}.{forged}.{sig}"), 100), Err(TokenError::BadSignature));
        let none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        assert!(matches!(a.verify(&format!("{none}.{forged}."), 100), Err(TokenError::Malformed(_))));
        assert!(a.verify("a.b", 100).is_err());
        assert!(a.verify(&"a.".repeat(MAX_TOKEN_LEN), 100).is_err());
    }

    /// RFC 7638 §3.1: the example RSA key and its thumbprint.
    #[test]
    fn thumbprint_known_answer() {
        let n = concat!(
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV",
            "4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0",
            "zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-cs",
            "FCur-kEgU8awapJzKnqDKgw"
        );
        let jwk = json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"});
        assert_eq!(jwk_thumbprint(&jwk).unwrap(), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        // Optional members do not change it; required ones do.
        let mut bare = jwk.clone();
        bare.as_object_mut().unwrap().retain(|k, _| ["kty", "n", "e"].contains(&k.as_str()));
        assert_eq!(jwk_thumbprint(&bare).unwrap(), jwk_thumbprint(&jwk).unwrap());
        for bad in [json!({"kty": "RSA", "n": n}), json!({"kty": "oct", "k": "AA"}), json!({"kty": 1}), json!([])] {
            assert!(jwk_thumbprint(&bad).is_err(), "{bad}");
        }
        // A token key's kid is the thumbprint of its published JWK.
        let key = TokenKey::generate().unwrap();
        assert_eq!(jwk_thumbprint(&key.public_jwk()).unwrap(), key.kid());
        assert_eq!(key.kid().len(), 43);
    }

    #[test]
    fn previous_keys_verify_until_removed() {
        let (old, new) = (TokenKey::generate_pkcs8().unwrap(), TokenKey::generate_pkcs8().unwrap());
        let key = |der: &[u8]| TokenKey::from_pkcs8(der).unwrap();
        let before = TokenKeys::new(key(&old), Vec::new()).unwrap();
        let in_flight = before.sign(&claims(100, 400)).unwrap();
        let header: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(in_flight.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["kid"], key(&old).kid());

        // Rotated: the new key signs, the old one still verifies, and both
        // are published, the signer first.
        let rotated = TokenKeys::new(key(&new), vec![key(&old)]).unwrap();
        assert!(rotated.verify(&in_flight, 100).is_ok());
        let fresh = rotated.sign(&claims(100, 400)).unwrap();
        assert!(rotated.verify(&fresh, 100).is_ok());
        assert_eq!(before.verify(&fresh, 100), Err(TokenError::UnknownKey));
        let kids: Vec<&str> =
            rotated.jwks()["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap()).collect();
        assert_eq!(kids, [key(&new).kid(), key(&old).kid()]);
        for jwk in rotated.jwks()["keys"].as_array().unwrap() {
            assert!(jwk.get("d").is_none(), "never the private part");
            assert_eq!((jwk["kty"].as_str(), jwk["alg"].as_str()), (Some("EC"), Some("ES256")));
        }

        // Removed: its tokens are refused, whatever they say.
        let after = TokenKeys::new(key(&new), Vec::new()).unwrap();
        assert_eq!(after.verify(&in_flight, 100), Err(TokenError::UnknownKey));
        assert!(after.verify(&fresh, 100).is_ok());
        assert_eq!(after.jwks()["keys"].as_array().unwrap().len(), 1);

        // A token that names no key, or names one by another type.
        let unnamed = {
            let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#);
            let (_, rest) = fresh.split_once('.').unwrap();
            format!("{head}.{rest}")
        };
        assert_eq!(after.verify(&unnamed, 100), Err(TokenError::Malformed("no kid")));
        let numbered = {
            let head = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","kid":7}"#);
            let (_, rest) = fresh.split_once('.').unwrap();
            format!("{head}.{rest}")
        };
        assert!(matches!(after.verify(&numbered, 100), Err(TokenError::Malformed(_))));
        // Listed twice, or too many previous keys.
        assert!(TokenKeys::new(key(&new), vec![key(&new)]).is_err());
        let many = (0..=MAX_PREVIOUS_KEYS).map(|_| TokenKey::generate().unwrap()).collect();
        assert!(TokenKeys::new(key(&old), many).is_err());
    }

    fn verified(debug: bool) -> Claims {
        serde_json::from_value(json!({
            "tee": "snp", "measurement": "00", "debug": debug,
            "report_data": "00".repeat(64), "init_data_digest": "00".repeat(32),
        }))
        .unwrap()
    }

    #[test]
    fn appraisals_follow_what_was_verified() {
        let status = |tee, debug, tcb| Appraisal::cpu(tee, debug, tcb).status();
        assert_eq!(Appraisal::of_cpu(&verified(false)).status(), "affirming");
        assert_eq!(Appraisal::of_cpu(&verified(true)).status(), "contraindicated");
        assert_eq!(status(TeeKind::Tdx, false, Some("UpToDate")), "affirming");
        assert_eq!(status(TeeKind::Tdx, false, Some("SWHardeningNeeded")), "warning");
        assert_eq!(status(TeeKind::Tdx, false, Some("OutOfDate")), "warning");
        assert_eq!(status(TeeKind::Tdx, false, Some("ConfigurationNeeded")), "warning");
        assert_eq!(status(TeeKind::Tdx, true, Some("UpToDate")), "contraindicated");
        assert_eq!(status(TeeKind::Sample, false, None), "contraindicated");
        assert_eq!(Appraisal::of_device().status(), "affirming");
        assert_eq!(Appraisal { vector: Vec::new() }.status(), "none");
        assert_eq!(Appraisal { vector: vec![("hardware", 0)] }.status(), "none");
        for fault in [1, -1, i8::MIN] {
            assert_eq!(
                Appraisal { vector: vec![("hardware", 2), ("configuration", fault)] }.status(),
                "contraindicated"
            );
        }
    }

    #[test]
    fn ear_claims_carry_the_appraisal_digest_and_key() {
        let claims = verified(false);
        let tee_key = json!({"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "eA", "y": "eQ"});
        let input = EarInput {
            issuer: "https://kbs.example",
            audiences: &["vault".to_owned()],
            attestation_id: "att-1",
            now: 1_000,
            ttl: 300,
            claims: &claims,
            claims_digest: "ab12",
            tee: "snp",
            tee_pubkey: &tee_key,
        };
        let ear = ear_claims(&input).unwrap();
        assert_eq!(ear["eat_profile"], EAR_PROFILE);
        assert_eq!(
            (ear["iat"].as_i64(), ear["nbf"].as_i64(), ear["exp"].as_i64()),
            (Some(1_000), Some(1_000), Some(1_300))
        );
        assert_eq!(ear["aud"], json!(["vault"]));
        assert_eq!(ear["submods"]["cpu0"]["ear.status"], "affirming");
        assert_eq!(ear["submods"]["cpu0"]["ear.trustworthiness-vector"]["hardware"], 2);
        assert_eq!(ear["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["measurement"], "00");
        assert_eq!(ear["kbs.claims-digest"], "ab12");
        assert_eq!(ear["tee-pubkey"], tee_key);
        assert_eq!(ear["cnf"]["jkt"], jwk_thumbprint(&tee_key).unwrap());
        assert_eq!(ear["sub"], ear["cnf"]["jkt"]);
        assert!(ear["ear.verifier-id"]["build"].as_str().unwrap().starts_with("kbs "));
        let no_audience = ear_claims(&EarInput { audiences: &[], ..input }).unwrap();
        assert!(no_audience.get("aud").is_none());
        // A key that is no JWK is refused, not signed.
        let bad = json!({"kty": "EC"});
        assert!(ear_claims(&EarInput { tee_pubkey: &bad, audiences: &[], ..input }).is_err());
    }

    #[test]
    fn hpke_keys_become_jwks() {
        use kbs_proto::SuiteId;
        let x = hpke_public_jwk(SuiteId::X25519_SHA256_AES256GCM, &[7; 32]).unwrap();
        assert_eq!(x, json!({"kty": "OKP", "crv": "X25519", "x": URL_SAFE_NO_PAD.encode([7; 32])}));
        assert!(jwk_thumbprint(&x).is_ok());
        let mut point = vec![4u8];
        point.extend([1u8; 32]);
        point.extend([2u8; 32]);
        let p = hpke_public_jwk(SuiteId::P256_SHA256_AES256GCM, &point).unwrap();
        assert_eq!((p["kty"].as_str(), p["y"].as_str()), (Some("EC"), Some(URL_SAFE_NO_PAD.encode([2; 32]).as_str())));
        assert!(hpke_public_jwk(SuiteId::X25519_SHA256_AES256GCM, &[7; 31]).is_err());
        assert!(hpke_public_jwk(SuiteId::P256_SHA256_AES256GCM, &[7; 65]).is_err());
        assert!(hpke_public_jwk(SuiteId { kem: 0x11, kdf: 1, aead: 2 }, &[4; 97]).is_err());
    }

    #[test]
    fn pkcs8_files_share_a_key() {
        let der = TokenKey::generate_pkcs8().unwrap();
        let a = TokenKey::from_pkcs8(&der).unwrap();
        let pem =
            format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der.as_slice()));
        let b = TokenKey::from_pkcs8(pem.as_bytes()).unwrap();
        assert_eq!(a.kid(), b.kid());
        let token = a.sign(&claims(1, 2)).unwrap();
        assert!(b.verify(&token, 1).is_ok());
        assert!(TokenKey::from_pkcs8(b"junk").is_err());
        assert_eq!(a.public_jwk()["kid"], a.kid());
    }
}
