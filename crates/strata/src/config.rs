//! `strata serve` settings: defaults, then the TOML config file, then `STRATA_*`
//! environment variables, then command-line flags (later wins).
//!
//! The file has top-level Strata settings and a `[kafka]` table of broker settings by
//! Kafka's names (`num.partitions = 3`, written dotted or quoted). Every environment
//! variable is `STRATA_` plus the key in upper case with `.` and `-` as `_`:
//! `STRATA_DATA_DIR`, `STRATA_KAFKA_NUM_PARTITIONS`. Unknown keys and variables are
//! errors that name them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;
use strata_broker::{BROKER_CONFIGS, BrokerConfig, ConfigError, Endpoint, closest};
use strata_security::listeners::Listeners;
use strata_security::tls::{ClientAuth, TlsSettings};
use strata_tier::StoreConfig;

pub const DEFAULT_KAFKA_LISTEN: &str = "127.0.0.1:9092";
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:9644";

/// The config file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    node_id: Option<i32>,
    data_dir: Option<PathBuf>,
    kafka_listen: Option<String>,
    advertised_listener: Option<String>,
    http_listen: Option<String>,
    log_level: Option<String>,
    object_store: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    s3_allow_http: Option<bool>,
    s3_path_style: Option<bool>,
    roles: Option<String>,
    meta_listen: Option<String>,
    meta_advertised: Option<String>,
    meta_voters: Option<String>,
    rack: Option<String>,
    otlp_endpoint: Option<String>,
    kafka: Option<toml::Table>,
    /// Strata's own broker settings, written without their `strata.` prefix.
    strata: Option<toml::Table>,
}

/// Values given on the command line or through `STRATA_*` variables (clap reads both).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML config file.
    #[arg(long, env = "STRATA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the write-ahead log and metadata [default: ./data]
    #[arg(long, env = "STRATA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Kafka listener address [default: 127.0.0.1:9092]
    #[arg(long, env = "STRATA_KAFKA_LISTEN", value_name = "HOST:PORT")]
    pub kafka_listen: Option<String>,
    /// Address clients are told to connect to [default: the Kafka listener's]
    #[arg(long, env = "STRATA_ADVERTISED_LISTENER", value_name = "HOST:PORT")]
    pub advertised_listener: Option<String>,
    /// HTTP listener for /healthz, /readyz and /metrics [default: 127.0.0.1:9644]
    #[arg(long, env = "STRATA_HTTP_LISTEN", value_name = "HOST:PORT")]
    pub http_listen: Option<String>,
    /// This broker's id [default: 0]
    #[arg(long, env = "STRATA_NODE_ID")]
    pub node_id: Option<i32>,
    /// Log level or tracing filter (e.g. `info`, `strata_log=debug`) [default: RUST_LOG, else info]
    #[arg(long, env = "STRATA_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Where sealed segments go: file:///dir or s3://bucket/prefix [default: file://<data-dir>/objects]
    #[arg(long, env = "STRATA_OBJECT_STORE", value_name = "URL")]
    pub object_store: Option<String>,
    /// S3 endpoint for S3-compatible stores (MinIO, Ceph RGW) [default: AWS]
    #[arg(long, env = "STRATA_S3_ENDPOINT", value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region [default: AWS_REGION, else us-east-1]
    #[arg(long, env = "STRATA_S3_REGION", value_name = "NAME")]
    pub s3_region: Option<String>,
    /// Allow http:// S3 endpoints
    #[arg(long, env = "STRATA_S3_ALLOW_HTTP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub s3_allow_http: Option<bool>,
    /// Path-style S3 addressing (endpoint/bucket/key), as most S3-compatible stores want
    #[arg(long, env = "STRATA_S3_PATH_STYLE", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub s3_path_style: Option<bool>,
    /// What this node is: broker, meta, or both (Kafka's process.roles) [default: broker,meta]
    #[arg(long, env = "STRATA_ROLES", value_name = "ROLES")]
    pub roles: Option<String>,
    /// Where this node serves the metadata quorum's RPCs [default: 127.0.0.1:9093]
    #[arg(long, env = "STRATA_META_LISTEN", value_name = "HOST:PORT")]
    pub meta_listen: Option<String>,
    /// The address other nodes reach this node's metadata RPCs at [default: --meta-listen]
    #[arg(long, env = "STRATA_META_ADVERTISED", value_name = "HOST:PORT")]
    pub meta_advertised: Option<String>,
    /// The metadata quorum, identical on every node (Kafka's controller.quorum.voters) [default: this node alone]
    #[arg(long, env = "STRATA_META_VOTERS", value_name = "ID@HOST:PORT,...")]
    pub meta_voters: Option<String>,
    /// This broker's rack or zone (Kafka's broker.rack)
    #[arg(long, env = "STRATA_RACK", value_name = "NAME")]
    pub rack: Option<String>,
    /// Export traces and metrics over OTLP to this collector (as OTEL_EXPORTER_OTLP_ENDPOINT) [default: off, unless OTEL_EXPORTER_OTLP_ENDPOINT is set]
    #[arg(long, env = "STRATA_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
}

/// What a node runs (Kafka's `process.roles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    pub broker: bool,
    pub meta: bool,
}

/// Default of `--meta-listen`.
pub const DEFAULT_META_LISTEN: &str = "127.0.0.1:9093";

fn parse_roles(s: &str) -> anyhow::Result<Roles> {
    let mut roles = Roles {
        broker: false,
        meta: false,
    };
    for r in strata_security::list_entries(s, ',') {
        match r {
            "broker" => roles.broker = true,
            "meta" | "controller" => roles.meta = true,
            other => bail!("--roles {s:?}: unknown role {other:?} (roles are broker and meta)"),
        }
    }
    if !roles.broker && !roles.meta {
        bail!("--roles {s:?}: name at least one of broker and meta");
    }
    Ok(roles)
}

/// `ID@HOST:PORT,...` into id → address.
fn parse_voters(s: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut voters = BTreeMap::new();
    for v in strata_security::list_entries(s, ',') {
        let (id, addr) = v
            .split_once('@')
            .with_context(|| format!("--meta-voters entry {v:?} is not ID@HOST:PORT"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("--meta-voters entry {v:?}: {id:?} is not a node id"))?;
        check_listen("--meta-voters entry", addr)?;
        if voters.insert(id, addr.to_string()).is_some() {
            bail!("--meta-voters names node {id} twice");
        }
    }
    if voters.is_empty() {
        bail!("--meta-voters is empty");
    }
    Ok(voters)
}

/// The settings `strata serve` runs with.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// The Kafka listeners: Kafka's `listeners` settings, or the one PLAINTEXT listener
    /// of `--kafka-listen`/`--advertised-listener`.
    pub listeners: Listeners,
    /// The keystore and client-certificate settings of SSL and SASL_SSL listeners.
    pub tls: Option<TlsSettings>,
    pub http_listen: String,
    pub log_level: Option<String>,
    pub object_store: StoreConfig,
    pub kafka: BrokerConfig,
    pub roles: Roles,
    pub meta_listen: String,
    pub meta_advertised: String,
    /// The voters (id → address); this node alone when `--meta-voters` is not given.
    pub voters: BTreeMap<u64, String>,
    pub rack: Option<String>,
    /// The OTLP collector given by `--otlp-endpoint` (the `OTEL_*` variables are read by
    /// the exporter itself).
    pub otlp_endpoint: Option<String>,
}

impl ServeConfig {
    /// Whether the metadata quorum has other nodes than this one.
    pub fn clustered(&self) -> bool {
        self.voters.len() > 1 || !self.voters.contains_key(&(self.node_id as u64))
    }
}

/// Environment variables read by clap itself; the others name broker settings.
const FLAG_VARS: &[&str] = &[
    "STRATA_CONFIG",
    "STRATA_DATA_DIR",
    "STRATA_KAFKA_LISTEN",
    "STRATA_ADVERTISED_LISTENER",
    "STRATA_HTTP_LISTEN",
    "STRATA_NODE_ID",
    "STRATA_LOG_LEVEL",
    "STRATA_OBJECT_STORE",
    "STRATA_S3_ENDPOINT",
    "STRATA_S3_REGION",
    "STRATA_S3_ALLOW_HTTP",
    "STRATA_S3_PATH_STYLE",
    "STRATA_ROLES",
    "STRATA_META_LISTEN",
    "STRATA_META_ADVERTISED",
    "STRATA_META_VOTERS",
    "STRATA_RACK",
    "STRATA_OTLP_ENDPOINT",
];

/// The environment variable of a broker setting: `STRATA_` plus Strata's own setting
/// without its `strata.` prefix, or `STRATA_KAFKA_` plus a Kafka name; upper case, with
/// `.` and `-` as `_`.
fn env_name(key: &str) -> String {
    let (prefix, rest) = match key.strip_prefix("strata.") {
        Some(rest) => ("STRATA_", rest),
        None => ("STRATA_KAFKA_", key),
    };
    format!(
        "{prefix}{}",
        rest.to_ascii_uppercase().replace(['.', '-'], "_")
    )
}

/// Flattens `[kafka]` (where `num.partitions = 1` parses as nested tables) into
/// Kafka-named pairs.
fn flatten(
    prefix: &str,
    table: &toml::Table,
    out: &mut BTreeMap<String, String>,
) -> anyhow::Result<()> {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten(&key, t, out)?,
            toml::Value::String(s) => {
                out.insert(key, s.clone());
            }
            toml::Value::Integer(i) => {
                out.insert(key, i.to_string());
            }
            toml::Value::Boolean(b) => {
                out.insert(key, b.to_string());
            }
            toml::Value::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|i| match i {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                out.insert(key, parts.join(","));
            }
            other => bail!("[kafka] {key}: unsupported value {other}"),
        }
    }
    Ok(())
}

fn parse_endpoint(s: &str) -> anyhow::Result<Endpoint> {
    let (host, port) = s
        .rsplit_once(':')
        .with_context(|| format!("advertised listener {s:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("advertised listener {s:?} has an invalid port"))?;
    if host.is_empty() || port == 0 {
        bail!("advertised listener {s:?} needs a host and a non-zero port");
    }
    Ok(Endpoint {
        host: host.trim_matches(['[', ']']).to_string(),
        port,
    })
}

/// The keys of the config file's top level (besides the `[kafka]` and `[strata]` tables).
const FILE_KEYS: &[&str] = &[
    "node_id",
    "data_dir",
    "kafka_listen",
    "advertised_listener",
    "http_listen",
    "log_level",
    "object_store",
    "s3_endpoint",
    "s3_region",
    "s3_allow_http",
    "s3_path_style",
    "roles",
    "meta_listen",
    "meta_advertised",
    "meta_voters",
    "rack",
    "otlp_endpoint",
    "kafka",
    "strata",
];

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    for key in table.keys() {
        if !FILE_KEYS.contains(&key.as_str()) {
            let hint = closest(key, FILE_KEYS.iter().copied())
                .map_or_else(String::new, |c| format!(" (did you mean {c:?}?)"));
            bail!(
                "config file {}: unknown key {key:?}{hint}; broker settings go in the \
                 [kafka] table by their Kafka names, Strata's own in [strata]",
                path.display()
            );
        }
    }
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// Where a broker setting was given, for errors that name it.
fn file_origin(path: &Path, table: &str) -> String {
    format!("config file {} ([{table}])", path.display())
}

impl ServeConfig {
    /// Resolves the settings from `overrides` (flags and the variables clap read), the
    /// config file they name, and the other `STRATA_*` variables in `env`, and checks
    /// them all: nothing here touches the disk (but for reading the file) or the network.
    pub fn resolve(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Self> {
        let file = match &overrides.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        // Broker settings by name: (value, where it was given).
        let mut kafka: BTreeMap<String, (String, String)> = BTreeMap::new();
        let path = overrides.config.as_deref().unwrap_or(Path::new(""));
        for (table, prefix, t) in [
            ("kafka", "", &file.kafka),
            ("strata", "strata", &file.strata),
        ] {
            if let Some(t) = t {
                let mut flat = BTreeMap::new();
                flatten(prefix, t, &mut flat).with_context(|| file_origin(path, table))?;
                let origin = file_origin(path, table);
                kafka.extend(flat.into_iter().map(|(k, v)| (k, (v, origin.clone()))));
            }
        }
        for (name, value) in env {
            if !name.starts_with("STRATA_") || FLAG_VARS.contains(&name.as_str()) {
                continue;
            }
            match BROKER_CONFIGS.iter().find(|d| env_name(d.name) == name) {
                Some(d) => {
                    kafka.insert(
                        d.name.to_string(),
                        (value, format!("environment variable {name}")),
                    );
                }
                None => {
                    let hint = if name.ends_with("_SERVICE_HOST")
                        || name.ends_with("_PORT")
                        || name.contains("_PORT_")
                        || name.ends_with("_SERVICE_PORT")
                    {
                        " (it looks like a Kubernetes service link: set enableServiceLinks: false on the pod)".to_string()
                    } else {
                        let known: Vec<String> = BROKER_CONFIGS
                            .iter()
                            .map(|d| env_name(d.name))
                            .chain(FLAG_VARS.iter().map(|v| v.to_string()))
                            .collect();
                        closest(&name, known.iter().map(String::as_str))
                            .map_or_else(String::new, |c| format!(" (did you mean {c}?)"))
                    };
                    bail!("unknown environment variable {name}: not a Strata setting{hint}");
                }
            }
        }
        let kafka =
            BrokerConfig::from_pairs(kafka.iter().map(|(k, (v, _))| (k.as_str(), v.as_str())))
                .map_err(|e| {
                    let name = match &e {
                        ConfigError::Unknown(n)
                        | ConfigError::Invalid { name: n, .. }
                        | ConfigError::Refused { name: n, .. } => n,
                    };
                    let origin = kafka.get(name).map_or("settings", |(_, o)| o.as_str());
                    anyhow::anyhow!("{origin}: {e}")
                })?;
        let explicit_id = overrides.node_id.or(file.node_id);
        let node_id = explicit_id.unwrap_or(0);
        if node_id < 0 {
            bail!("node id must be 0 or more, not {node_id}");
        }
        let roles = match overrides.roles.clone().or(file.roles) {
            Some(r) => parse_roles(&r)?,
            None => Roles {
                broker: true,
                meta: true,
            },
        };
        let meta_listen = overrides
            .meta_listen
            .clone()
            .or(file.meta_listen)
            .unwrap_or_else(|| DEFAULT_META_LISTEN.into());
        check_listen("--meta-listen", &meta_listen)?;
        let meta_advertised = overrides
            .meta_advertised
            .clone()
            .or(file.meta_advertised)
            .unwrap_or_else(|| meta_listen.clone());
        check_listen("--meta-advertised", &meta_advertised)?;
        let voters = match overrides.meta_voters.clone().or(file.meta_voters) {
            Some(v) => parse_voters(&v)?,
            None => BTreeMap::from([(node_id as u64, meta_advertised.clone())]),
        };
        let me = node_id as u64;
        if voters.len() > 1 && explicit_id.is_none() {
            bail!("--node-id is required when --meta-voters names more than one node");
        }
        if roles.meta && !voters.contains_key(&me) {
            bail!(
                "node {node_id} has the meta role but is not in --meta-voters ({}): add it, or run it with --roles broker",
                voters
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if !roles.meta && voters.contains_key(&me) {
            bail!(
                "node {node_id} is in --meta-voters but does not have the meta role: give brokers-only nodes ids of their own"
            );
        }
        if let Some(addr) = voters.get(&me)
            && voters.len() > 1
            && *addr != meta_advertised
        {
            bail!(
                "--meta-voters gives node {node_id} the address {addr}, but it advertises {meta_advertised} (set --meta-advertised to the address in the list)"
            );
        }
        let rack = overrides.rack.clone().or(file.rack);
        let advertised = overrides
            .advertised_listener
            .clone()
            .or(file.advertised_listener)
            .map(|s| parse_endpoint(&s))
            .transpose()?;
        let data_dir = overrides
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data"));
        let object_store = StoreConfig {
            url: match overrides.object_store.clone().or(file.object_store) {
                Some(url) => url,
                None => {
                    let dir = std::path::absolute(&data_dir).unwrap_or_else(|_| data_dir.clone());
                    format!("file://{}", dir.join("objects").display())
                }
            },
            s3_endpoint: overrides.s3_endpoint.clone().or(file.s3_endpoint),
            s3_region: overrides.s3_region.clone().or(file.s3_region),
            s3_allow_http: overrides
                .s3_allow_http
                .or(file.s3_allow_http)
                .unwrap_or(false),
            s3_path_style: overrides
                .s3_path_style
                .or(file.s3_path_style)
                .unwrap_or(false),
            request_timeout: kafka.tier_request_timeout(),
        };
        object_store.validate()?;
        let kafka_listen = overrides.kafka_listen.clone().or(file.kafka_listen);
        let http_listen = overrides
            .http_listen
            .clone()
            .or(file.http_listen)
            .unwrap_or_else(|| DEFAULT_HTTP_LISTEN.into());
        check_listen("--http-listen", &http_listen)?;
        let listeners = listeners(&kafka, kafka_listen, advertised)?;
        let clustered = voters.len() > 1 || !voters.contains_key(&me);
        let tls = security(&kafka, &listeners, clustered)?;
        Ok(Self {
            node_id,
            data_dir,
            listeners,
            tls,
            http_listen,
            log_level: overrides.log_level.clone().or(file.log_level),
            object_store,
            kafka,
            roles,
            meta_listen,
            meta_advertised,
            voters,
            rack,
            otlp_endpoint: overrides.otlp_endpoint.clone().or(file.otlp_endpoint),
        })
    }
}

/// Kafka's `listeners` settings, or the one-listener shorthand (not both).
fn listeners(
    kafka: &BrokerConfig,
    kafka_listen: Option<String>,
    advertised: Option<Endpoint>,
) -> anyhow::Result<Listeners> {
    let named = kafka.text("listeners");
    if named.trim().is_empty() {
        let bind = kafka_listen.unwrap_or_else(|| DEFAULT_KAFKA_LISTEN.into());
        check_listen("--kafka-listen", &bind)?;
        return Ok(Listeners::single(
            &bind,
            advertised.map(|e| (e.host, e.port)),
            kafka.text("listener.security.protocol.map"),
        )?);
    }
    if kafka_listen.is_some() || advertised.is_some() {
        bail!(
            "both listeners and --kafka-listen/--advertised-listener are set: name every listener in listeners (and advertised.listeners) instead"
        );
    }
    Ok(Listeners::resolve(
        named,
        kafka.text("advertised.listeners"),
        kafka.text("listener.security.protocol.map"),
        kafka.text("inter.broker.listener.name"),
    )?)
}

/// Checks the TLS and SASL settings against the listeners that need them.
fn security(
    kafka: &BrokerConfig,
    listeners: &Listeners,
    clustered: bool,
) -> anyhow::Result<Option<TlsSettings>> {
    kafka.scram_bootstrap().map_err(anyhow::Error::msg)?;
    let sasl = listeners.listeners.iter().any(|l| l.protocol.sasl());
    if sasl && kafka.sasl_enabled_mechanisms().is_empty() {
        bail!("a listener uses SASL but sasl.enabled.mechanisms is empty");
    }
    let oauth = kafka.oauth().map_err(anyhow::Error::msg)?;
    if kafka
        .sasl_enabled_mechanisms()
        .contains(&strata_security::Mechanism::OauthBearer)
        && oauth.is_none()
    {
        bail!(
            "sasl.enabled.mechanisms names OAUTHBEARER but sasl.oauthbearer.jwks.endpoint.url is not set (the keys tokens are checked against)"
        );
    }
    let inter = listeners
        .listeners
        .iter()
        .find(|l| l.name == listeners.inter_broker);
    let truststore = kafka.text("ssl.truststore.location");
    if let Some(l) = inter.filter(|l| clustered && l.protocol.sasl()) {
        bail!(
            "inter.broker.listener.name {} is {}: brokers connect to each other over PLAINTEXT or SSL (mTLS) only so far",
            l.name,
            l.protocol.name()
        );
    }
    let meta_tls = kafka.flag("strata.meta.tls");
    let peer_tls = meta_tls
        || inter.is_some_and(|l| clustered && l.protocol == strata_security::SecurityProtocol::Ssl);
    if peer_tls && truststore.is_empty() {
        bail!(
            "TLS between nodes (strata.meta.tls, or an SSL inter-broker listener) needs ssl.truststore.location: the CA bundle peers' certificates are checked against"
        );
    }
    if !listeners.any_tls() && !meta_tls && !kafka.flag("strata.http.tls") {
        return Ok(None);
    }
    let keystore = kafka.text("ssl.keystore.location");
    if keystore.is_empty() {
        bail!(
            "TLS (an SSL or SASL_SSL listener, strata.meta.tls or strata.http.tls) needs ssl.keystore.location (a PEM file with the private key and certificate chain)"
        );
    }
    Ok(Some(TlsSettings {
        keystore: PathBuf::from(keystore),
        truststore: (!truststore.is_empty()).then(|| PathBuf::from(truststore)),
        client_auth: ClientAuth::parse(kafka.text("ssl.client.auth")).unwrap_or(ClientAuth::None),
    }))
}

/// A listener address must be HOST:PORT (a host name is resolved when binding).
fn check_listen(what: &str, addr: &str) -> anyhow::Result<()> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        bail!("{what} {addr:?} is not HOST:PORT (as in 127.0.0.1:9092 or 0.0.0.0:9092)");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_run_a_local_broker() {
        let c = ServeConfig::resolve(&Overrides::default(), env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.listeners.listeners[0].bind, DEFAULT_KAFKA_LISTEN);
        assert_eq!(c.http_listen, DEFAULT_HTTP_LISTEN);
        assert_eq!(c.node_id, 0);
        assert!(c.listeners.listeners[0].advertised.is_none());
        assert!(c.tls.is_none());
        assert_eq!(c.kafka.num_partitions(), 1);
        assert!(
            c.object_store.url.starts_with("file:///"),
            "{}",
            c.object_store.url
        );
        assert!(
            c.object_store.url.ends_with("data/objects"),
            "{}",
            c.object_store.url
        );
    }

    #[test]
    fn object_store_and_strata_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.toml");
        std::fs::write(
            &path,
            "object_store = \"s3://bucket/pre\"\ns3_path_style = true\n[strata]\nwal.max-unuploaded-bytes = 1000\n",
        )
        .unwrap();
        let flags = Overrides {
            config: Some(path),
            s3_endpoint: Some("https://127.0.0.1:9000".into()),
            ..Overrides::default()
        };
        let c =
            ServeConfig::resolve(&flags, env(&[("STRATA_TIER_UPLOAD_CONCURRENCY", "9")])).unwrap();
        assert_eq!(c.object_store.url, "s3://bucket/pre");
        assert!(c.object_store.s3_path_style);
        assert!(!c.object_store.s3_allow_http);
        assert_eq!(
            c.object_store.s3_endpoint.as_deref(),
            Some("https://127.0.0.1:9000")
        );
        assert_eq!(c.kafka.max_unuploaded_bytes(), 1000);
        assert_eq!(c.kafka.upload_concurrency(), 9);
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("strata.toml");
        std::fs::write(
            &path,
            "data_dir = \"/var/strata\"\nnode_id = 3\n[kafka]\nnum.partitions = 4\n\"log.retention.ms\" = 1000\nauto.create.topics.enable = false\n",
        )
        .unwrap();
        let flags = Overrides {
            config: Some(path),
            node_id: Some(7),
            ..Overrides::default()
        };
        let c = ServeConfig::resolve(&flags, env(&[("STRATA_KAFKA_NUM_PARTITIONS", "6")])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/strata"));
        assert_eq!(c.node_id, 7, "flag beats file");
        assert_eq!(c.kafka.num_partitions(), 6, "environment beats file");
        assert!(!c.kafka.auto_create_topics());
        assert_eq!(c.kafka.get("log.retention.ms").unwrap().0, "1000");
    }

    #[test]
    fn unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "data_dri = \"x\"\n").unwrap();
        let err = ServeConfig::resolve(
            &Overrides {
                config: Some(path.clone()),
                ..Overrides::default()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("data_dri"), "{err:#}");

        std::fs::write(&path, "[kafka]\nnum.partitionz = 1\n").unwrap();
        let err = ServeConfig::resolve(
            &Overrides {
                config: Some(path),
                ..Overrides::default()
            },
            env(&[]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("num.partitionz"), "{err:#}");

        let err = ServeConfig::resolve(&Overrides::default(), env(&[("STRATA_DATADIR", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("STRATA_DATADIR"));
        let err = ServeConfig::resolve(
            &Overrides::default(),
            env(&[("STRATA_SERVICE_HOST", "10.0.0.1")]),
        )
        .unwrap_err();
        assert!(err.to_string().contains("enableServiceLinks"));
    }

    #[test]
    fn advertised_listener_must_be_host_and_port() {
        assert_eq!(
            parse_endpoint("broker-0.strata:9092").unwrap(),
            Endpoint {
                host: "broker-0.strata".into(),
                port: 9092
            }
        );
        assert!(parse_endpoint("nohost").is_err());
        assert!(parse_endpoint("h:0").is_err());
        assert!(parse_endpoint("h:99999").is_err());
    }

    #[test]
    fn the_example_config_parses() {
        let example = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../config/strata.example.toml"
        );
        let c = ServeConfig::resolve(
            &Overrides {
                config: Some(example.into()),
                ..Overrides::default()
            },
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.kafka.num_partitions(), 1);
    }
}
