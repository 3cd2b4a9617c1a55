//! How nodes of one cluster talk to each other: plain TCP, or TLS both ways (mTLS) with
//! the node's own keystore as its certificate, peers' certificates checked against the
//! truststore. Used by the metadata quorum's RPCs and by brokers' connections to each
//! other (replication, transaction markers) when those are configured for TLS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::ServerName;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::tls::{KeyStore, TlsError, TlsServer, certificate_principal};

/// A connection, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub type BoxStream = Box<dyn Stream>;

impl std::fmt::Debug for dyn Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

/// Plain TCP, or mTLS between the cluster's nodes.
#[derive(Clone, Default)]
pub enum Transport {
    #[default]
    Plain,
    Tls(Arc<PeerTls>),
}

/// The same transport: both plain, or the same TLS setup.
impl PartialEq for Transport {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Plain, Self::Plain) => true,
            (Self::Tls(a), Self::Tls(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Transport {}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Plain => "Plain",
            Self::Tls(_) => "Tls",
        })
    }
}

/// Both sides of mTLS between nodes.
pub struct PeerTls {
    connector: tokio_rustls::TlsConnector,
    acceptor: tokio_rustls::TlsAcceptor,
    keys: Arc<KeyStore>,
    /// Principals accepted as peers; empty: this node's own certificate subject.
    peers: Vec<String>,
}

impl PeerTls {
    /// Whether the verified certificate `der` belongs to a node of this cluster: the
    /// truststore's CA may also sign clients', which must not reach the quorum.
    fn is_peer(&self, der: &[u8]) -> bool {
        let Some(who) = certificate_principal(der).map(|p| p.to_string()) else {
            return false;
        };
        if self.peers.is_empty() {
            let mine = self.keys.current();
            return mine
                .cert
                .first()
                .and_then(|c| certificate_principal(c))
                .is_some_and(|me| me.to_string() == who);
        }
        self.peers.contains(&who)
    }
}

impl ResolvesClientCert for KeyStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore").finish_non_exhaustive()
    }
}

impl Transport {
    /// mTLS with `server`'s keystore (followed as it is re-read) and truststore, which
    /// peers' certificates must chain to (required). Accepted connections must also
    /// come from one of `peers` (principals such as `User:CN=strata,O=Example`), or,
    /// if none are named, from a certificate with this node's own subject.
    pub fn tls(server: &TlsServer, peers: Vec<String>) -> Result<Self, TlsError> {
        let roots = server.roots().ok_or(TlsError::NoTruststore("required"))?;
        let provider = crate::tls::provider();
        let client = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_root_certificates(roots.clone())
            .with_client_cert_resolver(server.keys());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let accept = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(server.keys());
        Ok(Self::Tls(Arc::new(PeerTls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(accept)),
            keys: server.keys(),
            peers,
        })))
    }

    /// Connects to `addr` (`HOST:PORT`), from `source` when given (a node whose
    /// listeners are bound to one address of a multi-homed host talks from it too);
    /// with TLS, `HOST` is the name the peer's certificate must carry.
    pub async fn connect(&self, addr: &str, source: Option<IpAddr>) -> std::io::Result<BoxStream> {
        let tcp = tcp_connect(addr, source).await?;
        let _ = tcp.set_nodelay(true);
        match self {
            Self::Plain => Ok(Box::new(tcp)),
            Self::Tls(t) => {
                let host = addr
                    .rsplit_once(':')
                    .map_or(addr, |(h, _)| h)
                    .trim_matches(['[', ']']);
                let name = ServerName::try_from(host.to_string())
                    .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
                Ok(Box::new(t.connector.connect(name, tcp).await?))
            }
        }
    }

    /// The server side of an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<BoxStream> {
        let _ = tcp.set_nodelay(true);
        match self {
            Self::Plain => Ok(Box::new(tcp)),
            Self::Tls(t) => {
                let tls = t.acceptor.accept(tcp).await?;
                let peer = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
                if !peer.is_some_and(|c| t.is_peer(c)) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "the peer's certificate is not one of this cluster's nodes",
                    ));
                }
                Ok(Box::new(tls))
            }
        }
    }
}

/// TCP to `addr`, from `source` when given.
async fn tcp_connect(addr: &str, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let mut last = None;
    for target in tokio::net::lookup_host(addr).await? {
        let socket = match target {
            SocketAddr::V4(_) if source.is_ipv4() => TcpSocket::new_v4()?,
            SocketAddr::V6(_) if source.is_ipv6() => TcpSocket::new_v6()?,
            _ => continue,
        };
        socket.bind(SocketAddr::new(source, 0))?;
        match socket.connect(target).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("{addr} has no address reachable from {source}"),
        )
    }))
}
