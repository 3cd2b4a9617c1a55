//! Request and response frames.
//!
//! On the wire every request is `[i32 size][header][body]`. The connection layer reads the
//! size and the bytes; this module turns those bytes into a typed header and body, and a
//! typed response back into bytes (size prefix included).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

/// The APIs the broker implements and the versions it serves of each (what ApiVersions
/// answers, and what a request must be before it is decoded). Minimums are the oldest
/// versions Kafka 4 still accepts; maximums are the newest whose every field the broker
/// honours.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::AddPartitionsToTxn, 0, 5),
    (ApiKey::AddOffsetsToTxn, 0, 4),
    (ApiKey::EndTxn, 0, 5),
    (ApiKey::TxnOffsetCommit, 0, 5),
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    // After version 0 of the handshake the SASL tokens follow as bare size-prefixed
    // frames; after version 1, in SaslAuthenticate requests.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

/// `payload` with its i32 size in front: a bare SASL token after SaslHandshake v0.
pub fn size_prefixed(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(4 + payload.len());
    out.put_i32(i32::try_from(payload.len()).unwrap_or(i32::MAX));
    out.put_slice(payload);
    out.freeze()
}

/// What went wrong with a frame. None of these may take the broker down: the caller
/// answers with an error or closes the one connection.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("request frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("malformed {api:?} v{version} request: {reason}")]
    Malformed {
        api: ApiKey,
        version: i16,
        reason: String,
    },
    #[error("cannot encode {api:?} v{version} response: {reason}")]
    Encode {
        api: ApiKey,
        version: i16,
        reason: String,
    },
}

/// The first eight bytes of every request header, common to all header versions. Read
/// before anything else so that even a request the broker cannot decode gets an answer
/// with the right correlation id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestPrefix {
    pub api_key: i16,
    pub api_version: i16,
    pub correlation_id: i32,
}

impl RequestPrefix {
    pub fn parse(frame: &[u8]) -> Result<Self, FrameError> {
        if frame.len() < 8 {
            return Err(FrameError::TooShort(frame.len()));
        }
        Ok(Self {
            api_key: i16::from_be_bytes([frame[0], frame[1]]),
            api_version: i16::from_be_bytes([frame[2], frame[3]]),
            correlation_id: i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]),
        })
    }

    pub fn api(&self) -> Result<ApiKey, FrameError> {
        ApiKey::try_from(self.api_key).map_err(|()| FrameError::UnknownApiKey(self.api_key))
    }
}

/// Decodes a whole request frame (without its size prefix) whose version the caller has
/// already checked it supports.
pub fn decode_request(
    mut frame: Bytes,
    api: ApiKey,
    version: i16,
) -> Result<(RequestHeader, RequestKind), FrameError> {
    let malformed = |e: anyhow::Error| FrameError::Malformed {
        api,
        version,
        reason: format!("{e:#}"),
    };
    let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
        .map_err(malformed)?;
    let body = RequestKind::decode(api, &mut frame, version).map_err(malformed)?;
    Ok((header, body))
}

/// Encodes a response frame, size prefix included, ready to write to the socket (Fetch
/// responses, mostly record bytes, go through `vectored` instead).
pub fn encode_response(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> Result<Bytes, FrameError> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let buf = encode_frame(
        &header,
        api.response_header_version(version),
        |buf| body.encode(buf, version),
        api,
        version,
    )?;
    Ok(buf.freeze())
}

/// Encodes a request frame, size prefix included, as a client sends it.
pub fn encode_request(
    correlation_id: i32,
    client_id: &'static str,
    api: ApiKey,
    version: i16,
    body: &impl Encodable,
) -> Result<BytesMut, FrameError> {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(kafka_protocol::protocol::StrBytes::from_static_str(
            client_id,
        )));
    encode_frame(
        &header,
        api.request_header_version(version),
        |buf| body.encode(buf, version),
        api,
        version,
    )
}

/// A size prefix, then `header` at `header_version`, then what `body` writes.
fn encode_frame(
    header: &impl Encodable,
    header_version: i16,
    body: impl FnOnce(&mut BytesMut) -> anyhow::Result<()>,
    api: ApiKey,
    version: i16,
) -> Result<BytesMut, FrameError> {
    let fail = |e: anyhow::Error| FrameError::Encode {
        api,
        version,
        reason: format!("{e:#}"),
    };
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    header.encode(&mut buf, header_version).map_err(fail)?;
    body(&mut buf).map_err(fail)?;
    let size = i32::try_from(buf.len() - 4).map_err(|_| FrameError::Encode {
        api,
        version,
        reason: format!("{} bytes do not fit a frame", buf.len()),
    })?;
    buf[0..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest, MetadataResponse};
    use kafka_protocol::protocol::StrBytes;

    fn request_frame(api: ApiKey, version: i16, body: &impl Encodable) -> Bytes {
        let mut buf = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(77)
            .with_client_id(Some(StrBytes::from_static_str("t")))
            .encode(&mut buf, api.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn decodes_flexible_and_non_flexible_requests() {
        for version in [0, 3] {
            let frame = request_frame(
                ApiKey::ApiVersions,
                version,
                &ApiVersionsRequest::default()
                    .with_client_software_name(StrBytes::from_static_str("x"))
                    .with_client_software_version(StrBytes::from_static_str("1")),
            );
            let prefix = RequestPrefix::parse(&frame).unwrap();
            assert_eq!(prefix.correlation_id, 77);
            let (header, body) = decode_request(frame, prefix.api().unwrap(), version).unwrap();
            assert_eq!(header.client_id.as_deref(), Some("t"));
            assert!(matches!(body, RequestKind::ApiVersions(_)));
        }
    }

    #[test]
    fn every_truncation_of_a_request_is_an_error() {
        let frame = request_frame(
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        );
        for len in 0..frame.len() {
            let cut = frame.slice(..len);
            let res = RequestPrefix::parse(&cut)
                .and_then(|p| decode_request(cut.clone(), p.api()?, p.api_version));
            assert!(res.is_err(), "truncation at {len} decoded");
        }
    }

    #[test]
    fn response_frame_has_size_and_correlation_id() {
        let body = ResponseKind::Metadata(MetadataResponse::default());
        let frame = encode_response(9, ApiKey::Metadata, 1, &body).unwrap();
        let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(size, frame.len() - 4);
        assert_eq!(&frame[4..8], &9i32.to_be_bytes());
    }

    #[test]
    fn unknown_api_key_is_reported() {
        let p = RequestPrefix::parse(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1]).unwrap();
        assert!(matches!(p.api(), Err(FrameError::UnknownApiKey(0x7f00))));
    }
}
