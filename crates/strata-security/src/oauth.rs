//! SASL/OAUTHBEARER (RFC 7628) as Kafka's broker validates it: the client sends a JWT,
//! which must be signed by a key of the configured JWKS (RS256/384/512, PS256/384/512,
//! ES256/384; never `none` or a shared secret), unexpired (with clock skew), from the
//! expected issuer and for an expected audience. Its subject claim names the principal.
//!
//! The JWKS is read from a file (`file://` URL or path) or fetched from an http(s) URL
//! (the `http-jwks` feature), and read again periodically, as an identity provider's
//! keys rotate.

use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::signature::{self, RsaParameters, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// base64url, with or without padding (JWTs have none; some JWKS writers add it).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where the JWKS comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Url(u) => f.write_str(u),
        }
    }
}

/// Kafka's `sasl.oauthbearer.*` validation settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OauthSettings {
    /// `sasl.oauthbearer.jwks.endpoint.url`.
    pub jwks: JwksSource,
    /// `sasl.oauthbearer.expected.issuer`.
    pub issuer: Option<String>,
    /// `sasl.oauthbearer.expected.audience`: the token's `aud` must name one of these.
    pub audience: Vec<String>,
    /// `sasl.oauthbearer.sub.claim.name`.
    pub subject_claim: String,
    /// `sasl.oauthbearer.clock.skew.seconds`.
    pub clock_skew_s: i64,
}

impl JwksSource {
    /// From Kafka's URL setting: an http(s) URL, a `file://` URL, or a path.
    pub fn parse(url: &str) -> Result<Self, OauthError> {
        if let Some(path) = url.strip_prefix("file://") {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if url.starts_with("http://") || url.starts_with("https://") {
            // Plain http would let anyone on the path swap the signing keys: only for a
            // JWKS served on this host.
            let host = url
                .split_once("://")
                .map_or("", |(_, rest)| rest)
                .split(['/', ':'])
                .next()
                .unwrap_or("");
            if url.starts_with("http://") && !matches!(host, "localhost" | "127.0.0.1") {
                return Err(OauthError::Setting(format!(
                    "sasl.oauthbearer.jwks.endpoint.url {url}: use https (http only for a JWKS served on this host)"
                )));
            }
            if cfg!(feature = "http-jwks") {
                return Ok(Self::Url(url.to_string()));
            }
            return Err(OauthError::Setting(format!(
                "sasl.oauthbearer.jwks.endpoint.url {url}: this build reads JWKS files only"
            )));
        }
        Ok(Self::File(PathBuf::from(url)))
    }

    /// The document's bytes.
    async fn fetch(&self) -> Result<Vec<u8>, OauthError> {
        let err = |reason: String| OauthError::Jwks {
            path: self.to_string(),
            reason,
        };
        match self {
            Self::File(path) => tokio::fs::read(path).await.map_err(|e| err(e.to_string())),
            #[cfg(feature = "http-jwks")]
            Self::Url(url) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .map_err(|e| err(e.to_string()))?;
                let resp = client
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| err(e.to_string()))?;
                resp.bytes()
                    .await
                    .map(|b| b.to_vec())
                    .map_err(|e| err(e.to_string()))
            }
            #[cfg(not(feature = "http-jwks"))]
            Self::Url(_) => Err(err("this build reads JWKS files only".into())),
        }
    }
}

/// Why a token (or the JWKS) was refused. Shown in logs, never to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OauthError {
    #[error("{0}")]
    Setting(String),
    #[error("reading the JWKS {path}: {reason}")]
    Jwks { path: String, reason: String },
    #[error("malformed OAUTHBEARER message")]
    Message,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("unsupported token algorithm {0:?}")]
    Algorithm(String),
    #[error("no key of the JWKS matches the token")]
    NoKey,
    #[error("invalid signature")]
    Signature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("unexpected issuer")]
    Issuer,
    #[error("unexpected audience")]
    Audience,
    #[error("no {0:?} claim")]
    Subject(String),
}

/// One public key of the JWKS.
#[derive(Debug, Clone)]
struct Jwk {
    kid: Option<String>,
    key: Key,
}

#[derive(Debug, Clone)]
enum Key {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed point (0x04 || x || y) on P-256 or P-384.
    Ec {
        p384: bool,
        point: Vec<u8>,
    },
}

fn b64(v: &Value, field: &str) -> Option<Vec<u8>> {
    B64URL.decode(v.get(field)?.as_str()?).ok()
}

/// The keys of a JWKS document; keys of other types (or uses) are skipped.
fn parse_jwks(text: &[u8]) -> Result<Vec<Jwk>, String> {
    let doc: Value = serde_json::from_slice(text).map_err(|e| e.to_string())?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no \"keys\" array")?;
    let parsed: Vec<Jwk> = keys
        .iter()
        .filter(|k| {
            k.get("use")
                .and_then(Value::as_str)
                .is_none_or(|u| u == "sig")
        })
        .filter_map(|k| {
            let key = match (
                k.get("kty")?.as_str()?,
                k.get("crv").and_then(Value::as_str),
            ) {
                ("RSA", _) => Key::Rsa {
                    n: b64(k, "n")?,
                    e: b64(k, "e")?,
                },
                ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                    let mut point = vec![4u8];
                    point.extend(b64(k, "x")?);
                    point.extend(b64(k, "y")?);
                    Key::Ec {
                        p384: crv == "P-384",
                        point,
                    }
                }
                _ => return None,
            };
            Some(Jwk {
                kid: k.get("kid").and_then(Value::as_str).map(str::to_string),
                key,
            })
        })
        .collect();
    if parsed.is_empty() {
        return Err("no RSA or EC (P-256, P-384) signing key".into());
    }
    Ok(parsed)
}

/// How many usable signing keys a JWKS document holds (what loading one checks).
pub fn jwks_keys(text: &[u8]) -> Result<usize, String> {
    parse_jwks(text).map(|k| k.len())
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub subject: String,
    /// Its `exp`, in seconds since the epoch.
    pub expires_s: i64,
}

/// Validates tokens against the JWKS in force.
#[derive(Debug)]
pub struct JwtValidator {
    settings: OauthSettings,
    /// The JWKS file's bytes and its keys.
    keys: RwLock<(Vec<u8>, Vec<Jwk>)>,
}

async fn read_jwks(source: &JwksSource) -> Result<(Vec<u8>, Vec<Jwk>), OauthError> {
    let text = source.fetch().await?;
    let keys = parse_jwks(&text).map_err(|reason| OauthError::Jwks {
        path: source.to_string(),
        reason,
    })?;
    Ok((text, keys))
}

impl JwtValidator {
    pub async fn load(settings: OauthSettings) -> Result<Self, OauthError> {
        let keys = read_jwks(&settings.jwks).await?;
        Ok(Self {
            settings,
            keys: RwLock::new(keys),
        })
    }

    /// Reads the JWKS again; `Ok(true)` if it changed. A document that does not parse
    /// (or a fetch that fails) leaves the keys in force.
    pub async fn reload(&self) -> Result<bool, OauthError> {
        let (text, keys) = read_jwks(&self.settings.jwks).await?;
        let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if current.0 == text {
            return Ok(false);
        }
        *current = (text, keys);
        Ok(true)
    }

    /// Re-reads the JWKS every `every` until `stop`.
    pub async fn watch(&self, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.reload().await {
                Ok(true) => info!(jwks = %self.settings.jwks, "JWKS reloaded"),
                Ok(false) => {}
                Err(e) => warn!(error = %e, "JWKS does not load; the keys before stay in force"),
            }
        }
    }

    /// Checks `token` at `now_s` (seconds since the epoch).
    pub fn validate(&self, token: &str, now_s: i64) -> Result<Claims, OauthError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(OauthError::Malformed("not three dot-separated parts"));
        };
        let json = |part: &str, what| -> Result<Value, OauthError> {
            let bytes = B64URL
                .decode(part)
                .map_err(|_| OauthError::Malformed(what))?;
            serde_json::from_slice(&bytes).map_err(|_| OauthError::Malformed(what))
        };
        let header = json(h, "header")?;
        let claims = json(p, "claims")?;
        let sig = B64URL
            .decode(sig)
            .map_err(|_| OauthError::Malformed("signature"))?;
        let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
        let kid = header.get("kid").and_then(Value::as_str);
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        self.verify(alg, kid, signed, &sig)?;
        self.check_claims(&claims, now_s)
    }

    fn verify(
        &self,
        alg: &str,
        kid: Option<&str>,
        signed: &[u8],
        sig: &[u8],
    ) -> Result<(), OauthError> {
        enum Alg {
            Rsa(&'static RsaParameters),
            Ec(&'static signature::EcdsaVerificationAlgorithm, bool),
        }
        let a = match alg {
            "RS256" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA256),
            "RS384" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA384),
            "RS512" => Alg::Rsa(&signature::RSA_PKCS1_2048_8192_SHA512),
            "PS256" => Alg::Rsa(&signature::RSA_PSS_2048_8192_SHA256),
            "PS384" => Alg::Rsa(&signature::RSA_PSS_2048_8192_SHA384),
            "PS512" => Alg::Rsa(&signature::RSA_PSS_2048_8192_SHA512),
            "ES256" => Alg::Ec(&signature::ECDSA_P256_SHA256_FIXED, false),
            "ES384" => Alg::Ec(&signature::ECDSA_P384_SHA384_FIXED, true),
            other => return Err(OauthError::Algorithm(other.to_string())),
        };
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let candidates = keys
            .1
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)));
        let mut any = false;
        for k in candidates {
            let ok = match (&a, &k.key) {
                (Alg::Rsa(params), Key::Rsa { n, e }) => {
                    any = true;
                    RsaPublicKeyComponents { n, e }
                        .verify(params, signed, sig)
                        .is_ok()
                }
                (Alg::Ec(alg, p384), Key::Ec { p384: kp384, point }) if p384 == kp384 => {
                    any = true;
                    UnparsedPublicKey::new(*alg, point)
                        .verify(signed, sig)
                        .is_ok()
                }
                _ => false,
            };
            if ok {
                return Ok(());
            }
        }
        Err(if any {
            OauthError::Signature
        } else {
            OauthError::NoKey
        })
    }

    fn check_claims(&self, claims: &Value, now_s: i64) -> Result<Claims, OauthError> {
        let s = &self.settings;
        let time = |name| claims.get(name).and_then(Value::as_f64).map(|v| v as i64);
        let exp = time("exp").ok_or(OauthError::Malformed("no exp claim"))?;
        if now_s > exp.saturating_add(s.clock_skew_s) {
            return Err(OauthError::Expired);
        }
        if time("nbf").is_some_and(|nbf| now_s.saturating_add(s.clock_skew_s) < nbf) {
            return Err(OauthError::NotYetValid);
        }
        if let Some(want) = &s.issuer
            && claims.get("iss").and_then(Value::as_str) != Some(want)
        {
            return Err(OauthError::Issuer);
        }
        if !s.audience.is_empty() {
            let aud: Vec<&str> = match claims.get("aud") {
                Some(Value::String(a)) => vec![a],
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
                _ => vec![],
            };
            if !aud.iter().any(|a| s.audience.iter().any(|w| w == a)) {
                return Err(OauthError::Audience);
            }
        }
        let subject = claims
            .get(&s.subject_claim)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| OauthError::Subject(s.subject_claim.clone()))?;
        Ok(Claims {
            subject: subject.to_string(),
            expires_s: exp,
        })
    }
}

/// The token of an OAUTHBEARER client message:
/// `gs2-header %x01 auth=Bearer <token> %x01 [key=value %x01]* %x01`.
pub fn bearer_token(message: &[u8]) -> Result<&str, OauthError> {
    let text = std::str::from_utf8(message).map_err(|_| OauthError::Message)?;
    let (gs2, rest) = text.split_once('\x01').ok_or(OauthError::Message)?;
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return Err(OauthError::Message);
    }
    rest.split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))
        .and_then(|auth| {
            let (scheme, token) = auth.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then_some(token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or(OauthError::Message)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    struct Issuer {
        key: EcdsaKeyPair,
        kid: &'static str,
    }

    impl Issuer {
        fn new(kid: &'static str) -> Self {
            let doc = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .unwrap();
            let key =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
            Self { key, kid }
        }

        fn jwk(&self) -> Value {
            let point = self.key.public_key().as_ref();
            serde_json::json!({
                "kty": "EC", "crv": "P-256", "kid": self.kid, "use": "sig",
                "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65]),
            })
        }

        fn token(&self, claims: Value) -> String {
            let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
            let signed = format!(
                "{}.{}",
                B64URL.encode(header.to_string()),
                B64URL.encode(claims.to_string())
            );
            let sig = self
                .key
                .sign(&SystemRandom::new(), signed.as_bytes())
                .unwrap();
            format!("{signed}.{}", B64URL.encode(sig.as_ref()))
        }
    }

    async fn validator(dir: &std::path::Path, keys: &[Value]) -> JwtValidator {
        let path = dir.join("jwks.json");
        std::fs::write(&path, serde_json::json!({ "keys": keys }).to_string()).unwrap();
        JwtValidator::load(OauthSettings {
            jwks: JwksSource::File(path),
            issuer: Some("https://idp.example".into()),
            audience: vec!["kafka".into()],
            subject_claim: "sub".into(),
            clock_skew_s: 30,
        })
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn tokens_are_checked_for_signature_expiry_issuer_and_audience() {
        let dir = tempfile::tempdir().unwrap();
        let idp = Issuer::new("k1");
        let v = validator(dir.path(), &[idp.jwk()]).await;
        let now = 1_800_000_000;
        let good = serde_json::json!({"sub": "alice", "iss": "https://idp.example", "aud": ["kafka", "x"], "exp": now + 60});
        assert_eq!(
            v.validate(&idp.token(good.clone()), now),
            Ok(Claims {
                subject: "alice".into(),
                expires_s: now + 60
            })
        );
        let with = |k: &str, val: Value| {
            let mut c = good.clone();
            c[k] = val;
            idp.token(c)
        };
        assert_eq!(
            v.validate(&with("exp", (now - 31).into()), now),
            Err(OauthError::Expired)
        );
        assert!(
            v.validate(&with("exp", (now - 29).into()), now).is_ok(),
            "within the skew"
        );
        assert_eq!(
            v.validate(&with("nbf", (now + 100).into()), now),
            Err(OauthError::NotYetValid)
        );
        assert_eq!(
            v.validate(&with("iss", "https://evil".into()), now),
            Err(OauthError::Issuer)
        );
        assert_eq!(
            v.validate(&with("aud", "other".into()), now),
            Err(OauthError::Audience)
        );
        assert_eq!(
            v.validate(&with("sub", "".into()), now),
            Err(OauthError::Subject("sub".into()))
        );
        // Another key with the same kid: the signature fails; an unknown kid: no key.
        let mallory = Issuer::new("k1");
        assert_eq!(
            v.validate(&mallory.token(good.clone()), now),
            Err(OauthError::Signature)
        );
        let stranger = Issuer::new("k9");
        assert_eq!(
            v.validate(&stranger.token(good.clone()), now),
            Err(OauthError::NoKey)
        );
        // alg none and tampered claims.
        let t = idp.token(good.clone());
        let mut parts: Vec<&str> = t.split('.').collect();
        let none = B64URL.encode(r#"{"alg":"none"}"#);
        parts[0] = &none;
        assert_eq!(
            v.validate(&parts.join("."), now),
            Err(OauthError::Algorithm("none".into()))
        );
        let t = idp.token(good.clone());
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = with("sub", "admin".into());
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(
            v.validate(&parts.join("."), now),
            Err(OauthError::Signature)
        );
        for bad in ["", "a.b", "a.b.c.d", "!!.??.**"] {
            assert!(
                matches!(v.validate(bad, now), Err(OauthError::Malformed(_))),
                "{bad}"
            );
        }
        // Rotation: the new key's tokens pass once the JWKS names it.
        assert_eq!(
            v.validate(&stranger.token(good.clone()), now),
            Err(OauthError::NoKey)
        );
        std::fs::write(
            dir.path().join("jwks.json"),
            serde_json::json!({ "keys": [idp.jwk(), stranger.jwk()] }).to_string(),
        )
        .unwrap();
        assert!(v.reload().await.unwrap());
        assert!(v.validate(&stranger.token(good), now).is_ok());
    }

    #[test]
    fn the_client_message_carries_the_bearer_token() {
        assert_eq!(
            bearer_token(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01"),
            Ok("abc.def.ghi")
        );
        assert_eq!(
            bearer_token(b"n,a=alice,\x01host=h\x01auth=bearer t\x01\x01"),
            Ok("t")
        );
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,\x01auth=Basic x\x01\x01",
            b"x,,\x01auth=Bearer t\x01\x01",
            b"\xff",
        ] {
            assert_eq!(bearer_token(bad), Err(OauthError::Message), "{bad:?}");
        }
        assert_eq!(
            JwksSource::parse("https://idp/jwks").unwrap(),
            JwksSource::Url("https://idp/jwks".into())
        );
        assert!(JwksSource::parse("http://idp.example/jwks").is_err());
        assert!(JwksSource::parse("http://127.0.0.1:8080/jwks").is_ok());
        assert_eq!(
            JwksSource::parse("file:///etc/jwks.json").unwrap(),
            JwksSource::File(PathBuf::from("/etc/jwks.json"))
        );
        assert_eq!(
            JwksSource::parse("/etc/jwks.json").unwrap(),
            JwksSource::File(PathBuf::from("/etc/jwks.json"))
        );
    }
}
