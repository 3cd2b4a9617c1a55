//! SASL as Kafka speaks it after SaslHandshake: the mechanisms, the exchange each runs
//! over SaslAuthenticate tokens, and the principal it ends with.

use std::fmt;

use crate::oauth::{JwtValidator, bearer_token};
use crate::scram::{Credential, ScramError, ScramHash, ServerExchange};

/// The SASL mechanisms Strata serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Scram(ScramHash),
    OauthBearer,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Self::Plain),
            "OAUTHBEARER" => Some(Self::OauthBearer),
            other => ScramHash::from_mechanism(other).map(Self::Scram),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::Scram(h) => h.mechanism(),
            Self::OauthBearer => "OAUTHBEARER",
        }
    }
}

/// Who a connection acts as, in Kafka's `User:name` form.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Principal {
    pub name: String,
}

impl Principal {
    /// The principal of a connection that did not authenticate (PLAINTEXT, or SSL
    /// without a client certificate).
    pub fn anonymous() -> Self {
        Self::user("ANONYMOUS")
    }

    pub fn user(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == "ANONYMOUS"
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "User:{}", self.name)
    }
}

/// Where an exchange finds a user's SCRAM credential for a hash.
pub trait CredentialStore {
    fn scram(&self, user: &str, hash: ScramHash) -> Option<Credential>;
}

impl<F: Fn(&str, ScramHash) -> Option<Credential>> CredentialStore for F {
    fn scram(&self, user: &str, hash: ScramHash) -> Option<Credential> {
        self(user, hash)
    }
}

/// What an exchange checks logins against.
pub struct Verifiers<'a> {
    pub credentials: &'a dyn CredentialStore,
    /// OAUTHBEARER's token validator, if that mechanism is configured.
    pub tokens: Option<&'a JwtValidator>,
    /// The time tokens are checked at, in seconds since the epoch.
    pub now_s: i64,
}

/// What one SaslAuthenticate token led to.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this back and wait for the client's next token.
    Challenge(Vec<u8>),
    /// Authenticated: send `answer` (possibly empty) back. `expires_s`: when the
    /// credential itself expires (an OAUTHBEARER token's `exp`).
    Done {
        principal: Principal,
        answer: Vec<u8>,
        expires_s: Option<i64>,
    },
    /// Authentication failed; the reason is for the log only.
    Failed(String),
}

/// One SASL exchange in progress.
#[derive(Debug)]
pub enum Exchange {
    Plain,
    ScramFirst(ScramHash),
    ScramFinal(Box<ServerExchange>),
    OauthBearer,
    Finished,
}

impl Exchange {
    pub fn new(mechanism: Mechanism) -> Self {
        match mechanism {
            Mechanism::Plain => Self::Plain,
            Mechanism::Scram(h) => Self::ScramFirst(h),
            Mechanism::OauthBearer => Self::OauthBearer,
        }
    }

    /// Takes the client's next token.
    pub fn step(&mut self, token: &[u8], with: &Verifiers<'_>) -> Step {
        let store = with.credentials;
        match std::mem::replace(self, Self::Finished) {
            Self::Plain => plain(token, store),
            Self::OauthBearer => {
                let Some(tokens) = with.tokens else {
                    return Step::Failed("OAUTHBEARER is not configured".to_string());
                };
                match bearer_token(token).and_then(|t| tokens.validate(t, with.now_s)) {
                    Ok(claims) => Step::Done {
                        principal: Principal::user(claims.subject),
                        answer: Vec::new(),
                        expires_s: Some(claims.expires_s),
                    },
                    Err(e) => Step::Failed(e.to_string()),
                }
            }
            Self::ScramFirst(hash) => {
                match ServerExchange::start(token, |user| store.scram(user, hash)) {
                    Ok((exchange, answer)) => {
                        *self = Self::ScramFinal(Box::new(exchange));
                        Step::Challenge(answer)
                    }
                    Err(e) => failed(&e),
                }
            }
            Self::ScramFinal(exchange) => match exchange.finish(token) {
                Ok((user, answer)) => Step::Done {
                    principal: Principal::user(user),
                    answer,
                    expires_s: None,
                },
                Err(e) => failed(&e),
            },
            Self::Finished => Step::Failed("the exchange has already ended".to_string()),
        }
    }
}

fn failed(e: &ScramError) -> Step {
    Step::Failed(e.to_string())
}

/// SASL/PLAIN (RFC 4616): `authzid NUL authcid NUL password`, checked against the
/// user's SCRAM credential (either hash), so one set of users serves both mechanisms.
fn plain(token: &[u8], store: &dyn CredentialStore) -> Step {
    let Ok(text) = std::str::from_utf8(token) else {
        return Step::Failed("PLAIN message is not UTF-8".to_string());
    };
    let mut parts = text.split('\0');
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Step::Failed("malformed PLAIN message".to_string());
    };
    if user.is_empty() {
        return Step::Failed("PLAIN message without a user name".to_string());
    }
    if !authzid.is_empty() && authzid != user {
        return Step::Failed("an authorization id other than the user".to_string());
    }
    let known = [ScramHash::Sha512, ScramHash::Sha256]
        .into_iter()
        .find_map(|h| store.scram(user, h));
    match known {
        Some(c) if c.verifies(password) => Step::Done {
            principal: Principal::user(user),
            answer: Vec::new(),
            expires_s: None,
        },
        Some(_) => Step::Failed("wrong password".to_string()),
        None => {
            // As long as a wrong password takes, so timing does not tell which users
            // exist.
            static DUMMY: std::sync::OnceLock<Option<Credential>> = std::sync::OnceLock::new();
            let dummy = DUMMY.get_or_init(|| {
                Credential::from_password(ScramHash::Sha512, "", crate::scram::MIN_ITERATIONS).ok()
            });
            if let Some(d) = dummy {
                let _ = d.verifies(password);
            }
            Step::Failed("unknown user".to_string())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn plain_checks_the_password_against_the_scram_credential() {
        let cred = Credential::from_password(ScramHash::Sha256, "s3cret", 4096).unwrap();
        let store = move |u: &str, h: ScramHash| {
            (u == "alice" && h == ScramHash::Sha256).then(|| cred.clone())
        };
        let with = Verifiers {
            credentials: &store,
            tokens: None,
            now_s: 0,
        };
        let run = |token: &[u8]| Exchange::new(Mechanism::Plain).step(token, &with);
        assert_eq!(
            run(b"\0alice\0s3cret"),
            Step::Done {
                principal: Principal::user("alice"),
                answer: vec![],
                expires_s: None,
            }
        );
        assert_eq!(
            run(b"alice\0alice\0s3cret"),
            Step::Done {
                principal: Principal::user("alice"),
                answer: vec![],
                expires_s: None,
            }
        );
        for bad in [
            &b"\0alice\0wrong"[..],
            b"\0bob\0s3cret",
            b"bob\0alice\0s3cret",
            b"\0alice",
            b"\0\0s3cret",
            b"\0alice\0s3cret\0x",
            b"\xff",
        ] {
            assert!(matches!(run(bad), Step::Failed(_)), "{bad:?}");
        }
        assert_eq!(Principal::user("alice").to_string(), "User:alice");
        assert_eq!(
            Mechanism::parse("SCRAM-SHA-512"),
            Some(Mechanism::Scram(ScramHash::Sha512))
        );
        assert_eq!(Mechanism::parse("GSSAPI"), None);
    }
}
