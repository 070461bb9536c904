//! The guest's key (a JWK) and JWE encryption to it (RFC 7516 flattened
//! JSON serialization), as the CoCo `Response` payload.
//!
//! Accepted keys and key-management algorithms:
//! - EC P-256, `ECDH-ES+A256KW` (RFC 7518 §4.6: ephemeral-static ECDH,
//!   Concat KDF with SHA-256, AES-256 key wrap of the content key);
//! - RSA 2048..=4096 bits, `RSA-OAEP-256` (OAEP with SHA-256 and MGF1-SHA-256).
//!
//! `RSA1_5` (PKCS#1 v1.5, padding-oracle prone) and `RSA-OAEP` (SHA-1) are
//! refused, as are other curves. Content is always `A256GCM`, with the
//! ASCII of the base64url protected header as AAD (RFC 7516 §5.1 step 14).

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, EphemeralPrivateKey, ParsedPublicKey, UnparsedPublicKey};
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey, PublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Key management algorithm for EC P-256 keys.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// Key management algorithm for RSA keys.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// Content encryption.
pub const ENC_A256GCM: &str = "A256GCM";
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 4096;
/// Largest JWK accepted, in bytes of JSON.
pub const MAX_JWK_LEN: usize = 4096;

/// Why a key was refused or encryption failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JweError {
    /// The JWK is malformed or of an unsupported type, curve or algorithm.
    #[error("unsupported or malformed tee-pubkey: {0}")]
    Key(&'static str),
    /// A cryptographic primitive failed (a bug or a broken random source).
    #[error("JWE encryption failed: {0}")]
    Crypto(&'static str),
}

/// A checked guest public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TeeKey {
    /// EC P-256, uncompressed point `04 || x || y`.
    EcP256 {
        /// The SEC1 uncompressed point.
        point: Vec<u8>,
    },
    /// RSA, for `RSA-OAEP-256`.
    Rsa {
        /// Modulus, big-endian, no leading zeros.
        n: Vec<u8>,
        /// Public exponent, big-endian.
        e: Vec<u8>,
    },
}

fn b64(field: &'static str, value: &Value) -> Result<Vec<u8>, JweError> {
    let text = value.get(field).and_then(Value::as_str).ok_or(JweError::Key(field))?;
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| JweError::Key(field))
}

/// The members of a JWK that make its key (`kty`, `crv`, `x`, `y`, `n`,
/// `e`, `alg`), as given; any other member is left out. A token carries the
/// guest's key this way, so that what the guest sends beside its key (up
/// to [`MAX_JWK_LEN`] of arbitrary JSON) does not ride along in every token
/// and in the broker's memory of verified tokens.
pub fn key_members(jwk: &Value) -> Value {
    const MEMBERS: [&str; 7] = ["kty", "crv", "x", "y", "n", "e", "alg"];
    let members = jwk.as_object().into_iter().flatten().filter(|(name, _)| MEMBERS.contains(&name.as_str()));
    Value::Object(members.map(|(name, value)| (name.clone(), value.clone())).collect())
}

impl TeeKey {
    /// Parses and checks a JWK (`kty` `EC` with `crv` `P-256`, or `RSA`).
    /// An `alg` member, when present, must name the algorithm the broker
    /// will use for that key type.
    pub fn from_jwk(jwk: &Value) -> Result<Self, JweError> {
        if !jwk.is_object() {
            return Err(JweError::Key("not a JSON object"));
        }
        let alg = jwk.get("alg").map(|a| a.as_str().ok_or(JweError::Key("alg is not a string"))).transpose()?;
        match jwk.get("kty").and_then(Value::as_str) {
            Some("EC") => {
                if jwk.get("crv").and_then(Value::as_str) != Some("P-256") {
                    return Err(JweError::Key("only the P-256 curve is supported"));
                }
                if alg.is_some_and(|a| a != ALG_ECDH_ES_A256KW) {
                    return Err(JweError::Key("EC keys must use ECDH-ES+A256KW"));
                }
                let x = b64("x", jwk)?;
                let y = b64("y", jwk)?;
                if x.len() != 32 || y.len() != 32 {
                    return Err(JweError::Key("P-256 coordinates must be 32 bytes"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                // The point must be on the curve, so a bad key fails now,
                // not at release: aws-lc decodes it as a P-256 point,
                // which checks each coordinate is below p and the curve
                // equation holds (P-256's cofactor is 1: every point on
                // the curve is in its prime-order group).
                ParsedPublicKey::try_from(&UnparsedPublicKey::new(&ECDH_P256, &point))
                    .map_err(|_| JweError::Key("the EC point is not on P-256"))?;
                Ok(Self::EcP256 { point })
            }
            Some("RSA") => {
                match alg {
                    None | Some(ALG_RSA_OAEP_256) => {}
                    Some("RSA1_5") => return Err(JweError::Key("RSA1_5 is refused; use RSA-OAEP-256")),
                    Some(_) => return Err(JweError::Key("RSA keys must use RSA-OAEP-256")),
                }
                let n = b64("n", jwk)?;
                let e = b64("e", jwk)?;
                let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
                let bits = n.len() * 8;
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(JweError::Key("RSA modulus must be 2048 to 4096 bits"));
                }
                if e.is_empty() || e.len() > 4 {
                    return Err(JweError::Key("RSA exponent out of range"));
                }
                let key = Self::Rsa { n, e };
                key.rsa_key()?;
                Ok(key)
            }
            _ => Err(JweError::Key("kty must be EC or RSA")),
        }
    }

    fn rsa_key(&self) -> Result<OaepPublicEncryptingKey, JweError> {
        let Self::Rsa { n, e } = self else {
            return Err(JweError::Key("not an RSA key"));
        };
        let public: PublicEncryptingKey = PublicKeyComponents { n: n.as_slice(), e: e.as_slice() }
            .try_into()
            .map_err(|_| JweError::Key("RSA key rejected"))?;
        OaepPublicEncryptingKey::new(public).map_err(|_| JweError::Key("RSA key rejected"))
    }

    /// The JWE `alg` used for this key.
    pub fn alg(&self) -> &'static str {
        match self {
            Self::EcP256 { .. } => ALG_ECDH_ES_A256KW,
            Self::Rsa { .. } => ALG_RSA_OAEP_256,
        }
    }

    /// Encrypts `plaintext` to this key; returns the flattened JWE JSON
    /// text, written directly (every member but the header is base64url,
    /// which JSON never escapes).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<String, JweError> {
        let rng = SystemRandom::new();
        let mut cek = Zeroizing::new([0u8; 32]);
        rng.fill(cek.as_mut_slice()).map_err(|_| JweError::Crypto("random"))?;
        // The protected header, with its members in the order serde_json
        // writes the parsed header back (alg, enc, then epk with sorted
        // members), so a client re-encoding it recomputes the same AAD.
        let (header, encrypted_key) = match self {
            Self::EcP256 { point } => {
                let ephemeral =
                    EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| JweError::Crypto("ecdh"))?;
                let epk = ephemeral.compute_public_key().map_err(|_| JweError::Crypto("ecdh"))?;
                let (x, y) = epk.as_ref().get(1..33).zip(epk.as_ref().get(33..65)).ok_or(JweError::Crypto("epk"))?;
                let header = format!(
                    r#"{{"alg":"{ALG_ECDH_ES_A256KW}","enc":"{ENC_A256GCM}","epk":{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}}}"#,
                    URL_SAFE_NO_PAD.encode(x),
                    URL_SAFE_NO_PAD.encode(y),
                );
                let kek = agreement::agree_ephemeral(
                    ephemeral,
                    UnparsedPublicKey::new(&ECDH_P256, point),
                    JweError::Crypto("ecdh"),
                    |z| Ok(concat_kdf_a256kw(z)),
                )?;
                let mut wrapped = vec![0u8; 40];
                let kek = AesKek::new(&AES_256, kek.as_slice()).map_err(|_| JweError::Crypto("key wrap"))?;
                let len = kek.wrap(cek.as_slice(), &mut wrapped).map_err(|_| JweError::Crypto("key wrap"))?.len();
                wrapped.truncate(len);
                (header, wrapped)
            }
            Self::Rsa { .. } => {
                let key = self.rsa_key()?;
                let mut out = vec![0u8; key.ciphertext_size()];
                let len = key
                    .encrypt(&OAEP_SHA256_MGF1SHA256, cek.as_slice(), &mut out, None)
                    .map_err(|_| JweError::Crypto("rsa-oaep"))?
                    .len();
                out.truncate(len);
                (format!(r#"{{"alg":"{ALG_RSA_OAEP_256}","enc":"{ENC_A256GCM}"}}"#), out)
            }
        };
        let mut iv = [0u8; 12];
        rng.fill(&mut iv).map_err(|_| JweError::Crypto("random"))?;
        let key =
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM, cek.as_slice()).map_err(|_| JweError::Crypto("aead"))?);
        let protected = URL_SAFE_NO_PAD.encode(header);
        let mut ciphertext = plaintext.to_vec();
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(protected.as_bytes()),
                &mut ciphertext,
            )
            .map_err(|_| JweError::Crypto("aead"))?;
        // Base64 takes 4 characters per 3 bytes; the rest is the members' names.
        let mut jwe = String::with_capacity(96 + protected.len() + (encrypted_key.len() + ciphertext.len()) * 4 / 3);
        jwe.push_str(r#"{"protected":""#);
        jwe.push_str(&protected);
        for (name, bytes) in [
            ("encrypted_key", encrypted_key.as_slice()),
            ("iv", iv.as_slice()),
            ("ciphertext", ciphertext.as_slice()),
            ("tag", tag.as_ref()),
        ] {
            jwe.push_str(r#"",""#);
            jwe.push_str(name);
            jwe.push_str(r#"":""#);
            URL_SAFE_NO_PAD.encode_string(bytes, &mut jwe);
        }
        jwe.push_str(r#""}"#);
        Ok(jwe)
    }
}

/// RFC 7518 §4.6.2 Concat KDF (NIST SP 800-56A, one SHA-256 round) for
/// `ECDH-ES+A256KW` with empty PartyUInfo and PartyVInfo.
pub fn concat_kdf_a256kw(z: &[u8]) -> Zeroizing<[u8; 32]> {
    concat_kdf_sha256(z, ALG_ECDH_ES_A256KW, b"", b"", 256)
}

/// One-round Concat KDF with SHA-256: at most 256 bits of output.
fn concat_kdf_sha256(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], bits: u32) -> Zeroizing<[u8; 32]> {
    let len32 = |b: &[u8]| u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(len32(alg.as_bytes()));
    h.update(alg.as_bytes());
    h.update(len32(apu));
    h.update(apu);
    h.update(len32(apv));
    h.update(apv);
    h.update(bits.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::agreement::PrivateKey;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::key_wrap::KeyWrap;
    use aws_lc_rs::rsa::{KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey};
    use serde_json::json;

    fn d(v: &Value, field: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(v[field].as_str().unwrap()).unwrap()
    }

    /// The JWE JSON text as parsed, checked to be the flattened
    /// serialization: exactly its five members, each a base64url string.
    fn parsed(text: &str) -> Value {
        let jwe: Value = serde_json::from_str(text).unwrap();
        let members = jwe.as_object().unwrap();
        let mut names: Vec<&str> = members.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["ciphertext", "encrypted_key", "iv", "protected", "tag"]);
        for (name, value) in members {
            assert!(URL_SAFE_NO_PAD.decode(value.as_str().unwrap()).is_ok(), "{name}");
        }
        jwe
    }

    fn open_content(jwe: &Value, cek: &[u8]) -> Vec<u8> {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, cek).unwrap());
        let mut buf = d(jwe, "ciphertext");
        buf.extend_from_slice(&d(jwe, "tag"));
        let iv: [u8; 12] = d(jwe, "iv").try_into().unwrap();
        let aad = jwe["protected"].as_str().unwrap().as_bytes();
        key.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf).unwrap().to_vec()
    }

    fn ec_pair() -> (PrivateKey, Value) {
        let sk = PrivateKey::generate(&ECDH_P256).unwrap();
        let pk = sk.compute_public_key().unwrap();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "alg": ALG_ECDH_ES_A256KW,
            "x": URL_SAFE_NO_PAD.encode(&pk.as_ref()[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&pk.as_ref()[33..65]),
        });
        (sk, jwk)
    }

    #[test]
    fn ec_round_trip() {
        let (sk, jwk) = ec_pair();
        let key = TeeKey::from_jwk(&jwk).unwrap();
        let jwe = parsed(&key.encrypt(b"model key bytes").unwrap());
        let header: Value = serde_json::from_slice(&d(&jwe, "protected")).unwrap();
        assert_eq!(header["alg"], ALG_ECDH_ES_A256KW);
        assert_eq!(header["enc"], ENC_A256GCM);
        // A client that parses and re-serializes the header gets the same AAD.
        assert_eq!(URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).unwrap()), jwe["protected"].as_str().unwrap());
        let mut epk = vec![4u8];
        epk.extend(URL_SAFE_NO_PAD.decode(header["epk"]["x"].as_str().unwrap()).unwrap());
        epk.extend(URL_SAFE_NO_PAD.decode(header["epk"]["y"].as_str().unwrap()).unwrap());
        let kek =
            agreement::agree(&sk, UnparsedPublicKey::new(&ECDH_P256, &epk), (), |z| Ok(concat_kdf_a256kw(z))).unwrap();
        let mut cek = [0u8; 32];
        AesKek::new(&AES_256, kek.as_slice()).unwrap().unwrap(&d(&jwe, "encrypted_key"), &mut cek).unwrap();
        assert_eq!(open_content(&jwe, &cek), b"model key bytes");
        // Tampering with the protected header breaks the tag.
        let mut bad = jwe.clone();
        bad["protected"] = json!(URL_SAFE_NO_PAD.encode(br#"{"alg":"ECDH-ES+A256KW","enc":"A128GCM"}"#));
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &cek).unwrap());
        let mut buf = d(&bad, "ciphertext");
        buf.extend_from_slice(&d(&bad, "tag"));
        let iv: [u8; 12] = d(&bad, "iv").try_into().unwrap();
        let aad = bad["protected"].as_str().unwrap().as_bytes().to_vec();
        assert!(key.open_in_place(Nonce::assume_unique_for_key(iv), Aad::from(aad), &mut buf).is_err());
    }

    fn rsa_jwk(sk: &PrivateDecryptingKey, alg: &str) -> Value {
        use x509_parser::prelude::FromDer;
        let der = sk.public_key().as_der().unwrap();
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der.as_ref()).unwrap();
        let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else { panic!("not RSA") };
        json!({"kty": "RSA", "alg": alg, "n": URL_SAFE_NO_PAD.encode(rsa.modulus), "e": URL_SAFE_NO_PAD.encode(rsa.exponent)})
    }

    #[test]
    fn rsa_round_trip_and_rsa1_5_refused() {
        let sk = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
        let key = TeeKey::from_jwk(&rsa_jwk(&sk, ALG_RSA_OAEP_256)).unwrap();
        let jwe = parsed(&key.encrypt(b"rsa secret").unwrap());
        let header: Value = serde_json::from_slice(&d(&jwe, "protected")).unwrap();
        assert_eq!(header, json!({"alg": "RSA-OAEP-256", "enc": "A256GCM"}));
        let oaep = OaepPrivateDecryptingKey::new(sk.clone()).unwrap();
        let mut out = vec![0u8; oaep.min_output_size()];
        let cek = oaep.decrypt(&OAEP_SHA256_MGF1SHA256, &d(&jwe, "encrypted_key"), &mut out, None).unwrap();
        assert_eq!(open_content(&jwe, cek), b"rsa secret");

        assert_eq!(
            TeeKey::from_jwk(&rsa_jwk(&sk, "RSA1_5")),
            Err(JweError::Key("RSA1_5 is refused; use RSA-OAEP-256"))
        );
        assert!(TeeKey::from_jwk(&rsa_jwk(&sk, "RSA-OAEP")).is_err());
    }

    #[test]
    fn bad_keys_are_refused() {
        let (_, jwk) = ec_pair();
        for (field, value) in [
            ("kty", json!("OKP")),
            ("crv", json!("P-521")),
            ("alg", json!("ECDH-ES")),
            ("x", json!("AAAA")),
            ("y", json!(7)),
        ] {
            let mut bad = jwk.clone();
            bad[field] = value;
            assert!(TeeKey::from_jwk(&bad).is_err(), "{field}");
        }
        // A point off the curve, coordinates that are not field elements
        // (p, or above it), and (0, 0), which is not on the curve either.
        let mut off = jwk.clone();
        off["y"] = json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
        assert_eq!(TeeKey::from_jwk(&off), Err(JweError::Key("the EC point is not on P-256")));
        let p256_p = hex::decode("ffffffff00000001000000000000000000000000ffffffffffffffffffffffff").unwrap();
        for (x, y) in [
            (p256_p.clone(), d(&jwk, "y")),
            (d(&jwk, "x"), p256_p.clone()),
            (vec![0xff; 32], vec![0xff; 32]),
            (vec![0; 32], vec![0; 32]),
        ] {
            let mut bad = jwk.clone();
            bad["x"] = json!(URL_SAFE_NO_PAD.encode(&x));
            bad["y"] = json!(URL_SAFE_NO_PAD.encode(&y));
            assert_eq!(TeeKey::from_jwk(&bad), Err(JweError::Key("the EC point is not on P-256")));
        }
        // p - y is the negated point: on the curve, and another key.
        let y = sub_be(&p256_p, &d(&jwk, "y"));
        let mut negated = jwk.clone();
        negated["y"] = json!(URL_SAFE_NO_PAD.encode(&y));
        let negated = TeeKey::from_jwk(&negated).expect("-P is on the curve");
        assert_ne!(negated, TeeKey::from_jwk(&jwk).unwrap());
        assert!(TeeKey::from_jwk(&json!("EC")).is_err());
        let small = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc3u8; 128]), "e": "AQAB"});
        assert!(TeeKey::from_jwk(&small).is_err());
    }

    /// `a - b` for big-endian numbers of one length, `a >= b`.
    fn sub_be(a: &[u8], b: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; a.len()];
        let mut borrow = 0i16;
        for i in (0..a.len()).rev() {
            let v = i16::from(a[i]) - i16::from(b[i]) - borrow;
            borrow = i16::from(v < 0);
            out[i] = v.rem_euclid(256) as u8;
        }
        assert_eq!(borrow, 0);
        out
    }

    /// RFC 7518 Appendix C: the worked Concat KDF example (ECDH-ES with
    /// A128GCM, PartyUInfo "Alice", PartyVInfo "Bob").
    #[test]
    fn concat_kdf_rfc7518_appendix_c() {
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49, 110, 163, 218, 128,
            106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let key = concat_kdf_sha256(&z, "A128GCM", b"Alice", b"Bob", 128);
        assert_eq!(URL_SAFE_NO_PAD.encode(&key[..16]), "VqqN6vgjbSBcIijNcacQGg");
        assert_ne!(*concat_kdf_a256kw(&z), *key);
    }
}
