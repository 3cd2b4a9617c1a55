//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677) as Kafka uses them: the stored
//! credential, its derivation from a password or a client-salted password
//! (AlterUserScramCredentials), and the server side of the exchange.
//!
//! Only the derived keys are stored: StoredKey proves a client, ServerKey proves the
//! server to the client, and neither gives the password (or a login) away.

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2, rand};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::num::NonZeroU32;

/// Kafka's bounds on SCRAM iterations.
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;

/// The hash a SCRAM mechanism uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    /// Kafka's mechanism names.
    pub fn mechanism(self) -> &'static str {
        match self {
            Self::Sha256 => "SCRAM-SHA-256",
            Self::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_mechanism(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Self::Sha256),
            "SCRAM-SHA-512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// The `ScramMechanism` codes of AlterUserScramCredentials and
    /// DescribeUserScramCredentials.
    pub fn code(self) -> i8 {
        match self {
            Self::Sha256 => 1,
            Self::Sha512 => 2,
        }
    }

    pub fn from_code(code: i8) -> Option<Self> {
        match code {
            1 => Some(Self::Sha256),
            2 => Some(Self::Sha512),
            _ => None,
        }
    }

    fn hmac_alg(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest_alg(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha256 => &digest::SHA256,
            Self::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2_alg(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest_alg().output_len()
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        hmac::sign(&hmac::Key::new(self.hmac_alg(), key), data)
            .as_ref()
            .to_vec()
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.digest_alg(), data).as_ref().to_vec()
    }

    /// PBKDF2 of the password, as the client computes it too.
    pub fn salted_password(self, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        let mut out = vec![0; self.len()];
        let iterations = NonZeroU32::new(iterations.max(1)).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(self.pbkdf2_alg(), iterations, salt, password, &mut out);
        out
    }
}

/// What the broker keeps of a SCRAM user's password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub hash: ScramHash,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

/// The keys stay out of logs: with them a user can be impersonated.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("hash", &self.hash)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a credential cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("iterations must be between {MIN_ITERATIONS} and {MAX_ITERATIONS}, not {0}")]
    Iterations(i64),
    #[error("the salted password must be {expected} bytes for {mechanism}, not {got}")]
    SaltedPassword {
        mechanism: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("the salt is empty")]
    EmptySalt,
    #[error("no randomness: {0}")]
    Random(String),
}

/// Random bytes from the system's generator.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, CredentialError> {
    let mut out = vec![0; n];
    rand::fill(&mut out).map_err(|e| CredentialError::Random(e.to_string()))?;
    Ok(out)
}

impl Credential {
    /// From a password, with a fresh random salt.
    pub fn from_password(
        hash: ScramHash,
        password: &str,
        iterations: u32,
    ) -> Result<Self, CredentialError> {
        check_iterations(i64::from(iterations))?;
        let salt = random_bytes(32)?;
        let salted = hash.salted_password(password.as_bytes(), &salt, iterations);
        Self::from_salted_password(hash, salt, &salted, iterations)
    }

    /// From what AlterUserScramCredentials carries: a salt and the password salted with
    /// it by the client.
    pub fn from_salted_password(
        hash: ScramHash,
        salt: Vec<u8>,
        salted_password: &[u8],
        iterations: u32,
    ) -> Result<Self, CredentialError> {
        check_iterations(i64::from(iterations))?;
        if salt.is_empty() {
            return Err(CredentialError::EmptySalt);
        }
        if salted_password.len() != hash.len() {
            return Err(CredentialError::SaltedPassword {
                mechanism: hash.mechanism(),
                expected: hash.len(),
                got: salted_password.len(),
            });
        }
        let client_key = hash.hmac(salted_password, b"Client Key");
        Ok(Self {
            hash,
            salt,
            stored_key: hash.hash(&client_key),
            server_key: hash.hmac(salted_password, b"Server Key"),
            iterations,
        })
    }

    /// Whether `password` is this credential's (what SASL/PLAIN checks).
    pub fn verifies(&self, password: &str) -> bool {
        let salted = self
            .hash
            .salted_password(password.as_bytes(), &self.salt, self.iterations);
        let client_key = self.hash.hmac(&salted, b"Client Key");
        constant_time::verify_slices_are_equal(&self.hash.hash(&client_key), &self.stored_key)
            .is_ok()
    }
}

/// Checks Kafka's iteration bounds.
pub fn check_iterations(iterations: i64) -> Result<u32, CredentialError> {
    match u32::try_from(iterations) {
        Ok(i) if (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&i) => Ok(i),
        _ => Err(CredentialError::Iterations(iterations)),
    }
}

/// Why an exchange failed. The client is only ever told that authentication failed;
/// this is for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("unknown user")]
    UnknownUser,
    #[error("{0} is not supported")]
    Unsupported(&'static str),
    #[error("the nonce or channel binding of the final message does not match")]
    Mismatch,
    #[error("invalid proof")]
    BadProof,
}

/// The server's side of one exchange, between the client's first and final messages.
#[derive(Debug)]
pub struct ServerExchange {
    user: String,
    credential: Credential,
    gs2_header: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// Undoes SCRAM's `=2C`/`=3D` escaping of a user name.
fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("client-first")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

impl ServerExchange {
    /// Reads the client's first message and answers the server's first. `lookup` gives
    /// the user's credential for this mechanism.
    pub fn start(
        client_first: &[u8],
        lookup: impl FnOnce(&str) -> Option<Credential>,
    ) -> Result<(Self, Vec<u8>), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed("client-first"))?;
        // gs2-header: a channel-binding flag, an optional authzid, then the bare message.
        let (cb, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Malformed("client-first"))?;
        match cb {
            "n" | "y" => {}
            _ if cb.starts_with("p=") => return Err(ScramError::Unsupported("channel binding")),
            _ => return Err(ScramError::Malformed("client-first")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("client-first"))?;
        let gs2_header = format!("{cb},{authzid},");
        let mut user = None;
        let mut client_nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            // Extensions (Kafka's tokenauth for delegation tokens) are not offered.
            if i > 1 && attr.starts_with("tokenauth=") {
                return Err(ScramError::Unsupported("delegation tokens"));
            }
            match (i, attr.split_at_checked(2)) {
                (0, Some(("n=", v))) => user = Some(decode_saslname(v)?),
                (1, Some(("r=", v))) if !v.is_empty() => client_nonce = Some(v),
                (0 | 1, _) => return Err(ScramError::Malformed("client-first")),
                _ => {}
            }
        }
        let (Some(user), Some(client_nonce)) = (user, client_nonce) else {
            return Err(ScramError::Malformed("client-first"));
        };
        if let Some(z) = authzid.strip_prefix("a=")
            && decode_saslname(z)? != user
        {
            return Err(ScramError::Unsupported(
                "an authorization id other than the user",
            ));
        }
        let credential = lookup(&user).ok_or(ScramError::UnknownUser)?;
        let server_nonce = random_bytes(18).map_err(|_| ScramError::Unsupported("randomness"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        let answer = server_first.clone().into_bytes();
        Ok((
            Self {
                user,
                credential,
                gs2_header,
                nonce,
                client_first_bare: bare.to_string(),
                server_first,
            },
            answer,
        ))
    }

    /// Checks the client's final message; on success, the user and the server's final
    /// message (its own proof).
    pub fn finish(self, client_final: &[u8]) -> Result<(String, Vec<u8>), ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed("client-final"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final"))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            match attr.split_at_checked(2) {
                Some(("c=", v)) => binding = Some(v),
                Some(("r=", v)) => nonce = Some(v),
                _ => {}
            }
        }
        let binding = binding
            .and_then(|b| B64.decode(b).ok())
            .ok_or(ScramError::Malformed("client-final"))?;
        // Kafka accepts a final nonce that ends with the server's (librdkafka before 2.1
        // repeats its own nonce in front); the server's part is what keeps it fresh.
        if binding != self.gs2_header.as_bytes()
            || !nonce.is_some_and(|n| n.ends_with(self.nonce.as_str()))
        {
            return Err(ScramError::Mismatch);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("client-final"))?;
        let c = &self.credential;
        if proof.len() != c.stored_key.len() {
            return Err(ScramError::BadProof);
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let client_signature = c.hash.hmac(&c.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        constant_time::verify_slices_are_equal(&c.hash.hash(&client_key), &c.stored_key)
            .map_err(|_| ScramError::BadProof)?;
        let server_signature = c.hash.hmac(&c.server_key, auth_message.as_bytes());
        Ok((
            self.user,
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// A user of `scram.bootstrap`, Kafka's `kafka-storage format --add-scram` syntax:
/// `SCRAM-SHA-512=[name=admin,password=admin-secret]` (`iterations=N` optional).
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapUser {
    pub hash: ScramHash,
    pub name: String,
    pub password: String,
    pub iterations: u32,
}

impl std::fmt::Debug for BootstrapUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapUser")
            .field("hash", &self.hash)
            .field("name", &self.name)
            .field("password", &"[redacted]")
            .field("iterations", &self.iterations)
            .finish()
    }
}

/// Splits on commas outside brackets and quotes.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quoted, mut start) = (Vec::new(), 0i32, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '[' if !quoted => depth += 1,
            ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect()
}

/// Parses `scram.bootstrap`. Errors never repeat a password.
pub fn parse_bootstrap(s: &str) -> Result<Vec<BootstrapUser>, String> {
    split_top(s)
        .into_iter()
        .map(|entry| {
            let shown = entry.split('[').next().unwrap_or_default();
            let bad = |why: &str| format!("scram.bootstrap entry {shown}=[...]: {why}");
            let (mechanism, body) = entry
                .split_once('=')
                .ok_or_else(|| bad("not MECHANISM=[name=...,password=...]"))?;
            let hash = ScramHash::from_mechanism(mechanism.trim())
                .ok_or_else(|| bad("the mechanism must be SCRAM-SHA-256 or SCRAM-SHA-512"))?;
            let body = body
                .trim()
                .strip_prefix('[')
                .and_then(|b| b.strip_suffix(']'))
                .ok_or_else(|| bad("the attributes must be in [...]"))?;
            let (mut name, mut password, mut iterations) = (None, None, MIN_ITERATIONS);
            for attr in split_top(body) {
                let (k, v) = attr
                    .split_once('=')
                    .ok_or_else(|| bad("attributes are key=value"))?;
                let v = v.trim().trim_matches('"').to_string();
                match k.trim() {
                    "name" => name = Some(v),
                    "password" => password = Some(v),
                    "iterations" => {
                        iterations = v
                            .parse::<i64>()
                            .map_err(|_| bad("iterations is not a number"))
                            .and_then(|i| check_iterations(i).map_err(|e| bad(&e.to_string())))?;
                    }
                    other => {
                        return Err(bad(&format!(
                            "unknown attribute {other:?} (name, password and iterations are read)"
                        )));
                    }
                }
            }
            match (name, password) {
                (Some(name), Some(password)) if !name.is_empty() => Ok(BootstrapUser {
                    hash,
                    name,
                    password,
                    iterations,
                }),
                _ => Err(bad("name and password are required")),
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The client's side, written from RFC 5802, to drive the server in tests.
    fn client_final(
        hash: ScramHash,
        password: &str,
        client_first_bare: &str,
        server_first: &str,
    ) -> (String, Vec<u8>) {
        let mut salt = None;
        let mut iterations = 0;
        let mut nonce = "";
        for attr in server_first.split(',') {
            match attr.split_at(2) {
                ("r=", v) => nonce = v,
                ("s=", v) => salt = Some(B64.decode(v).unwrap()),
                ("i=", v) => iterations = v.parse().unwrap(),
                _ => {}
            }
        }
        let salted = hash.salted_password(password.as_bytes(), &salt.unwrap(), iterations);
        let client_key = hash.hmac(&salted, b"Client Key");
        let stored_key = hash.hash(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let sig = hash.hmac(&stored_key, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        let server_key = hash.hmac(&salted, b"Server Key");
        (
            format!("{without_proof},p={}", B64.encode(proof)),
            format!("v={}", B64.encode(hash.hmac(&server_key, auth.as_bytes()))).into_bytes(),
        )
    }

    fn exchange(hash: ScramHash, stored: &str, tried: &str) -> Result<String, ScramError> {
        let cred = Credential::from_password(hash, stored, 4096).unwrap();
        let bare = "n=al=3Dice,r=fyko+d2lbbFgONRv9qkxdawL";
        let (ex, first) = ServerExchange::start(format!("n,,{bare}").as_bytes(), |u| {
            (u == "al=ice").then(|| cred.clone())
        })?;
        let first = String::from_utf8(first).unwrap();
        assert!(first.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"));
        let (fin, expected_server_final) = client_final(hash, tried, bare, &first);
        let (user, server_final) = ex.finish(fin.as_bytes())?;
        assert_eq!(server_final, expected_server_final);
        Ok(user)
    }

    #[test]
    fn scram_exchanges_succeed_with_the_password_and_fail_without_it() {
        for hash in [ScramHash::Sha256, ScramHash::Sha512] {
            assert_eq!(exchange(hash, "pencil", "pencil").unwrap(), "al=ice");
            assert_eq!(exchange(hash, "pencil", "pen"), Err(ScramError::BadProof));
        }
    }

    #[test]
    fn unknown_users_and_malformed_messages_fail_cleanly() {
        let start = |msg: &[u8]| ServerExchange::start(msg, |_| None).map(|_| ());
        assert_eq!(start(b"n,,n=bob,r=abc"), Err(ScramError::UnknownUser));
        for bad in [
            &b""[..],
            b"n,,",
            b"x,,n=a,r=b",
            b"n,,r=b,n=a",
            b"n,,n=a=,r=b",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(start(bad), Err(ScramError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            start(b"n,,n=a,r=b,tokenauth=true"),
            Err(ScramError::Unsupported(_))
        ));
        let cred = Credential::from_password(ScramHash::Sha256, "pw", 4096).unwrap();
        let (ex, _) = ServerExchange::start(b"n,,n=a,r=b", |_| Some(cred)).unwrap();
        assert_eq!(
            ex.finish(b"c=biws,r=wrong,p=AAAA"),
            Err(ScramError::Mismatch)
        );
    }

    #[test]
    fn bootstrap_users_parse_kafkas_add_scram_syntax() {
        let users = parse_bootstrap(
            "SCRAM-SHA-512=[name=admin,password=admin-secret], SCRAM-SHA-256=[name=bob,password=\"a,b]c\",iterations=8192]",
        )
        .unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            (users[0].hash, users[0].name.as_str()),
            (ScramHash::Sha512, "admin")
        );
        assert_eq!(
            (users[1].password.as_str(), users[1].iterations),
            ("a,b]c", 8192)
        );
        assert!(!format!("{users:?}").contains("admin-secret"));
        for bad in [
            "SCRAM-SHA-1=[name=a,password=b]",
            "SCRAM-SHA-256=name=a,password=b",
            "SCRAM-SHA-256=[name=a]",
            "SCRAM-SHA-256=[name=a,password=hunter2,iterations=10]",
            "SCRAM-SHA-256=[name=a,password=hunter2,salt=x]",
        ] {
            let e = parse_bootstrap(bad).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert_eq!(parse_bootstrap("").unwrap(), vec![]);
    }

    #[test]
    fn credentials_check_iterations_and_verify_plain_passwords() {
        let c = Credential::from_password(ScramHash::Sha512, "secret", 8192).unwrap();
        assert!(c.verifies("secret"));
        assert!(!c.verifies("Secret"));
        assert_eq!(
            Credential::from_password(ScramHash::Sha256, "x", 100),
            Err(CredentialError::Iterations(100))
        );
        assert!(matches!(
            Credential::from_salted_password(ScramHash::Sha256, vec![1], &[0; 64], 4096),
            Err(CredentialError::SaltedPassword { .. })
        ));
    }
}
