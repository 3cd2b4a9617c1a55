//! Fuzz targets: one function per decoder that reads bytes from outside the broker.
//!
//! Each target takes arbitrary bytes, runs them through the code the broker runs on the
//! same kind of input, and must return without panicking (a panic, an abort, a hang or an
//! allocation past libFuzzer's limit is a finding). `fuzz_targets/` wraps each one for
//! libFuzzer; `scripts/fuzz.sh` builds them with coverage instrumentation on stable Rust
//! and runs each for a bounded time over its committed corpus in `corpus/<target>/`
//! (seeded from real client traffic by `scripts/fuzz-corpus.sh`). Inputs that once
//! crashed are kept in the corpus, so every run replays them first.
//!
//! This crate only drives other crates' public decoders; it must not reimplement them.
//! It runs them on the broker's own allocator (the same source file), since that is
//! where an absurd length read off the wire meets the machine.

#[path = "../../crates/strata/src/alloc.rs"]
#[allow(dead_code)]
mod alloc;

#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::Decodable;
use strata_log::{LogManager, TailCache};
use strata_protocol::batch::{self, HEADER_LEN, HeaderIter};
use strata_protocol::frame::{self, RequestPrefix};
use strata_protocol::{Compression, records};

/// A request frame as a client sends it (without the size prefix): the prefix check,
/// the version check and the decode the connection does, then the record batches of a
/// Produce request through the produce path's validation.
pub fn request_frame(data: &[u8]) {
    let Ok(prefix) = RequestPrefix::parse(data) else {
        return;
    };
    let Ok(api) = prefix.api() else { return };
    let Some((min, max)) = frame::supported(api) else {
        return;
    };
    if !(min..=max).contains(&prefix.api_version) {
        return;
    }
    let Ok((_, body)) =
        frame::decode_request(Bytes::copy_from_slice(data), api, prefix.api_version)
    else {
        return;
    };
    if let RequestKind::Produce(produce) = body {
        for topic in &produce.topic_data {
            for partition in &topic.partition_data {
                if let Some(r) = &partition.records {
                    batches(r);
                }
            }
        }
    }
}

/// A response frame as a follower reads it from its leader: the first byte picks
/// Fetch v12 or OffsetForLeaderEpoch v4 (what `strata-replication` asks), the rest is
/// the frame; fetched records go through the validation a follower's append does.
pub fn response_frame(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (api, version) = if pick & 1 == 0 {
        (ApiKey::Fetch, 12)
    } else {
        (ApiKey::OffsetForLeaderEpoch, 4)
    };
    let mut frame = Bytes::copy_from_slice(rest);
    if ResponseHeader::decode(&mut frame, api.response_header_version(version)).is_err() {
        return;
    }
    if let Ok(ResponseKind::Fetch(fetch)) = ResponseKind::decode(api, &mut frame, version) {
        for topic in &fetch.responses {
            for partition in &topic.partitions {
                if let Some(r) = &partition.records {
                    batches(r);
                }
            }
        }
    }
}

/// Record batches as a producer or a leader sends them. The first byte's low bit says
/// whether to fix up each batch's CRC first, so that mutations reach the record and
/// decompression code behind the CRC check.
pub fn record_batch(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if flags & 1 == 1 {
        fix_crcs(&mut buf);
    }
    batches(&buf);
}

/// What the broker does with incoming batches: validation, then, per valid batch, the
/// per-record walks (decompressing with the broker's bound) and a recompression.
fn batches(buf: &[u8]) {
    let Ok(headers) = batch::validate_all(buf) else {
        return;
    };
    let mut pos = 0;
    for h in headers {
        let end = pos + h.total_len();
        let Some(one) = buf.get(pos..end) else { return };
        pos = end;
        let _ = records::min_timestamp(one);
        let _ = records::first_at_or_after(one, h.base_timestamp);
        let _ = records::recompress(one, Compression::None, None);
    }
}

/// Sets the CRC of every whole batch in `buf` to match its contents.
fn fix_crcs(buf: &mut [u8]) {
    let spans: Vec<(usize, usize)> = HeaderIter::new(buf)
        .map(|(pos, h)| (pos, h.total_len()))
        .collect();
    for (pos, len) in spans {
        if let Some(b) = buf.get_mut(pos..pos + len)
            && b.len() >= HEADER_LEN
        {
            batch::update_crc(b);
        }
    }
}

/// The files of a partition directory as recovery finds them after a crash or on a
/// damaged disk: the input is split into files (`[u8 kind][u16 length][bytes]`...),
/// the directory is opened as the broker opens its logs at start-up, and whatever
/// survived is read back, checked and appended to.
pub fn partition_dir(data: &[u8]) {
    let Ok(root) = tempfile::tempdir() else {
        return;
    };
    let dir = root
        .path()
        .join("4f2a1c3e-0000-4000-8000-000000000001")
        .join("0");
    if std::fs::create_dir_all(&dir).is_err() || write_files(&dir, data).is_err() {
        return;
    }
    let Ok(logs) = LogManager::open(root.path(), metrics(), TailCache::new(1 << 20), 0) else {
        return;
    };
    for (_, p) in logs.partitions() {
        for (base, _) in p.unverified_segments() {
            let _ = p.verify_segment(base);
        }
        let mut offset = p.offsets().log_start;
        while let Ok(read) = p.read(offset, 64 * 1024, true) {
            let Ok(headers) = batch::validate_all(&read.records) else {
                break;
            };
            match headers.last() {
                Some(last) if last.next_offset() > offset => offset = last.next_offset(),
                _ => break,
            }
        }
        let _ = p.offset_for_timestamp(0);
        let _ = p.producers();
        let _ = p.latest_epoch();
        let one = batch::encode(&[batch::Record {
            key: None,
            value: Some(b"after recovery"),
            timestamp: 0,
        }]);
        if let Ok(h) = batch::validate_all(&one)
            && p.append(&one, &h, 0, 0).is_ok()
        {
            let _ = p.sync();
        }
    }
}

/// File names a partition directory holds, by the kind byte of [`partition_dir`].
const FILES: &[&str] = &[
    "00000000000000000000.log",
    "00000000000000000000.index",
    "00000000000000000000.timeindex",
    "00000000000000000000.producers",
    "00000000000000000100.log",
    "00000000000000000100.index",
    "leader-epochs",
    "acked",
];

/// A metadata node's directory as start-up finds it (same input format as
/// [`partition_dir`]): the Raft log, the state snapshot and the incarnation file are
/// opened and replayed as a node does before it joins the quorum.
/// The first byte's low bit says whether to fix up the records' CRCs once written, so
/// that mutations reach the JSON behind them.
pub fn meta_dir(data: &[u8]) {
    let Some((&flags, files)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile::tempdir() else { return };
    if write_named(dir.path(), files, META_FILES).is_err() {
        return;
    }
    if flags & 1 == 1 {
        for name in &META_FILES[..2] {
            let path = dir.path().join(name);
            if let Ok(mut bytes) = std::fs::read(&path) {
                fix_meta_crcs(&mut bytes);
                let _ = std::fs::write(&path, bytes);
            }
        }
    }
    let _ = strata_meta::fuzzing::open_dir(dir.path());
}

/// Sets the CRC of every whole record of a metadata file (an 8-byte magic, then
/// `[u32 length][u32 CRC-32C of length and payload][payload]`, little-endian).
fn fix_meta_crcs(buf: &mut [u8]) {
    let mut pos = 8;
    while let Some(head) = buf.get(pos..pos + 8) {
        let len_bytes = [head[0], head[1], head[2], head[3]];
        let end = pos + 8 + u32::from_le_bytes(len_bytes) as usize;
        let Some(payload) = buf.get(pos + 8..end) else {
            return;
        };
        let crc = crc32c::crc32c_append(crc32c::crc32c(&len_bytes), payload);
        buf[pos + 4..pos + 8].copy_from_slice(&crc.to_le_bytes());
        pos = end;
    }
}

/// File names of a metadata directory, by kind byte.
const META_FILES: &[&str] = &["raft.log", "state.snapshot", "incarnation"];

/// The body of a metadata RPC frame from a peer (JSON), as a request and as a response.
pub fn meta_rpc(data: &[u8]) {
    strata_meta::fuzzing::decode_rpc(data);
}

/// SASL tokens as a client sends them in SaslAuthenticate: the first byte picks the
/// mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER); the rest is one token,
/// or for SCRAM the client-first and client-final messages split at the first 0xff.
/// Every user exists (with password "pw"), so the exchange gets past the lookup; the
/// OAUTHBEARER tokens are checked against a fixed JWKS with an RSA and an EC key.
pub fn sasl_exchange(data: &[u8]) {
    use strata_security::Mechanism;
    use strata_security::sasl::{Exchange, Verifiers};
    use strata_security::scram::{Credential, ScramHash};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mechanism = match pick % 4 {
        0 => Mechanism::Plain,
        1 => Mechanism::Scram(ScramHash::Sha256),
        2 => Mechanism::Scram(ScramHash::Sha512),
        _ => Mechanism::OauthBearer,
    };
    static CREDS: OnceLock<(Credential, Credential)> = OnceLock::new();
    let creds = CREDS.get_or_init(|| {
        let make = |h| match Credential::from_password(h, "pw", 4096) {
            Ok(c) => c,
            Err(e) => panic!("credential: {e}"),
        };
        (make(ScramHash::Sha256), make(ScramHash::Sha512))
    });
    let lookup = |_: &str, h: ScramHash| {
        Some(match h {
            ScramHash::Sha256 => creds.0.clone(),
            ScramHash::Sha512 => creds.1.clone(),
        })
    };
    let with = Verifiers {
        credentials: &lookup,
        tokens: Some(jwt_validator()),
        now_s: 1_800_000_000,
    };
    let mut exchange = Exchange::new(mechanism);
    for token in rest.splitn(2, |&b| b == 0xff) {
        if !matches!(
            exchange.step(token, &with),
            strata_security::sasl::Step::Challenge(_)
        ) {
            break;
        }
    }
}

/// A validator over a fixed JWKS (written once to a temporary file).
fn jwt_validator() -> &'static strata_security::oauth::JwtValidator {
    static V: OnceLock<strata_security::oauth::JwtValidator> = OnceLock::new();
    V.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("strata-fuzz-jwks-{}", std::process::id()));
        let path = dir.join("jwks.json");
        let written = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, JWKS));
        if let Err(e) = written {
            panic!("writing the JWKS: {e}");
        }
        let settings = strata_security::oauth::OauthSettings {
            jwks: strata_security::oauth::JwksSource::File(path),
            issuer: Some("https://idp.example".into()),
            audience: vec!["kafka".into()],
            subject_claim: "sub".into(),
            clock_skew_s: 30,
        };
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => panic!("runtime: {e}"),
        };
        match runtime.block_on(strata_security::oauth::JwtValidator::load(settings)) {
            Ok(v) => v,
            Err(e) => panic!("JWKS: {e}"),
        }
    })
}

const JWKS: &str = r#"{"keys":[
{"kty":"RSA","kid":"r1","use":"sig","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
{"kty":"EC","crv":"P-256","kid":"e1","use":"sig","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}
]}"#;

/// Security settings read from the config file or environment (which an operator,
/// not a client, writes, but which must not crash the broker either): Kafka's listener
/// settings, `scram.bootstrap`, a JWKS document and a client certificate (DER). The
/// first byte picks which; the rest is the input.
pub fn security_settings(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 4 {
        0 => {
            let mut parts = text.split('\n');
            let _ = strata_security::listeners::Listeners::resolve(
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(strata_security::listeners::DEFAULT_PROTOCOL_MAP),
                parts.next().unwrap_or(""),
            );
        }
        1 => {
            let _ = strata_security::scram::parse_bootstrap(&text);
        }
        2 => {
            let _ = strata_security::oauth::jwks_keys(rest);
        }
        _ => {
            let _ = strata_security::tls::certificate_principal(rest);
        }
    }
}

fn write_files(dir: &Path, data: &[u8]) -> std::io::Result<()> {
    write_named(dir, data, FILES)
}

/// Writes the files of an input made of `[u8 kind][u16 length][bytes]` records, the kind
/// picking a name from `names`.
fn write_named(dir: &Path, mut data: &[u8], names: &[&str]) -> std::io::Result<()> {
    while let [kind, hi, lo, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
        let name = names[usize::from(*kind) % names.len()];
        std::fs::write(dir.join(name), &rest[..len])?;
        data = &rest[len..];
    }
    Ok(())
}

fn metrics() -> strata_telemetry::LogMetrics {
    static METRICS: OnceLock<strata_telemetry::Metrics> = OnceLock::new();
    METRICS
        .get_or_init(|| match strata_telemetry::Metrics::new() {
            Ok(m) => m,
            Err(e) => panic!("metrics registry: {e}"),
        })
        .log
        .clone()
}
