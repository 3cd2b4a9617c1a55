//! A minimal Kafka client over one TCP connection, one request in flight at a time: what
//! a follower uses to fetch from its leader (and `strata bench` to drive a broker).

use bytes::BytesMut;
use kafka_protocol::messages::{ApiKey, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use strata_security::transport::{BoxStream, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response accepted.
const MAX_RESPONSE: usize = 256 << 20;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} answered something that does not decode: {reason}")]
    Protocol { addr: String, reason: String },
}

/// One connection to a Kafka broker.
pub struct KafkaConn {
    addr: String,
    stream: BoxStream,
    next: i32,
    client_id: &'static str,
    /// Where responses are read, into memory that is not zero-filled first. Its
    /// allocation is taken again once every view of the last response is dropped; a
    /// follower's log keeps views of what it appended in its tail cache, so there a
    /// response mostly gets a new allocation (what the cache charges for is the views'
    /// length, while a view keeps its whole response alive until evicted).
    rx: BytesMut,
}

impl KafkaConn {
    pub async fn connect(addr: &str, client_id: &'static str) -> Result<Self, ClientError> {
        Self::connect_from(addr, None, client_id, &Transport::Plain).await
    }

    /// [`KafkaConn::connect`] from a given local address, over `transport` (the
    /// inter-broker listener's: plain, or mTLS).
    pub async fn connect_from(
        addr: &str,
        source: Option<std::net::IpAddr>,
        client_id: &'static str,
        transport: &Transport,
    ) -> Result<Self, ClientError> {
        let stream =
            transport
                .connect(addr, source)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: addr.to_string(),
                    source,
                })?;
        Ok(Self {
            addr: addr.to_string(),
            stream,
            next: 1,
            client_id,
            rx: BytesMut::new(),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The frame of a request (size prefix included), as [`KafkaConn::call`] sends it.
    pub fn frame(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &impl Encodable,
    ) -> Result<(i32, BytesMut), ClientError> {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let buf = strata_protocol::frame::encode_request(id, self.client_id, api, version, body)
            .map_err(|e| ClientError::Protocol {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        Ok((id, buf))
    }

    /// Sends a request frame without waiting for an answer (acks=0 produce).
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(frame)
            .await
            .map_err(|source| ClientError::Io {
                addr: self.addr.clone(),
                source,
            })
    }

    /// Sends a request and decodes its answer.
    pub async fn call(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &impl Encodable,
    ) -> Result<ResponseKind, ClientError> {
        let (id, frame) = self.frame(api, version, body)?;
        self.send(&frame).await?;
        let io = |source| ClientError::Io {
            addr: self.addr.clone(),
            source,
        };
        let len = self.stream.read_i32().await.map_err(io)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_RESPONSE)
            .ok_or_else(|| ClientError::Protocol {
                addr: self.addr.clone(),
                reason: format!("response size {len}"),
            })?;
        // Capacity only: the bytes are written once, as they arrive.
        self.rx.clear();
        self.rx.reserve(len);
        let mut body = (&mut self.stream).take(len as u64);
        while self.rx.len() < len {
            if body.read_buf(&mut self.rx).await.map_err(io)? == 0 {
                return Err(io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
        let mut frame = self.rx.split_to(len).freeze();
        let protocol = |reason: String| ClientError::Protocol {
            addr: self.addr.clone(),
            reason,
        };
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| protocol(e.to_string()))?;
        if header.correlation_id != id {
            return Err(protocol(format!(
                "correlation id {} does not match request {id}",
                header.correlation_id
            )));
        }
        ResponseKind::decode(api, &mut frame, version).map_err(|e| protocol(e.to_string()))
    }
}
