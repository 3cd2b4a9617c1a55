//! `strata serve`: one broker with its embedded metadata node.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use strata_admin::AdminState;
use strata_broker::{BrokerOptions, BrokerView, Health, RunningBroker, SystemClock};
use strata_meta::{MetaConfig, MetaNode};
use strata_telemetry::Metrics;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::ServeConfig;

/// How long in-flight requests get to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// The admin API's view of the broker, which it serves from before the broker has
/// started (log recovery can take a while; liveness probes must be answered meanwhile).
struct Admin {
    broker: OnceLock<(Health, BrokerView)>,
    metrics: Metrics,
}

impl AdminState for Admin {
    fn readiness(&self) -> Result<(), String> {
        match self.broker.get() {
            Some((health, _)) => health.readiness(),
            None => Err("starting: opening metadata and recovering partition logs".into()),
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

    fn remote_segments(&self, topic: &str, partition: i32) -> Option<serde_json::Value> {
        let (_, view) = self.broker.get()?;
        serde_json::to_value(view.remote_segments(topic, partition)?).ok()
    }
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

pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    raise_open_file_limit();
    for (name, value, why) in cfg.kafka.ignored() {
        tracing::warn!(config = %name, value = %value, why, "Kafka setting accepted but has no effect");
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data directory {}", cfg.data_dir.display()))?;
    let metrics = Metrics::new()?;
    let kafka = TcpListener::bind(&cfg.kafka_listen)
        .await
        .with_context(|| format!("binding the Kafka listener to {}", cfg.kafka_listen))?;
    let http = TcpListener::bind(&cfg.http_listen)
        .await
        .with_context(|| format!("binding the HTTP listener to {}", cfg.http_listen))?;
    let http_addr = http.local_addr()?;
    let stop_http = CancellationToken::new();
    let admin_state = Arc::new(Admin {
        broker: OnceLock::new(),
        metrics: metrics.clone(),
    });
    let admin = tokio::spawn(strata_admin::serve(
        http,
        admin_state.clone(),
        stop_http.clone(),
    ));
    info!(addr = %http_addr, "http listener ready");
    let meta = MetaNode::open(MetaConfig {
        write_timeout: cfg.kafka.meta_write_timeout(),
        ..MetaConfig::new(cfg.node_id as u64, cfg.data_dir.join("meta"))
    })
    .await
    .context("opening the metadata node")?;
    let broker = RunningBroker::start(
        BrokerOptions {
            node_id: cfg.node_id,
            log_dir: cfg.data_dir.join("log"),
            advertised: cfg.advertised.clone(),
            config: cfg.kafka.clone(),
            metrics: metrics.clone(),
            clock: Arc::new(SystemClock),
            object_store: cfg.object_store.clone(),
            cache_dir: cfg.data_dir.join("cache"),
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
