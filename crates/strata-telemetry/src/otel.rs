//! OpenTelemetry export over OTLP: the broker's spans (produce, fetch, segment upload,
//! remote read, metadata commit) and, beside `/metrics`, the same metrics.
//!
//! Export is on when an endpoint is given (`--otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), unless
//! `OTEL_SDK_DISABLED=true`. Everything else follows the standard `OTEL_*` variables,
//! read by the OpenTelemetry SDK: the protocol (`OTEL_EXPORTER_OTLP_PROTOCOL`:
//! `http/protobuf`, the default, or `grpc`), `OTEL_SERVICE_NAME` and
//! `OTEL_RESOURCE_ATTRIBUTES` (the service is `strata` unless they name one),
//! `OTEL_TRACES_SAMPLER`/`_ARG`, the batch processor's `OTEL_BSP_*`, and
//! `OTEL_METRIC_EXPORT_INTERVAL`. `OTEL_TRACES_EXPORTER=none` or
//! `OTEL_METRICS_EXPORTER=none` turns one signal off.
//!
//! Metrics are the Prometheus registry's, observed at each export: counters and gauges
//! under their Prometheus names and labels, histograms as `<name>_count` and `<name>_sum`
//! counters (the buckets stay on `/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use parking_lot::Mutex;
use prometheus::proto::{MetricFamily, MetricType};

use crate::{Metrics, TelemetryError};

static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: callers skip building span attributes otherwise.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// The running exporters; [`Otel::shutdown`] flushes what is still buffered.
pub struct Otel {
    pub(crate) tracer: Option<SdkTracer>,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    description: String,
}

impl std::fmt::Debug for Otel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl Otel {
    /// Starts OTLP export if an endpoint is configured (`endpoint` is `--otlp-endpoint`:
    /// it wins over the environment). Must run inside a Tokio runtime (the gRPC client
    /// lives on it). `Ok(None)`: export is off.
    pub fn start(
        endpoint: Option<&str>,
        metrics: &Metrics,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, TelemetryError> {
        let on = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        if endpoint.is_none()
            && !on("OTEL_EXPORTER_OTLP_ENDPOINT")
            && !on("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            && !on("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
        {
            return Ok(None);
        }
        let resource = resource();
        let signal_off = |name: &str| env(name).is_some_and(|v| v.trim() == "none");
        let mut description = Vec::new();
        let tracer_provider = if signal_off("OTEL_TRACES_EXPORTER") {
            None
        } else {
            let protocol = protocol(env, "TRACES")?;
            let exporter = match protocol {
                Protocol::Grpc => {
                    let mut b = SpanExporter::builder().with_tonic();
                    if let Some(e) = endpoint {
                        b = b.with_endpoint(e);
                    }
                    b.build()
                }
                _ => {
                    let mut b = SpanExporter::builder().with_http().with_protocol(protocol);
                    if let Some(e) = endpoint {
                        b = b.with_endpoint(signal_url(e, "traces"));
                    }
                    b.build()
                }
            }
            .map_err(|e| TelemetryError::Otlp(format!("the OTLP span exporter: {e}")))?;
            description.push(format!("traces over {}", protocol_name(protocol)));
            Some(
                SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(exporter)
                    .build(),
            )
        };
        let meter_provider = if signal_off("OTEL_METRICS_EXPORTER") {
            None
        } else {
            let protocol = protocol(env, "METRICS")?;
            let exporter = match protocol {
                Protocol::Grpc => {
                    let mut b = MetricExporter::builder().with_tonic();
                    if let Some(e) = endpoint {
                        b = b.with_endpoint(e);
                    }
                    b.build()
                }
                _ => {
                    let mut b = MetricExporter::builder()
                        .with_http()
                        .with_protocol(protocol);
                    if let Some(e) = endpoint {
                        b = b.with_endpoint(signal_url(e, "metrics"));
                    }
                    b.build()
                }
            }
            .map_err(|e| TelemetryError::Otlp(format!("the OTLP metric exporter: {e}")))?;
            description.push(format!("metrics over {}", protocol_name(protocol)));
            let provider = SdkMeterProvider::builder()
                .with_resource(resource)
                .with_periodic_exporter(exporter)
                .build();
            bridge(
                &opentelemetry::metrics::MeterProvider::meter(&provider, "strata"),
                metrics,
            );
            Some(provider)
        };
        let tracer = tracer_provider.as_ref().map(|p| p.tracer("strata"));
        TRACING.store(tracer.is_some(), Ordering::Relaxed);
        Ok(Some(Self {
            tracer,
            tracer_provider,
            meter_provider,
            description: format!(
                "OTLP export: {} to {}",
                description.join(", "),
                endpoint
                    .map(str::to_string)
                    .or_else(|| env("OTEL_EXPORTER_OTLP_ENDPOINT"))
                    .unwrap_or_else(|| "the signal-specific endpoints".into())
            ),
        }))
    }

    /// Flushes and stops the exporters (at shutdown).
    pub fn shutdown(&self) {
        TRACING.store(false, Ordering::Relaxed);
        if let Some(p) = &self.tracer_provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing spans at shutdown failed");
        }
        if let Some(p) = &self.meter_provider
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "flushing metrics at shutdown failed");
        }
    }

    /// What is exported where, for the start-up log.
    pub fn description(&self) -> &str {
        &self.description
    }
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), with the service
/// named `strata` unless those name it.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name("strata").build()
    }
}

/// The protocol for `signal` (`TRACES`, `METRICS`): its own variable, else the general
/// one, else `http/protobuf` (the specification's default).
fn protocol(
    env: &dyn Fn(&str) -> Option<String>,
    signal: &str,
) -> Result<Protocol, TelemetryError> {
    let var = env(&format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match var.as_deref().map(str::trim) {
        None | Some("") | Some("http/protobuf") => Ok(Protocol::HttpBinary),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => Err(TelemetryError::Otlp(format!(
            "OTEL_EXPORTER_OTLP_PROTOCOL {other:?} is not supported: use http/protobuf or grpc"
        ))),
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Grpc => "grpc",
        _ => "http/protobuf",
    }
}

/// An explicit HTTP endpoint is the collector's base URL: the signal's path is added, as
/// the SDK does for `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

/// The registry's families, gathered at most once per export round for all instruments.
struct Snapshot {
    metrics: Metrics,
    taken: Mutex<(Option<Instant>, Arc<Vec<MetricFamily>>)>,
}

impl Snapshot {
    fn families(&self) -> Arc<Vec<MetricFamily>> {
        let mut taken = self.taken.lock();
        if taken
            .0
            .is_none_or(|at| at.elapsed() > Duration::from_millis(500))
        {
            *taken = (Some(Instant::now()), Arc::new(self.metrics.gather()));
        }
        taken.1.clone()
    }

    /// Calls `f` with each sample of family `name`: its labels and the metric.
    fn each(&self, name: &str, mut f: impl FnMut(Vec<KeyValue>, &prometheus::proto::Metric)) {
        let families = self.families();
        let Some(family) = families.iter().find(|m| m.name() == name) else {
            return;
        };
        for m in family.get_metric() {
            let labels = m
                .get_label()
                .iter()
                .map(|l| KeyValue::new(l.name().to_string(), l.value().to_string()))
                .collect();
            f(labels, m);
        }
    }
}

/// Registers one observable instrument per registered metric, reading the registry.
fn bridge(meter: &Meter, metrics: &Metrics) {
    let snapshot = Arc::new(Snapshot {
        metrics: metrics.clone(),
        taken: Mutex::new((None, Arc::new(Vec::new()))),
    });
    for (name, kind) in metrics.kinds() {
        let name = name.clone();
        match kind {
            MetricType::COUNTER => {
                let s = snapshot.clone();
                let family = name.clone();
                meter
                    .f64_observable_counter(name)
                    .with_callback(move |o| {
                        s.each(&family, |labels, m| {
                            o.observe(m.get_counter().get_value(), &labels)
                        })
                    })
                    .build();
            }
            MetricType::GAUGE => {
                let s = snapshot.clone();
                let family = name.clone();
                meter
                    .f64_observable_gauge(name)
                    .with_callback(move |o| {
                        s.each(&family, |labels, m| {
                            o.observe(m.get_gauge().get_value(), &labels)
                        })
                    })
                    .build();
            }
            MetricType::HISTOGRAM => {
                let (s, family) = (snapshot.clone(), name.clone());
                meter
                    .u64_observable_counter(format!("{name}_count"))
                    .with_callback(move |o| {
                        s.each(&family, |labels, m| {
                            o.observe(m.get_histogram().get_sample_count(), &labels)
                        })
                    })
                    .build();
                let (s, family) = (snapshot.clone(), name.clone());
                meter
                    .f64_observable_counter(format!("{name}_sum"))
                    .with_callback(move |o| {
                        s.each(&family, |labels, m| {
                            o.observe(m.get_histogram().get_sample_sum(), &labels)
                        })
                    })
                    .build();
            }
            _ => {}
        }
    }
}
