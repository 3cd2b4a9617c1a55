//! The broker's HTTP side: `/healthz`, `/readyz` and `/metrics` (Prometheus text).
//!
//! This crate owns the HTTP routes (`/api/v1/health` spells out readiness and the object
//! store's state, `/api/v1/cluster` shows brokers, voters and partition placement, `/api/v1/partitions` lists every partition's local
//! and remote log bounds, `/api/v1/partitions/{topic}/{partition}/remote-segments` one
//! partition's manifest) and their status codes. It reads broker state only
//! through the [`AdminState`] trait, so it depends on no other Strata crate, and the
//! broker never depends on HTTP. Who may read what is its [`Access`] policy: with
//! security on, the detailed `/api/v1` routes want a bearer token.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the HTTP endpoints need to know about the broker.
pub trait AdminState: Send + Sync + 'static {
    /// `Ok` when the broker serves Kafka clients; otherwise why not.
    fn readiness(&self) -> Result<(), String>;
    /// All metrics in Prometheus text exposition format.
    fn metrics_text(&self) -> String;
    /// Every partition this broker holds, with its local and remote log bounds.
    fn partitions(&self) -> serde_json::Value;
    /// Readiness with its parts spelled out (the object store's state among them), as
    /// JSON.
    fn health(&self) -> serde_json::Value;
    /// The cluster as metadata describes it: brokers, voters, the quorum leader, and
    /// every partition's leader, replicas and ISR.
    fn cluster(&self) -> serde_json::Value;
    /// The manifest of one partition (its segments in the object store, oldest first),
    /// or `None` if this broker has no such partition.
    fn remote_segments(&self, topic: &str, partition: i32) -> Option<serde_json::Value>;
}

type Shared = Arc<dyn AdminState>;

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Shared>) -> impl IntoResponse {
    match state.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(state): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics_text(),
    )
}

async fn health(State(state): State<Shared>) -> impl IntoResponse {
    axum::Json(state.health())
}

async fn cluster(State(state): State<Shared>) -> impl IntoResponse {
    axum::Json(state.cluster())
}

async fn partitions(State(state): State<Shared>) -> impl IntoResponse {
    axum::Json(state.partitions())
}

async fn remote_segments(
    State(state): State<Shared>,
    Path((topic, partition)): Path<(String, i32)>,
) -> impl IntoResponse {
    match state.remote_segments(&topic, partition) {
        Some(v) => axum::Json(v).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            format!("no partition {partition} of topic {topic:?} on this broker\n"),
        )
            .into_response(),
    }
}

/// Who may read which routes.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The bearer token (`Authorization: Bearer ...`) that opens closed routes.
    pub token: Option<String>,
    /// Security is on: the detailed `/api/v1` routes are closed to requests without the
    /// token (and to all, if no token is configured).
    pub api_closed: bool,
    /// `/healthz`, `/readyz` and `/metrics` are closed too.
    pub probes_closed: bool,
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    if !(api && access.api_closed || !api && access.probes_closed) {
        return next.run(req).await;
    }
    let Some(token) = &access.token else {
        return (
            StatusCode::FORBIDDEN,
            "closed: security is on and strata.http.admin-token is not set\n",
        )
            .into_response();
    };
    let offered = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if offered.is_some_and(|o| same(o.trim().as_bytes(), token.as_bytes())) {
        return next.run(req).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a bearer token is required\n",
    )
        .into_response()
}

/// The routes, for serving or for tests.
pub fn router(state: Shared, access: Access) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/health", get(health))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/partitions", get(partitions))
        .route(
            "/api/v1/partitions/{topic}/{partition}/remote-segments",
            get(remote_segments),
        )
        .with_state(state)
        .layer(middleware::from_fn_with_state(Arc::new(access), guard))
}

/// A connection the caller accepted (and perhaps wrapped in TLS) for [`serve_incoming`].
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// Connections handed over through a channel, as axum's listener.
struct Incoming {
    rx: tokio::sync::mpsc::Receiver<(Box<dyn Io>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for Incoming {
    type Io = Box<dyn Io>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // No more connections: wait for the shutdown signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves the routes on connections the caller accepts (e.g. after a TLS handshake)
/// and sends through `rx`, until `shutdown` is cancelled.
pub async fn serve_incoming(
    rx: tokio::sync::mpsc::Receiver<(Box<dyn Io>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
    state: Shared,
    access: Access,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(Incoming { rx, local }, router(state, access))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Serves the routes on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: Shared,
    access: Access,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state, access))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Fake(AtomicBool);

    impl AdminState for Fake {
        fn readiness(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("starting".into())
            }
        }
        fn metrics_text(&self) -> String {
            "strata_test_total 1\n".into()
        }
        fn partitions(&self) -> serde_json::Value {
            serde_json::json!([{"topic": "t", "partition": 0}])
        }
        fn health(&self) -> serde_json::Value {
            serde_json::json!({"object_store": {"available": false}})
        }
        fn cluster(&self) -> serde_json::Value {
            serde_json::json!({"voters": [1, 2, 3]})
        }
        fn remote_segments(&self, topic: &str, partition: i32) -> Option<serde_json::Value> {
            (topic == "t" && partition == 0).then(|| serde_json::json!([{"base_offset": 0}]))
        }
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        get_with(addr, path, "").await
    }

    /// A GET with extra header lines (`auth`, each ending in CRLF).
    async fn get_with(addr: std::net::SocketAddr, path: &str, auth: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn routes_answer_with_the_right_status() {
        let state = Arc::new(Fake(AtomicBool::new(false)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            state.clone(),
            Access::default(),
            stop.clone(),
        ));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
        let r = get(addr, "/readyz").await;
        assert!(
            r.starts_with("HTTP/1.0 503") && r.contains("starting"),
            "{r}"
        );
        state.0.store(true, Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.0 200"));
        assert!(get(addr, "/metrics").await.contains("strata_test_total 1"));
        let api = get(addr, "/api/v1/partitions").await;
        assert!(
            api.contains("application/json") && api.contains(r#"[{"partition":0,"topic":"t"}]"#),
            "{api}"
        );
        let health = get(addr, "/api/v1/health").await;
        assert!(
            health.contains(r#"{"object_store":{"available":false}}"#),
            "{health}"
        );
        let cluster = get(addr, "/api/v1/cluster").await;
        assert!(cluster.contains(r#"{"voters":[1,2,3]}"#), "{cluster}");
        let manifest = get(addr, "/api/v1/partitions/t/0/remote-segments").await;
        assert!(manifest.contains(r#"[{"base_offset":0}]"#), "{manifest}");
        for missing in [
            "/api/v1/partitions/t/1/remote-segments",
            "/api/v1/partitions/u/0/remote-segments",
        ] {
            let r = get(addr, missing).await;
            assert!(
                r.starts_with("HTTP/1.0 404") && r.contains("no partition"),
                "{r}"
            );
        }
        assert!(
            get(addr, "/api/v1/partitions/t/x/remote-segments")
                .await
                .starts_with("HTTP/1.0 400")
        );
        assert!(get(addr, "/nope").await.starts_with("HTTP/1.0 404"));
        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn with_security_on_the_api_wants_the_token_and_probes_stay_open() {
        let state = Arc::new(Fake(AtomicBool::new(true)));
        let start = |access: Access| {
            let state = state.clone();
            async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let stop = CancellationToken::new();
                tokio::spawn(serve(listener, state, access, stop.clone()));
                (addr, stop)
            }
        };
        let (addr, stop) = start(Access {
            token: Some("s3cret".into()),
            api_closed: true,
            probes_closed: false,
        })
        .await;
        for (auth, status) in [
            ("", "401"),
            ("Authorization: Bearer wrong\r\n", "401"),
            ("Authorization: Basic czNjcmV0\r\n", "401"),
            ("Authorization: Bearer s3cret\r\n", "200"),
        ] {
            let r = get_with(addr, "/api/v1/cluster", auth).await;
            assert!(
                r.starts_with(&format!("HTTP/1.0 {status}")),
                "{auth:?}: {r}"
            );
        }
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.0 200"));
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.0 200"));
        stop.cancel();

        // No token configured: closed to everyone, saying why.
        let (addr, stop) = start(Access {
            token: None,
            api_closed: true,
            probes_closed: false,
        })
        .await;
        let r = get(addr, "/api/v1/partitions").await;
        assert!(
            r.starts_with("HTTP/1.0 403") && r.contains("strata.http.admin-token"),
            "{r}"
        );
        stop.cancel();

        // Probes closed too.
        let (addr, stop) = start(Access {
            token: Some("t".into()),
            api_closed: true,
            probes_closed: true,
        })
        .await;
        assert!(get(addr, "/metrics").await.starts_with("HTTP/1.0 401"));
        let r = get_with(addr, "/metrics", "Authorization: Bearer t\r\n").await;
        assert!(r.starts_with("HTTP/1.0 200"), "{r}");
        stop.cancel();
    }
}
