//! TLS for Kafka listeners with rustls (TLS 1.2 and 1.3 only): the server certificate
//! from Kafka's PEM keystore (one file with the private key and the certificate chain),
//! re-read when it changes on disk (cert-manager rotates it in place), and optional
//! client certificates checked against a PEM truststore (mTLS), whose subject becomes
//! the connection's principal as Kafka names it (`User:CN=...,OU=...`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::sasl::Principal;

/// Kafka's `ssl.client.auth`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Requested,
    Required,
}

impl ClientAuth {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "none" => Some(Self::None),
            "requested" => Some(Self::Requested),
            "required" => Some(Self::Required),
            _ => None,
        }
    }
}

/// Where the certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// `ssl.keystore.location`: private key and certificate chain, PEM; or a directory
    /// holding `tls.key` and `tls.crt` (a Kubernetes TLS Secret mounted as a volume).
    pub keystore: PathBuf,
    /// `ssl.truststore.location`: CA certificates client certificates must chain to.
    pub truststore: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(
        "ssl.client.auth={0} needs ssl.truststore.location (the CA bundle client certificates are checked against)"
    )]
    NoTruststore(&'static str),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn pem_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A keystore's PEM: the file itself, or for a directory laid out as a Kubernetes TLS
/// Secret (cert-manager's), its `tls.key` then `tls.crt`.
fn read_keystore(path: &Path) -> Result<Vec<u8>, TlsError> {
    if !path.is_dir() {
        return read(path);
    }
    let mut pem = read(&path.join("tls.key"))?;
    pem.push(b'\n');
    pem.extend(read(&path.join("tls.crt"))?);
    Ok(pem)
}

/// The CA certificates of a PEM truststore.
fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&read(path)?) {
        let cert = cert.map_err(|e| pem_error(path, e))?;
        roots.add(cert).map_err(|e| pem_error(path, e))?;
    }
    if roots.is_empty() {
        return Err(pem_error(path, "no CA certificate"));
    }
    Ok(roots)
}

/// A PEM keystore's key and chain, checked to belong together.
fn certified_key(path: &Path, pem: &[u8]) -> Result<Arc<CertifiedKey>, TlsError> {
    if pem
        .windows(b"ENCRYPTED PRIVATE KEY".len())
        .any(|w| w == b"ENCRYPTED PRIVATE KEY")
    {
        return Err(pem_error(
            path,
            "the private key is encrypted; Strata reads unencrypted PEM keys only (no ssl.key.password)",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| pem_error(path, format!("no private key: {e}")))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(path, format!("certificates: {e}")))?;
    if chain.is_empty() {
        return Err(pem_error(path, "no certificate"));
    }
    let key = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| pem_error(path, format!("key and certificate: {e}")))?;
    Ok(Arc::new(key))
}

/// The keystore in force, and the bytes it was read from (to notice a change).
pub(crate) struct KeyStore {
    path: PathBuf,
    current: RwLock<(Vec<u8>, Arc<CertifiedKey>)>,
}

impl KeyStore {
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(c) => c.1.clone(),
            Err(poisoned) => poisoned.into_inner().1.clone(),
        }
    }
}

impl ResolvesServerCert for KeyStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS server configuration whose certificate follows its file.
#[derive(Clone)]
pub struct TlsServer {
    /// For SSL listeners: client certificates as `ssl.client.auth` says.
    config: Arc<ServerConfig>,
    /// For SASL_SSL listeners, where SASL authenticates the client (Kafka applies
    /// `ssl.client.auth` there only when it is set for that listener).
    sasl_config: Arc<ServerConfig>,
    keys: Arc<KeyStore>,
    /// The truststore's CAs, if one is configured.
    roots: Option<Arc<RootCertStore>>,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServer")
            .field("keystore", &self.keys.path)
            .finish_non_exhaustive()
    }
}

impl TlsServer {
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let pem = read_keystore(&settings.keystore)?;
        let key = certified_key(&settings.keystore, &pem)?;
        let keys = Arc::new(KeyStore {
            path: settings.keystore.clone(),
            current: RwLock::new((pem, key)),
        });
        let builder = || {
            ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        };
        let sasl_config = builder()?
            .with_no_client_auth()
            .with_cert_resolver(keys.clone());
        let roots = match &settings.truststore {
            Some(path) => Some(Arc::new(load_roots(path)?)),
            None => None,
        };
        let builder = builder()?;
        let builder = match (settings.client_auth, &roots) {
            (ClientAuth::None, _) => builder.with_no_client_auth(),
            (auth, None) => {
                return Err(TlsError::NoTruststore(match auth {
                    ClientAuth::Required => "required",
                    _ => "requested",
                }));
            }
            (auth, Some(roots)) => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
                let verifier = match auth {
                    ClientAuth::Requested => verifier.allow_unauthenticated(),
                    _ => verifier,
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| TlsError::Verifier(e.to_string()))?,
                )
            }
        };
        let config = builder.with_cert_resolver(keys.clone());
        Ok(Self {
            config: Arc::new(config),
            sasl_config: Arc::new(sasl_config),
            keys,
            roots,
        })
    }

    pub(crate) fn keys(&self) -> Arc<KeyStore> {
        self.keys.clone()
    }

    /// Whether `ssl.truststore.location` is set (TLS between nodes needs it).
    pub fn has_truststore(&self) -> bool {
        self.roots.is_some()
    }

    pub(crate) fn roots(&self) -> Option<Arc<RootCertStore>> {
        self.roots.clone()
    }

    /// The acceptor of an SSL listener (`client_certificates`) or a SASL_SSL one.
    pub fn acceptor(&self, client_certificates: bool) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(match client_certificates {
            true => self.config.clone(),
            false => self.sasl_config.clone(),
        })
    }

    /// Reads the keystore again; `Ok(true)` if it changed and the new certificate is
    /// now served. A file that does not load leaves the previous certificate in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let pem = read_keystore(&self.keys.path)?;
        let unchanged = match self.keys.current.read() {
            Ok(c) => c.0 == pem,
            Err(p) => p.into_inner().0 == pem,
        };
        if unchanged {
            return Ok(false);
        }
        let key = certified_key(&self.keys.path, &pem)?;
        match self.keys.current.write() {
            Ok(mut c) => *c = (pem, key),
            Err(p) => *p.into_inner() = (pem, key),
        }
        Ok(true)
    }

    /// Re-reads the keystore every `every` until `stop`; new connections get the new
    /// certificate, established ones keep theirs. A rotation caught halfway (a key that
    /// does not match the certificate yet) is retried at the next tick.
    /// `observe` hears of every change: `true` reloaded, `false` refused.
    pub async fn watch(self, every: Duration, stop: CancellationToken, observe: impl Fn(bool)) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.reload() {
                Ok(true) => {
                    failing = false;
                    observe(true);
                    info!(keystore = %self.keys.path.display(), "TLS certificate reloaded");
                }
                Ok(false) => failing = false,
                Err(e) => {
                    if !failing {
                        observe(false);
                        warn!(error = %e, "TLS keystore changed but does not load; the previous certificate stays in force");
                    }
                    failing = true;
                }
            }
        }
    }
}

/// Short names Kafka (Java's X500Principal, RFC 2253) uses for attribute types.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// RFC 2253 escaping of an attribute value.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let edge =
            (i == 0 && (c == ' ' || c == '#')) || (i + 1 == value.chars().count() && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The principal of a verified client certificate: its subject in RFC 2253 form (last
/// RDN first, as Kafka shows it), e.g. `User:CN=alice,OU=eng,O=Example`.
pub fn certificate_principal(der: &[u8]) -> Option<Principal> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut rdns: Vec<String> = cert
        .subject()
        .iter_rdn()
        .map(|rdn| {
            rdn.iter()
                .map(|attr| {
                    let oid = attr.attr_type().to_id_string();
                    let value = attr.as_str().map(escape).unwrap_or_else(|_| {
                        let hex: String = attr
                            .attr_value()
                            .data
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        format!("#{hex}")
                    });
                    format!("{}={value}", attribute_name(&oid).unwrap_or(&oid))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    rdns.reverse();
    Some(Principal::user(rdns.join(",")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    fn keystore(cn: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Example, Inc");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        format!("{}{}", key.serialize_pem(), cert.pem())
    }

    fn served_subject(server: &TlsServer) -> Vec<u8> {
        let c = server.keys.current.read().unwrap();
        c.1.cert[0].to_vec()
    }

    #[test]
    fn the_keystore_is_reloaded_when_it_changes_and_kept_when_it_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.pem");
        std::fs::write(&path, keystore("one")).unwrap();
        let settings = TlsSettings {
            keystore: path.clone(),
            truststore: None,
            client_auth: ClientAuth::None,
        };
        let server = TlsServer::load(&settings).unwrap();
        let first = served_subject(&server);
        assert!(!server.reload().unwrap(), "nothing changed yet");
        std::fs::write(&path, keystore("two")).unwrap();
        assert!(server.reload().unwrap());
        let second = served_subject(&server);
        assert_ne!(first, second);
        assert_eq!(
            certificate_principal(&second).unwrap().to_string(),
            "User:CN=two,O=Example\\, Inc"
        );
        // Half-written: the new key with the old certificate. Refused; "two" stays.
        let a = keystore("three");
        let b = keystore("four");
        let key_end = a.find("-----BEGIN CERTIFICATE").unwrap();
        let cert_start = b.find("-----BEGIN CERTIFICATE").unwrap();
        std::fs::write(&path, format!("{}{}", &a[..key_end], &b[cert_start..])).unwrap();
        assert!(matches!(server.reload(), Err(TlsError::Pem { .. })));
        assert_eq!(served_subject(&server), second);
        std::fs::write(&path, "not pem").unwrap();
        assert!(server.reload().is_err());
        assert!(matches!(
            TlsServer::load(&settings),
            Err(TlsError::Pem { .. })
        ));
        // A Kubernetes TLS Secret's layout: a directory with tls.key and tls.crt.
        let secret = dir.path().join("secret");
        std::fs::create_dir(&secret).unwrap();
        let pem = keystore("six");
        let split = pem.find("-----BEGIN CERTIFICATE").unwrap();
        std::fs::write(secret.join("tls.key"), &pem[..split]).unwrap();
        std::fs::write(secret.join("tls.crt"), &pem[split..]).unwrap();
        let from_secret = TlsServer::load(&TlsSettings {
            keystore: secret,
            ..settings.clone()
        })
        .unwrap();
        assert_eq!(
            certificate_principal(&served_subject(&from_secret))
                .unwrap()
                .to_string(),
            "User:CN=six,O=Example\\, Inc"
        );
        let needs_trust = TlsSettings {
            client_auth: ClientAuth::Required,
            ..settings
        };
        std::fs::write(&path, keystore("five")).unwrap();
        assert!(matches!(
            TlsServer::load(&needs_trust),
            Err(TlsError::NoTruststore("required"))
        ));
    }
}
