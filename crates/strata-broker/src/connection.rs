//! One client connection: read a frame, handle it, write the response, in order.
//!
//! Like a Kafka broker, Strata handles one request per connection at a time, so
//! responses go back in request order; clients pipeline by sending ahead.

use std::net::SocketAddr;
use std::sync::Arc;

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
    let closing = |reason: &'static str, detail: &str| {
        warn!(%peer, reason, detail, "closing client connection");
        m.connection_errors_total.with_label_values(&[reason]).inc();
    };
    loop {
        let size = tokio::select! {
            biased;
            () = broker.shutdown.cancelled() => break,
            r = rd.read_i32() => match r {
                Ok(n) => n,
                // Between requests, EOF or a reset is just a client going away.
                Err(e) if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) => break,
                Err(e) => {
                    closing("read_error", &e.to_string());
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
        // A request still arriving at shutdown is dropped (a client that stalls halfway
        // must not hold the broker until the grace period ends); it was never answered,
        // so the client retries it elsewhere.
        let frame = tokio::select! {
            () = broker.shutdown.cancelled() => break,
            r = read_body(&mut rd, size) => match r {
                Ok(frame) => frame,
                Err((reason, detail)) => {
                    closing(reason, &detail);
                    return;
                }
            },
        };
        m.bytes_in_total.inc_by(4 + size as u64);
        match handlers::handle(&broker, frame.freeze(), peer).await {
            Outcome::Respond(resp) => {
                if let Err(e) = wr.write_all(&resp).await {
                    debug!(%peer, error = %e, "client went away before its response was written");
                    break;
                }
                m.bytes_out_total.inc_by(resp.len() as u64);
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
