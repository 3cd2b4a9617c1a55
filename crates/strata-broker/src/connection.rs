//! One client connection: read a frame, handle it, write the response, in order.
//!
//! Like a Kafka broker, Strata handles one request per connection at a time, so
//! responses go back in request order; clients pipeline by sending ahead.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Buf;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::broker::Broker;
use crate::handlers::{self, Outcome};

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

pub(crate) async fn serve(broker: Arc<Broker>, stream: TcpStream, peer: SocketAddr) {
    let m = broker.metrics.kafka.clone();
    m.connections_total.inc();
    m.connections_active.inc();
    let _active = Active(m.connections_active.clone());
    let _ = stream.set_nodelay(true);
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let max = broker.config.socket_request_max_bytes();
    let idle = broker.config.connections_max_idle();
    let read_timeout = broker.config.request_read_timeout();
    let closing = |reason: &'static str, detail: &str| {
        // A misbehaving client can cause thousands of these a second: all are counted,
        // at most one a second per reason is logged.
        if let Some(held_back) = broker.log_throttle.allow(reason) {
            warn!(%peer, reason, detail, held_back, "closing client connection");
        }
        m.connection_errors_total.with_label_values(&[reason]).inc();
    };
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
                    p = budget.clone().acquire_many_owned(size as u32) => p.ok(),
                }
            }
        };
        m.request_bytes_in_memory.add(size as i64);
        let _in_memory = InMemory {
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
            r = tokio::time::timeout(read_timeout, read_body(&mut rd, size)) => match r {
                Ok(Ok(frame)) => frame,
                Ok(Err((reason, detail))) => {
                    closing(reason, &detail);
                    return;
                }
                Err(_) => {
                    closing(
                        "request_timeout",
                        &format!("a request of {size} bytes did not arrive within {} ms", read_timeout.as_millis()),
                    );
                    return;
                }
            },
        };
        m.bytes_in_total.inc_by(4 + size as u64);
        match handlers::handle(&broker, frame.freeze(), peer).await {
            Outcome::Respond(mut resp) => {
                let len = resp.remaining() as u64;
                if let Err(e) = wr.write_all_buf(&mut resp).await {
                    debug!(%peer, error = %e, "client went away before its response was written");
                    break;
                }
                m.bytes_out_total.inc_by(len);
            }
            Outcome::Silent => {}
            Outcome::Close { reason, detail } => {
                closing(reason, &detail);
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
}
