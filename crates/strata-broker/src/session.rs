//! What a connection has established about its client: the listener it came in on,
//! whether it still has to authenticate (SASL), and the principal it acts as.
//!
//! The exchanges themselves are `strata_security`'s; this module keeps their state
//! between requests and decides which requests a connection may send in that state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use kafka_protocol::messages::ApiKey;
use strata_security::sasl::Exchange;
use strata_security::{Mechanism, Principal, SecurityProtocol};

/// A listener as its connections see it.
#[derive(Debug)]
pub struct ListenerInfo {
    pub name: String,
    pub protocol: SecurityProtocol,
}

/// Where a connection is in SASL authentication.
#[derive(Debug)]
pub(crate) enum Sasl {
    /// No exchange under way (none needed, none started, or one finished).
    Idle,
    /// SaslHandshake chose this mechanism; SaslAuthenticate comes next.
    Handshaken(Mechanism),
    /// Tokens are being exchanged.
    Exchanging(Mechanism, Exchange),
    /// SaslHandshake v0 chose this mechanism: the tokens come as bare frames, not in
    /// SaslAuthenticate requests (Kafka before 1.0).
    Bare(Mechanism, Exchange),
}

/// One connection's security state.
#[derive(Debug)]
pub(crate) struct Session {
    pub peer: SocketAddr,
    pub listener: Arc<ListenerInfo>,
    /// `None` until a SASL listener's client has authenticated.
    pub principal: Option<Principal>,
    /// The mechanism it authenticated with (a re-authentication must use the same).
    pub mechanism: Option<Mechanism>,
    pub sasl: Sasl,
    /// When the SASL session ends unless the client re-authenticates (KIP-368,
    /// `connections.max.reauth.ms`).
    pub expires: Option<Instant>,
}

/// Why a request is refused before it is handled (a metric label and the log detail);
/// the connection is closed, as Kafka does.
pub(crate) type Refusal = (&'static str, String);

impl Session {
    /// A new connection, as whom TLS established (a client certificate's subject) or
    /// anonymous; on a SASL listener, nobody yet.
    pub fn new(peer: SocketAddr, listener: Arc<ListenerInfo>, tls: Option<Principal>) -> Self {
        let principal = match listener.protocol.sasl() {
            true => None,
            false => Some(tls.unwrap_or_else(Principal::anonymous)),
        };
        Self {
            peer,
            listener,
            principal,
            mechanism: None,
            sasl: Sasl::Idle,
            expires: None,
        }
    }

    /// Whether the connection may send `api` now.
    pub fn admits(&self, api: ApiKey, now: Instant) -> Result<(), Refusal> {
        let sasl_api = matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        );
        if sasl_api {
            return Ok(());
        }
        if self.principal.is_none() || !matches!(self.sasl, Sasl::Idle) {
            return Err((
                "unauthenticated_request",
                format!(
                    "{api:?} request before SASL authentication completed on listener {}",
                    self.listener.name
                ),
            ));
        }
        if self.expires.is_some_and(|e| now >= e) {
            return Err((
                "reauthentication_required",
                format!(
                    "{api:?} request after the SASL session expired (connections.max.reauth.ms)"
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn session(protocol: SecurityProtocol) -> Session {
        let listener = Arc::new(ListenerInfo {
            name: "X".into(),
            protocol,
        });
        Session::new("127.0.0.1:1".parse().unwrap(), listener, None)
    }

    #[test]
    fn sasl_listeners_admit_only_the_handshake_until_authenticated() {
        let now = Instant::now();
        let mut s = session(SecurityProtocol::SaslSsl);
        assert!(s.admits(ApiKey::ApiVersions, now).is_ok());
        assert!(s.admits(ApiKey::SaslHandshake, now).is_ok());
        assert_eq!(
            s.admits(ApiKey::Metadata, now).unwrap_err().0,
            "unauthenticated_request"
        );
        s.principal = Some(Principal::user("alice"));
        assert!(s.admits(ApiKey::Metadata, now).is_ok());
        s.sasl = Sasl::Handshaken(Mechanism::Plain);
        assert!(
            s.admits(ApiKey::Produce, now).is_err(),
            "mid re-authentication"
        );
        s.sasl = Sasl::Idle;
        s.expires = Some(now);
        assert_eq!(
            s.admits(ApiKey::Fetch, now).unwrap_err().0,
            "reauthentication_required"
        );
        assert!(s.admits(ApiKey::SaslHandshake, now).is_ok());
        let p = session(SecurityProtocol::Plaintext);
        assert_eq!(p.principal, Some(Principal::anonymous()));
        assert!(p.admits(ApiKey::Produce, now).is_ok());
    }
}
