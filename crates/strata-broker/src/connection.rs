//! One client connection: read a frame, handle it, write the response, in order.
//!
//! Like a Kafka broker, Strata answers a connection's requests in the order they came,
//! and handles them one at a time, with one exception: a produce request whose batches
//! are appended waits for their sync (or replication) while the connection reads on, so
//! a client that pipelines produce requests (librdkafka, the Java producer) has them
//! appended back to back and covered by one sync instead of one sync each.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::{self, FutureExt};
use futures::stream::{FuturesOrdered, StreamExt};
use strata_telemetry::KafkaMetrics;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::frame_sink::{FrameSink, write_frame};
use crate::handlers::{self, Outcome};
use crate::session::{ListenerInfo, Sasl, Session};
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest frame a SASL listener reads before the client has authenticated (Kafka's
/// `sasl.server.max.receive.size` default).
const SASL_MAX_RECEIVE: usize = 512 * 1024;

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Decrements the active-connection gauge however the connection ends.
struct Active(prometheus::IntGauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A frame's share of `queued.max.request.bytes`, held from the moment its size is
/// known until it has been handled.
struct InMemory {
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
    bytes: i64,
    gauge: prometheus::IntGauge,
}

impl Drop for InMemory {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes);
    }
}

/// Reads the `size` bytes of a request body; on failure, the reason (a metric label)
/// and what happened.
async fn read_body<R: AsyncRead + Unpin>(
    rd: &mut R,
    size: usize,
) -> Result<BytesMut, (&'static str, String)> {
    // Capacity only: memory is touched as bytes arrive, not up front. `take` stops the
    // read at this frame's end, leaving the next request's bytes buffered.
    let mut frame = BytesMut::with_capacity(size);
    let mut body = rd.take(size as u64);
    while frame.len() < size {
        match body.read_buf(&mut frame).await {
            Ok(0) => {
                return Err((
                    "disconnect_mid_request",
                    format!("{} of {size} bytes received", frame.len()),
                ));
            }
            Ok(_) => {}
            Err(e) => return Err(("read_error", e.to_string())),
        }
    }
    Ok(frame)
}

/// Produce answers a connection may have waiting for durability at once; past this, it
/// reads no further until the oldest is written.
const PIPELINED: usize = 16;

/// Serves one accepted connection of `listener`: the TLS handshake first if it has
/// one (`tls`), then requests until the client goes away.
pub(crate) async fn serve(
    broker: Arc<Broker>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerInfo>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let m = broker.metrics.kafka.clone();
    m.connections_total.inc();
    m.connections_active.inc();
    let _active = Active(m.connections_active.clone());
    let _ = stream.set_nodelay(true);
    let closing = |reason: &'static str, detail: &str| {
        // A misbehaving client can cause thousands of these a second: all are counted,
        // at most one a second per reason is logged.
        if let Some(held_back) = broker.log_throttle.allow(reason) {
            warn!(%peer, listener = %listener.name, reason, detail, held_back, "closing client connection");
        }
        m.connection_errors_total.with_label_values(&[reason]).inc();
    };
    let Some(acceptor) = tls else {
        let session = Session::new(peer, listener.clone(), None);
        let (rd, wr) = stream.into_split();
        return serve_session(&broker, rd, wr, session, &closing).await;
    };
    // A plaintext client on a TLS port fails here, as does an untrusted certificate.
    let stream = tokio::select! {
        () = broker.shutdown.cancelled() => return,
        r = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => match r {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return closing("tls_handshake_failed", &e.to_string()),
            Err(_) => return closing("tls_handshake_timeout", "no TLS handshake within 10 s"),
        },
    };
    let principal = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| strata_security::tls::certificate_principal(cert));
    let session = Session::new(peer, listener.clone(), principal);
    let (rd, wr) = tokio::io::split(stream);
    serve_session(&broker, rd, wr, session, &closing).await;
}

async fn serve_session<R, W>(
    broker: &Arc<Broker>,
    rd: R,
    mut wr: W,
    mut session: Session,
    closing: &impl Fn(&'static str, &str),
) where
    R: AsyncRead + Unpin,
    W: FrameSink,
{
    let m = &broker.metrics.kafka;
    let peer = session.peer;
    // Reading and answering run side by side in this task: a frame read while earlier
    // produce requests wait for their sync is appended at once and shares the next one.
    let (frames, mut arrived) = mpsc::channel(1);
    let stop = CancellationToken::new();
    // Until a SASL client has authenticated, its frames are held to Kafka's
    // sasl.server.max.receive.size: a stranger cannot take the request memory budget.
    let authenticated = AtomicBool::new(session.principal.is_some());
    let reader = read_frames(broker, rd, frames, &stop, &authenticated, closing);
    let answerer = async {
        let mut waiting = FuturesOrdered::new();
        let mut reading = true;
        loop {
            let outcome = tokio::select! {
                biased;
                Some(outcome) = waiting.next(), if !waiting.is_empty() => outcome,
                next = arrived.recv(), if reading && waiting.len() < PIPELINED => {
                    let Some((frame, _in_memory)) = next else {
                        reading = false;
                        continue;
                    };
                    // Only produce requests overlap; anything else is handled once the
                    // answers before it are written, as if the connection were serial.
                    if !handlers::may_overlap(&frame) {
                        while let Some(outcome) = waiting.next().await {
                            if !respond(&mut wr, outcome, peer, m, closing).await {
                                return;
                            }
                        }
                    }
                    let outcome = handlers::handle(broker, frame, &mut session).await;
                    authenticated.store(
                        session.principal.is_some() && matches!(session.sasl, Sasl::Idle),
                        Ordering::Relaxed,
                    );
                    match outcome {
                        // Its own task: the wait holds the partition's sync turn and
                        // must finish (the high watermark depends on it) even if this
                        // connection stops polling it, or ends.
                        Outcome::Later(answer) => {
                            let task = tokio::spawn(answer);
                            waiting.push_back(
                                async move {
                                    task.await.unwrap_or_else(|e| Outcome::Close {
                                        reason: "internal_error",
                                        detail: format!("a produce answer failed: {e}"),
                                    })
                                }
                                .boxed(),
                            );
                            continue;
                        }
                        outcome => {
                            // Nothing after a request that closes the connection is
                            // read, let alone appended.
                            if matches!(outcome, Outcome::Close { .. } | Outcome::Last { .. }) {
                                reading = false;
                                stop.cancel();
                            }
                            if waiting.is_empty() {
                                outcome
                            } else {
                                waiting.push_back(future::ready(outcome).boxed());
                                continue;
                            }
                        }
                    }
                }
                else => return,
            };
            if !respond(&mut wr, outcome, peer, m, closing).await {
                return;
            }
        }
    };
    let answered = async {
        answerer.await;
        stop.cancel();
    };
    tokio::join!(reader, answered);
    let _ = wr.shutdown().await;
}

/// Writes one outcome; `false` once the connection is done.
async fn respond<W: FrameSink>(
    wr: &mut W,
    mut outcome: Outcome,
    peer: SocketAddr,
    m: &KafkaMetrics,
    closing: &impl Fn(&'static str, &str),
) -> bool {
    loop {
        match outcome {
            Outcome::Later(answer) => outcome = answer.await,
            Outcome::Respond(mut resp) => {
                let len = resp.remaining() as u64;
                // Flushing matters for TLS, whose records may wait in the session.
                let written = match write_frame(wr, &mut resp).await {
                    Ok(()) => wr.flush().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    debug!(%peer, error = %e, "client went away before its response was written");
                    return false;
                }
                m.bytes_out_total.inc_by(len);
                return true;
            }
            Outcome::Silent => return true,
            Outcome::Last { mut frame, reason } => {
                let len = frame.remaining() as u64;
                if write_frame(wr, &mut frame).await.is_ok() {
                    m.bytes_out_total.inc_by(len);
                    let _ = wr.flush().await;
                }
                closing(reason, "after answering the request");
                return false;
            }
            Outcome::Close { reason, detail } => {
                closing(reason, &detail);
                return false;
            }
        }
    }
}

/// Reads request frames and passes them on, each with its share of the request memory
/// budget, until the client goes away, sends something unacceptable, the broker shuts
/// down or `stop` is cancelled.
async fn read_frames<R: AsyncRead + Unpin>(
    broker: &Broker,
    rd: R,
    frames: mpsc::Sender<(Bytes, InMemory)>,
    stop: &CancellationToken,
    authenticated: &AtomicBool,
    closing: &impl Fn(&'static str, &str),
) {
    let m = &broker.metrics.kafka;
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let max = broker.config.socket_request_max_bytes();
    let idle = broker.config.connections_max_idle();
    let read_timeout = broker.config.request_read_timeout();
    loop {
        let next_size = async {
            match idle {
                Some(idle) => tokio::time::timeout(idle, rd.read_i32()).await,
                None => Ok(rd.read_i32().await),
            }
        };
        let size = tokio::select! {
            biased;
            () = broker.shutdown.cancelled() => break,
            () = stop.cancelled() => break,
            r = next_size => match r {
                Ok(Ok(n)) => n,
                // Between requests, EOF or a reset is just a client going away.
                Ok(Err(e)) if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) => break,
                Ok(Err(e)) => {
                    closing("read_error", &e.to_string());
                    break;
                }
                Err(_) => {
                    closing("idle", "no request within connections.max.idle.ms");
                    break;
                }
            },
        };
        let Ok(size) = usize::try_from(size) else {
            closing("negative_frame_size", &format!("frame size {size}"));
            break;
        };
        if !authenticated.load(Ordering::Relaxed) && size > SASL_MAX_RECEIVE {
            closing(
                "frame_too_large",
                &format!(
                    "request of {size} bytes before authentication exceeds {SASL_MAX_RECEIVE}"
                ),
            );
            break;
        }
        if size > max {
            closing(
                "frame_too_large",
                &format!("request of {size} bytes exceeds socket.request.max.bytes {max}"),
            );
            break;
        }
        // The frame's bytes come out of the broker-wide budget before they are read: a
        // connection whose frame does not fit waits, and leaves its socket unread.
        let permit = match &broker.request_budget {
            None => None,
            Some((budget, total)) => {
                if size > *total {
                    closing(
                        "frame_over_request_budget",
                        &format!(
                            "request of {size} bytes exceeds queued.max.request.bytes {total}"
                        ),
                    );
                    break;
                }
                tokio::select! {
                    () = broker.shutdown.cancelled() => break,
                    () = stop.cancelled() => break,
                    p = budget.clone().acquire_many_owned(size as u32) => p.ok(),
                }
            }
        };
        m.request_bytes_in_memory.add(size as i64);
        let in_memory = InMemory {
            _permit: permit,
            bytes: size as i64,
            gauge: m.request_bytes_in_memory.clone(),
        };
        // A request still arriving at shutdown is dropped (a client that stalls halfway
        // must not hold the broker until the grace period ends); it was never answered,
        // so the client retries it elsewhere. One that takes too long to arrive is
        // dropped too, with its connection.
        let frame = tokio::select! {
            () = broker.shutdown.cancelled() => break,
            () = stop.cancelled() => break,
            r = tokio::time::timeout(read_timeout, read_body(&mut rd, size)) => match r {
                Ok(Ok(frame)) => frame,
                Ok(Err((reason, detail))) => {
                    closing(reason, &detail);
                    break;
                }
                Err(_) => {
                    closing(
                        "request_timeout",
                        &format!("a request of {size} bytes did not arrive within {} ms", read_timeout.as_millis()),
                    );
                    break;
                }
            },
        };
        m.bytes_in_total.inc_by(4 + size as u64);
        tokio::select! {
            () = stop.cancelled() => break,
            sent = frames.send((frame.freeze(), in_memory)) => if sent.is_err() { break },
        }
    }
}
