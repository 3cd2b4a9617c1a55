//! Kafka's listener settings: `listeners`, `advertised.listeners`,
//! `listener.security.protocol.map` and `inter.broker.listener.name`, parsed and checked
//! together, as a Kafka broker does at start-up.

use std::collections::BTreeMap;

/// How a listener's connections are protected and authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "PLAINTEXT" => Some(Self::Plaintext),
            "SSL" => Some(Self::Ssl),
            "SASL_PLAINTEXT" => Some(Self::SaslPlaintext),
            "SASL_SSL" => Some(Self::SaslSsl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }

    /// Whether connections start with a TLS handshake.
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether connections must authenticate with SASL before anything else.
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// Kafka's default `listener.security.protocol.map`: each protocol as a listener name.
pub const DEFAULT_PROTOCOL_MAP: &str =
    "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL";

/// One listener: where it binds, how it is protected, what clients are told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// Upper case, as Kafka normalises listener names.
    pub name: String,
    pub protocol: SecurityProtocol,
    /// `HOST:PORT` to bind (port 0: one the kernel picks).
    pub bind: String,
    /// Host and port clients are told to use, from `advertised.listeners`; `None` means
    /// the bound address.
    pub advertised: Option<(String, u16)>,
}

/// Why the listener settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListenerError {
    #[error("{setting} entry {entry:?} is not NAME://HOST:PORT")]
    Malformed {
        setting: &'static str,
        entry: String,
    },
    #[error("{setting} names listener {0:?} twice", setting = "listeners")]
    DuplicateName(String),
    #[error("listeners {a:?} and {b:?} both bind port {port}")]
    DuplicatePort { a: String, b: String, port: u16 },
    #[error(
        "no security protocol for listener {0:?} in listener.security.protocol.map (add {0}:PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)"
    )]
    NoProtocol(String),
    #[error(
        "listener.security.protocol.map entry {0:?} is not NAME:PROTOCOL with a protocol of PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )]
    BadProtocol(String),
    #[error("advertised.listeners names {0:?}, which is not in listeners")]
    UnknownAdvertised(String),
    #[error("advertised.listeners entry {0:?} needs a host clients can reach and a non-zero port")]
    NotAdvertisable(String),
    #[error("inter.broker.listener.name {0:?} is not one of listeners")]
    UnknownInterBroker(String),
    #[error("listeners is empty")]
    Empty,
}

/// `NAME://HOST:PORT` into the name (upper case), host and port.
fn parse_entry(setting: &'static str, entry: &str) -> Result<(String, String, u16), ListenerError> {
    let malformed = || ListenerError::Malformed {
        setting,
        entry: entry.to_string(),
    };
    let (name, addr) = entry.split_once("://").ok_or_else(malformed)?;
    let (host, port) = addr.rsplit_once(':').ok_or_else(malformed)?;
    let port: u16 = port.parse().map_err(|_| malformed())?;
    let name = name.trim().to_ascii_uppercase();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(malformed());
    }
    Ok((name, host.trim_matches(['[', ']']).to_string(), port))
}

/// Kafka's `listener.security.protocol.map`, name to protocol.
pub fn parse_protocol_map(s: &str) -> Result<BTreeMap<String, SecurityProtocol>, ListenerError> {
    crate::list_entries(s, ',')
        .map(|e| {
            let (name, proto) = e
                .split_once(':')
                .ok_or_else(|| ListenerError::BadProtocol(e.to_string()))?;
            let proto = SecurityProtocol::parse(proto)
                .ok_or_else(|| ListenerError::BadProtocol(e.to_string()))?;
            Ok((name.trim().to_ascii_uppercase(), proto))
        })
        .collect()
}

/// The listeners a broker serves, and the name of the one other brokers use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listeners {
    pub listeners: Vec<Listener>,
    pub inter_broker: String,
}

impl Listeners {
    /// Checks and combines the four settings. `inter_broker` empty means the first
    /// listener.
    pub fn resolve(
        listeners: &str,
        advertised: &str,
        protocol_map: &str,
        inter_broker: &str,
    ) -> Result<Self, ListenerError> {
        let map = parse_protocol_map(protocol_map)?;
        let mut out: Vec<Listener> = Vec::new();
        for entry in crate::list_entries(listeners, ',') {
            let (name, host, port) = parse_entry("listeners", entry)?;
            if out.iter().any(|l| l.name == name) {
                return Err(ListenerError::DuplicateName(name));
            }
            let protocol = *map
                .get(&name)
                .ok_or_else(|| ListenerError::NoProtocol(name.clone()))?;
            if port != 0
                && let Some(other) = out.iter().find(|l| l.bind.ends_with(&format!(":{port}")))
            {
                return Err(ListenerError::DuplicatePort {
                    a: other.name.clone(),
                    b: name,
                    port,
                });
            }
            let host = if host.is_empty() {
                "0.0.0.0".to_string()
            } else {
                host
            };
            let bind = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            out.push(Listener {
                name,
                protocol,
                bind,
                advertised: None,
            });
        }
        if out.is_empty() {
            return Err(ListenerError::Empty);
        }
        for entry in crate::list_entries(advertised, ',') {
            let (name, host, port) = parse_entry("advertised.listeners", entry)?;
            let listener = out
                .iter_mut()
                .find(|l| l.name == name)
                .ok_or_else(|| ListenerError::UnknownAdvertised(name.clone()))?;
            if host.is_empty() || host == "0.0.0.0" || host == "::" || port == 0 {
                return Err(ListenerError::NotAdvertisable(entry.to_string()));
            }
            listener.advertised = Some((host, port));
        }
        let inter_broker = match inter_broker.trim() {
            "" => out[0].name.clone(),
            name => {
                let name = name.to_ascii_uppercase();
                if !out.iter().any(|l| l.name == name) {
                    return Err(ListenerError::UnknownInterBroker(name));
                }
                name
            }
        };
        Ok(Self {
            listeners: out,
            inter_broker,
        })
    }

    /// The one listener of `--kafka-listen`/`--advertised-listener`, named PLAINTEXT as
    /// in Kafka, with the protocol `protocol_map` gives that name (PLAINTEXT unless
    /// mapped otherwise, e.g. `PLAINTEXT:SSL`).
    pub fn single(
        bind: &str,
        advertised: Option<(String, u16)>,
        protocol_map: &str,
    ) -> Result<Self, ListenerError> {
        let protocol = parse_protocol_map(protocol_map)?
            .get("PLAINTEXT")
            .copied()
            .unwrap_or(SecurityProtocol::Plaintext);
        Ok(Self {
            listeners: vec![Listener {
                name: "PLAINTEXT".to_string(),
                protocol,
                bind: bind.to_string(),
                advertised,
            }],
            inter_broker: "PLAINTEXT".to_string(),
        })
    }

    /// Whether any listener needs TLS (and so a keystore).
    pub fn any_tls(&self) -> bool {
        self.listeners.iter().any(|l| l.protocol.tls())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn listeners_resolve_with_kafkas_defaults() {
        let l = Listeners::resolve(
            "internal://127.0.0.1:9092, EXTERNAL://:0",
            "EXTERNAL://kafka.example.com:30094",
            "INTERNAL:PLAINTEXT,EXTERNAL:SASL_SSL",
            "",
        )
        .unwrap();
        assert_eq!(l.inter_broker, "INTERNAL");
        assert_eq!(l.listeners[0].bind, "127.0.0.1:9092");
        assert_eq!(l.listeners[0].advertised, None);
        assert_eq!(l.listeners[1].bind, "0.0.0.0:0");
        assert_eq!(l.listeners[1].protocol, SecurityProtocol::SaslSsl);
        assert_eq!(
            l.listeners[1].advertised,
            Some(("kafka.example.com".to_string(), 30094))
        );
        let d = Listeners::resolve(
            "SASL_SSL://[::1]:9093",
            "",
            DEFAULT_PROTOCOL_MAP,
            "sasl_ssl",
        )
        .unwrap();
        assert_eq!(d.listeners[0].bind, "[::1]:9093");
        assert!(d.any_tls());
        let single = Listeners::single("127.0.0.1:9092", None, "PLAINTEXT:SSL").unwrap();
        assert_eq!(single.listeners[0].protocol, SecurityProtocol::Ssl);
        let plain = Listeners::single("127.0.0.1:9092", None, DEFAULT_PROTOCOL_MAP).unwrap();
        assert_eq!(plain.listeners[0].protocol, SecurityProtocol::Plaintext);
    }

    #[test]
    fn bad_listener_settings_are_refused_with_what_is_wrong() {
        let map = DEFAULT_PROTOCOL_MAP;
        let err = |l: &str, a: &str, m: &str, i: &str| Listeners::resolve(l, a, m, i).err();
        assert!(matches!(
            err("PLAINTEXT://127.0.0.1", "", map, ""),
            Some(ListenerError::Malformed { .. })
        ));
        assert_eq!(
            err("PLAINTEXT://:1,plaintext://:2", "", map, ""),
            Some(ListenerError::DuplicateName("PLAINTEXT".into()))
        );
        assert!(matches!(
            err("PLAINTEXT://:9092,SSL://:9092", "", map, ""),
            Some(ListenerError::DuplicatePort { port: 9092, .. })
        ));
        assert_eq!(
            err("CLIENT://:9092", "", map, ""),
            Some(ListenerError::NoProtocol("CLIENT".into()))
        );
        assert_eq!(
            err("PLAINTEXT://:9092", "", "PLAINTEXT:TLS", ""),
            Some(ListenerError::BadProtocol("PLAINTEXT:TLS".into()))
        );
        assert_eq!(
            err("PLAINTEXT://:9092", "SSL://h:1", map, ""),
            Some(ListenerError::UnknownAdvertised("SSL".into()))
        );
        assert!(matches!(
            err("PLAINTEXT://:9092", "PLAINTEXT://0.0.0.0:9092", map, ""),
            Some(ListenerError::NotAdvertisable(_))
        ));
        assert_eq!(
            err("PLAINTEXT://:9092", "", map, "SSL"),
            Some(ListenerError::UnknownInterBroker("SSL".into()))
        );
        assert_eq!(err("", "", map, ""), Some(ListenerError::Empty));
    }
}
