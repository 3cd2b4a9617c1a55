//! How a Kafka connection proves who it is: the listeners and their security protocols
//! (Kafka's `listeners`, `advertised.listeners`, `listener.security.protocol.map`), TLS
//! with certificates reloaded from PEM files, SASL (PLAIN, SCRAM-SHA-256/512,
//! OAUTHBEARER with JWTs checked against a JWKS) and the
//! SCRAM credentials it checks, the principal a connection ends up with, and Kafka's
//! ACL model with the standard authorizer's decisions (`acl`), and the transport nodes
//! use between themselves (plain TCP or mTLS, `transport`).
//!
//! This crate owns the byte-level exchanges and the cryptography. It does not touch the
//! metadata quorum (credentials are looked up through a function the caller passes), the
//! broker's state or Kafka's wire structs: the broker's handlers convert between those and
//! the calls here, and the metadata service stores what [`scram::Credential`] derives
//! and the [`acl::Acl`] bindings.

pub mod acl;
pub mod listeners;
pub mod oauth;
pub mod sasl;
pub mod scram;
pub mod tls;
pub mod transport;

pub use listeners::{Listener, ListenerError, SecurityProtocol};

/// The entries of a list-valued setting (`User:a;User:b`, `aud-1,aud-2`): split at `sep`,
/// trimmed, the empty ones dropped.
pub fn list_entries(s: &str, sep: char) -> impl Iterator<Item = &str> {
    s.split(sep).map(str::trim).filter(|e| !e.is_empty())
}
pub use sasl::{Mechanism, Principal};
