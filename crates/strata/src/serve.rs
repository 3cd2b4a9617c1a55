//! `strata serve`: a node with its roles: a broker with its embedded metadata node (the
//! default, alone or in a quorum), a broker following the quorum, or a metadata node only.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use strata_admin::AdminState;
use strata_broker::{
    BrokerOptions, BrokerView, Endpoint, Health, KafkaListener, RunningBroker, SystemClock,
};
use strata_meta::{ControllerConfig, MetaConfig, MetaNode, Quorum};
use strata_security::tls::TlsServer;
use strata_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::ServeConfig;

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// The admin API's view of the node, which it serves from before the node has started
/// (log recovery and joining the quorum can take a while; liveness probes must be
/// answered meanwhile).
struct Admin {
    meta: OnceLock<MetaNode>,
    broker: OnceLock<(Health, BrokerView)>,
    metrics: Metrics,
    /// The node has the meta role only: it has no broker to wait for.
    meta_only: bool,
}

impl AdminState for Admin {
    fn readiness(&self) -> Result<(), String> {
        match (self.broker.get(), self.meta.get()) {
            (Some((health, _)), _) => health.readiness(),
            (None, Some(meta)) if self.meta_only => match meta.problem() {
                Some(p) => Err(p),
                None => Ok(()),
            },
            _ => Err("starting: joining the metadata quorum and recovering partition logs".into()),
        }
    }

    fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    fn partitions(&self) -> serde_json::Value {
        let partitions = self
            .broker
            .get()
            .map(|(_, v)| v.partitions())
            .unwrap_or_default();
        serde_json::to_value(partitions).unwrap_or(serde_json::Value::Null)
    }

    fn health(&self) -> serde_json::Value {
        let readiness = self.readiness();
        serde_json::json!({
            "ready": readiness.is_ok(),
            "reason": readiness.err(),
            "object_store": self.broker.get().map(|(_, v)| v.object_store()),
        })
    }

    fn cluster(&self) -> serde_json::Value {
        self.meta
            .get()
            .map_or(serde_json::Value::Null, cluster_view)
    }

    fn remote_segments(&self, topic: &str, partition: i32) -> Option<serde_json::Value> {
        let (_, view) = self.broker.get()?;
        serde_json::to_value(view.remote_segments(topic, partition)?).ok()
    }
}

/// `/api/v1/cluster`: brokers, voters, the quorum leader and every partition's placement.
fn cluster_view(meta: &MetaNode) -> serde_json::Value {
    let (voters, learners) = meta.members();
    let leader = meta.leader();
    meta.read(|s| {
        let brokers: Vec<serde_json::Value> = s
            .brokers
            .values()
            .map(|b| {
                serde_json::json!({
                    "id": b.node_id,
                    "rack": b.rack,
                    "endpoint": format!("{}:{}", b.host, b.port),
                    "alive": !b.fenced,
                    "epoch": b.epoch,
                })
            })
            .collect();
        let partitions: Vec<serde_json::Value> = s
            .topics
            .values()
            .flat_map(|t| {
                t.partitions.iter().enumerate().map(move |(i, p)| {
                    serde_json::json!({
                        "topic": t.name,
                        "partition": i,
                        "leader": p.leader,
                        "leader_epoch": p.leader_epoch,
                        "replicas": p.replicas,
                        "isr": p.isr,
                    })
                })
            })
            .collect();
        serde_json::json!({
            "cluster_id": s.cluster_id,
            "metadata_leader": leader,
            "metadata_applied": meta.applied_index(),
            "voters": voters,
            "learners": learners,
            "brokers": brokers,
            "partitions": partitions,
        })
    })
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn termination() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Raises the open-file limit to its hard maximum: every connection and every local
/// segment holds a descriptor, and the usual soft limit (1024) is far below what a broker
/// with many partitions needs.
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => info!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit"),
        Err(e) => {
            tracing::warn!(error = %e, limit = ?limit.current, "could not raise the open-file limit")
        }
    }
}

/// The committed voters must be the configured ones: a node given another list (or a
/// data directory of another cluster) must not take part.
fn check_voters(cfg: &ServeConfig, meta: &MetaNode) -> anyhow::Result<()> {
    if !cfg.clustered() {
        return Ok(());
    }
    let (voters, learners) = meta.members();
    let configured: std::collections::BTreeSet<u64> = cfg.voters.keys().copied().collect();
    // A voter being replaced is a learner for a while.
    let known: std::collections::BTreeSet<u64> = voters.union(&learners).copied().collect();
    if !voters.is_subset(&configured) || !configured.is_subset(&known) {
        bail!(
            "--meta-voters names nodes {configured:?}, but the metadata quorum has committed voters {voters:?}: every node must be given the same list"
        );
    }
    Ok(())
}

/// Who may read the HTTP port: with security on (a TLS or SASL listener, or the
/// authorizer) the `/api/v1` routes want `strata.http.admin-token`.
fn http_access(cfg: &ServeConfig) -> strata_admin::Access {
    let secured = cfg
        .listeners
        .listeners
        .iter()
        .any(|l| l.protocol != strata_security::SecurityProtocol::Plaintext)
        || cfg.kafka.authorizer().is_some();
    let token = cfg.kafka.text("strata.http.admin-token").trim();
    strata_admin::Access {
        token: (!token.is_empty()).then(|| token.to_string()),
        api_closed: secured,
        probes_closed: secured && cfg.kafka.flag("strata.http.probes-require-token"),
    }
}

/// The HTTP routes over TLS (`strata.http.tls`): connections are accepted and their
/// handshakes run here, each in its own task so a slow client holds up no other, and
/// handed to the routes.
async fn serve_https(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<Admin>,
    access: strata_admin::Access,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let accepting = {
        let stop = stop.clone();
        async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "http listener: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let io: Box<dyn strata_admin::Io> = Box::new(tls);
                            let _ = tx.send((io, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "http: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "http: no TLS handshake within 10 s"),
                    }
                });
            }
        }
    };
    let serving = strata_admin::serve_incoming(rx, local, state, access, stop);
    let ((), served) = tokio::join!(accepting, serving);
    served
}

/// Binds every Kafka listener.
async fn bind_kafka(cfg: &ServeConfig) -> anyhow::Result<Vec<KafkaListener>> {
    let mut bound = Vec::new();
    for l in &cfg.listeners.listeners {
        let socket = TcpListener::bind(&l.bind).await.with_context(|| {
            match cfg.listeners.listeners.len() {
                1 => format!("binding the Kafka listener to {}", l.bind),
                _ => format!("binding the Kafka listener {} to {}", l.name, l.bind),
            }
        })?;
        bound.push(KafkaListener {
            socket,
            name: l.name.clone(),
            protocol: l.protocol,
            advertised: l
                .advertised
                .clone()
                .map(|(host, port)| Endpoint { host, port }),
        });
    }
    Ok(bound)
}

pub async fn run(cfg: ServeConfig, metrics: Metrics) -> anyhow::Result<()> {
    raise_open_file_limit();
    for (name, value, why) in cfg.kafka.ignored() {
        tracing::warn!(config = %name, value = %value, why, "Kafka setting accepted but has no effect");
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let kafka = match cfg.roles.broker {
        true => Some(bind_kafka(&cfg).await?),
        false => None,
    };
    // Loaded before anything starts, so a bad keystore fails the start at once.
    let tls = cfg
        .tls
        .as_ref()
        .map(TlsServer::load)
        .transpose()
        .context("loading the TLS keystore (ssl.keystore.location)")?;
    // The quorum's transport: mTLS with the node's keystore when strata.meta.tls is on.
    let meta_transport = match (&tls, cfg.kafka.flag("strata.meta.tls")) {
        (Some(tls), true) => strata_security::transport::Transport::tls(
            tls,
            strata_security::list_entries(cfg.kafka.text("strata.meta.tls-peers"), ';')
                .map(str::to_string)
                .collect(),
        )
        .context("strata.meta.tls: the metadata quorum's TLS")?,
        _ => strata_security::transport::Transport::Plain,
    };
    let oauth = match cfg.kafka.oauth().map_err(anyhow::Error::msg)? {
        Some(settings) => Some(Arc::new(
            strata_security::oauth::JwtValidator::load(settings)
                .await
                .context("loading the JWKS (sasl.oauthbearer.jwks.endpoint.url)")?,
        )),
        None => None,
    };
    let http = TcpListener::bind(&cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", cfg.http_listen))?;
    let meta_listener =
        match cfg.clustered() {
            true => Some(TcpListener::bind(&cfg.meta_listen).await.with_context(|| {
                format!("binding the metadata listener to {}", cfg.meta_listen)
            })?),
            false => None,
        };
    let http_addr = http.local_addr()?;
    // Talk to peers from the metadata listener's address when it is a specific one.
    let meta_source = meta_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.ip())
        .filter(|ip| !ip.is_unspecified());
    let stop_http = CancellationToken::new();
    // The keystore is re-read for the whole process: Kafka listeners, connections to
    // other brokers and the metadata quorum's TLS all follow it.
    if let Some(tls) = &tls {
        let reloads = metrics.kafka.tls_reloads_total.clone();
        tokio::spawn(tls.clone().watch(
            cfg.kafka.ssl_reload_interval(),
            stop_http.clone(),
            move |ok| {
                let result = if ok { "reloaded" } else { "failed" };
                reloads.with_label_values(&[result]).inc();
            },
        ));
    }
    let admin_state = Arc::new(Admin {
        meta: OnceLock::new(),
        broker: OnceLock::new(),
        meta_only: !cfg.roles.broker,
        metrics: metrics.clone(),
    });
    let admin = match (&tls, cfg.kafka.flag("strata.http.tls")) {
        (Some(tls), true) => tokio::spawn(serve_https(
            http,
            tls.acceptor(false),
            admin_state.clone(),
            http_access(&cfg),
            stop_http.clone(),
        )),
        _ => tokio::spawn(strata_admin::serve(
            http,
            admin_state.clone(),
            http_access(&cfg),
            stop_http.clone(),
        )),
    };
    info!(addr = %http_addr, "http listener ready");
    if let Some(l) = &meta_listener {
        info!(addr = %l.local_addr()?, voters = ?cfg.voters, "metadata listener ready");
    }
    let k = &cfg.kafka;
    let meta = MetaNode::open_with(
        MetaConfig {
            write_timeout: k.meta_write_timeout(),
            snapshot_every: k.meta_snapshot_every(),
            quorum: cfg.clustered().then(|| Quorum {
                transport: meta_transport.clone(),
                voters: cfg.voters.clone(),
                advertised: cfg.meta_advertised.clone(),
                source: meta_source,
            }),
            controller: ControllerConfig {
                session_timeout: k.broker_session_timeout(),
                auto_rebalance: k.auto_leader_rebalance(),
                rebalance_interval: k.leader_imbalance_interval(),
                unclean_default: k.unclean_leader_election(),
            },
            ..MetaConfig::new(cfg.node_id as u64, cfg.data_dir.join("meta"))
        },
        meta_listener,
    )
    .await
    .context("opening the metadata node")?;
    let _ = admin_state.meta.set(meta.clone());
    if let Err(e) = check_voters(&cfg, &meta) {
        let _ = meta.shutdown().await;
        return Err(e);
    }
    let Some(kafka) = kafka else {
        // A metadata-only node: it serves the quorum until told to stop.
        let failure = tokio::select! {
            signal = termination() => {
                info!(signal = signal?, "received termination signal");
                None
            }
            reason = meta.failed() => Some(reason),
        };
        if let Err(e) = meta.shutdown().await {
            tracing::warn!(error = %e, "metadata node did not shut down cleanly");
        }
        stop_http.cancel();
        let _ = admin.await;
        return match failure {
            Some(reason) => Err(anyhow::anyhow!(reason)),
            None => Ok(()),
        };
    };
    let broker = RunningBroker::start(
        BrokerOptions {
            node_id: cfg.node_id,
            log_dir: cfg.data_dir.join("log"),
            inter_broker_listener: cfg.listeners.inter_broker.clone(),
            tls,
            oauth,
            config: cfg.kafka.clone(),
            metrics: metrics.clone(),
            clock: Arc::new(SystemClock),
            object_store: cfg.object_store.clone(),
            cache_dir: cfg.data_dir.join("cache"),
            rack: cfg.rack.clone(),
        },
        meta.clone(),
        kafka,
    )
    .await;
    let broker = match broker {
        Ok(b) => b,
        Err(e) => {
            // Stop the Raft task before the runtime goes, so it exits without complaint.
            let _ = meta.shutdown().await;
            return Err(e).context("starting the broker");
        }
    };
    let _ = admin_state.broker.set((broker.health(), broker.view()));

    let failure = tokio::select! {
        signal = termination() => {
            info!(signal = signal?, "received termination signal");
            None
        }
        reason = broker.failed() => Some(reason),
    };
    if let Some(reason) = &failure {
        tracing::error!(reason = %reason, "the broker cannot go on; shutting down so that it is restarted");
    }
    // Readiness turns false at once, so a load balancer stops routing here while the
    // broker drains; the HTTP side stops last.
    broker.shutdown(SHUTDOWN_GRACE).await;
    stop_http.cancel();
    let _ = admin.await;
    match failure {
        Some(reason) => Err(anyhow::anyhow!(reason)),
        None => Ok(()),
    }
}
