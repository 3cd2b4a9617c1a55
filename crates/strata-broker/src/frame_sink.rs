//! Writes response frames to a connection: runs of bytes in memory with vectored writes,
//! and ranges of segment files with `sendfile` on a plain TCP socket (the kernel hands
//! the page-cache pages to the socket: no copy into the broker and out again). On TLS,
//! which must encrypt them, file ranges are read into memory first. This module only
//! writes; what goes into a frame is the handlers' business.

use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;

use strata_protocol::vectored::{FileRange, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

/// Most bytes of a file range read into memory at once where `sendfile` cannot be used.
const READ_CHUNK: usize = 1 << 20;

/// Where response frames are written.
pub(crate) trait FrameSink: AsyncWrite + Unpin {
    /// Writes the start of `range` (at least one byte) and says how much: read into
    /// memory (off the async threads) and written, unless the sink can do better.
    async fn write_file(&mut self, range: &FileRange) -> io::Result<usize> {
        let r = range.clone();
        let data = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; r.len.min(READ_CHUNK)];
            r.file.read_exact_at(&mut buf, r.pos).map(|()| buf)
        })
        .await
        .map_err(io::Error::other)??;
        self.write_all(&data).await?;
        Ok(data.len())
    }
}

impl FrameSink for OwnedWriteHalf {
    /// `sendfile` from the file to the socket, whenever the socket has room.
    async fn write_file(&mut self, range: &FileRange) -> io::Result<usize> {
        let stream: &TcpStream = self.as_ref();
        loop {
            stream.writable().await?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                let mut at = range.pos;
                rustix::fs::sendfile(stream, &*range.file, Some(&mut at), range.len)
                    .map_err(io::Error::from)
            });
            match sent {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the segment file ended before its records were sent (cut meanwhile)",
                    ));
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A TLS connection's writing half.
impl<T: AsyncRead + AsyncWrite> FrameSink for WriteHalf<T> {}

/// Writes all of `frame`.
pub(crate) async fn write_frame<W: FrameSink>(wr: &mut W, frame: &mut Frame) -> io::Result<()> {
    while frame.remaining() > 0 {
        let n = match frame.front_file() {
            Some(range) => wr.write_file(range).await?,
            None => {
                let mut slices = [IoSlice::new(&[]); 64];
                let k = frame.memory_slices(&mut slices);
                wr.write_vectored(&slices[..k]).await?
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        frame.advance(n);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use bytes::Bytes;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseKind};
    use strata_protocol::frame::encode_response;
    use strata_protocol::vectored::{FileRecords, encode_fetch_response};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A Fetch response (v16) whose two partitions' records are 3 MB and 70 KB of a file,
    /// as the frame to write (records in the file) and as the bytes it must give; and the
    /// file.
    fn response() -> (Frame, Bytes, Arc<std::fs::File>) {
        let data: Vec<u8> = (0..3_100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&data).unwrap();
        let file = Arc::new(file);
        let parts = [(10usize, 3_000_000usize), (3_010_000, 70_000)];
        let build = |records: &dyn Fn(usize, usize) -> Bytes| {
            let partitions = parts
                .iter()
                .enumerate()
                .map(|(i, &(pos, len))| {
                    PartitionData::default()
                        .with_partition_index(i as i32)
                        .with_records(Some(records(pos, len)))
                })
                .collect();
            FetchResponse::default().with_responses(vec![
                FetchableTopicResponse::default().with_partitions(partitions),
            ])
        };
        let copied = build(&|pos, len| Bytes::copy_from_slice(&data[pos..pos + len]));
        let copied = encode_response(3, ApiKey::Fetch, 16, &ResponseKind::Fetch(copied)).unwrap();
        let files = std::cell::RefCell::new(FileRecords::default());
        let resp = build(&|pos, len| {
            files.borrow_mut().add(vec![FileRange {
                file: file.clone(),
                pos: pos as u64,
                len,
            }])
        });
        let frame = encode_fetch_response(3, 16, resp, files.into_inner()).unwrap();
        (frame, copied, file)
    }

    /// A TCP connection whose writing half has a small send buffer (so sendfile sends
    /// part of a range and the socket fills up), and a task that reads the other end,
    /// lagging, until it closes.
    async fn tcp() -> (OwnedWriteHalf, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = vec![0u8; 7_000];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                got.extend_from_slice(&buf[..n]);
                tokio::task::yield_now().await;
            }
            got
        });
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(8192).unwrap();
        let (_, wr) = socket.connect(addr).await.unwrap().into_split();
        (wr, reader)
    }

    fn assert_same(got: &[u8], want: &[u8]) {
        assert!(
            got == want,
            "{} bytes arrived, {} expected (or they differ)",
            got.len(),
            want.len()
        );
    }

    /// Through TCP, with partial sends and a full socket, the frame arrives byte for byte.
    #[tokio::test]
    async fn file_ranges_are_sent_byte_for_byte_over_tcp() {
        let (mut frame, want, _) = response();
        let (mut wr, reader) = tcp().await;
        write_frame(&mut wr, &mut frame).await.unwrap();
        assert_eq!(frame.remaining(), 0);
        drop(wr);
        assert_same(&reader.await.unwrap(), &want);
    }

    /// A sink without sendfile (TLS's) reads the file ranges and writes them.
    #[tokio::test]
    async fn file_ranges_are_read_and_written_elsewhere() {
        let (mut frame, want, _) = response();
        let (a, mut b) = tokio::io::duplex(64 << 10);
        let (_rd, mut wr) = tokio::io::split(a);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        });
        write_frame(&mut wr, &mut frame).await.unwrap();
        drop((wr, _rd));
        assert_same(&reader.await.unwrap(), &want);
    }

    /// A file cut shorter than the frame's range ends the write with an error (the
    /// connection is closed) instead of waiting or sending something else.
    #[tokio::test]
    async fn a_cut_file_ends_the_write() {
        let (mut frame, _, file) = response();
        file.set_len(1_000_000).unwrap();
        let (mut wr, reader) = tcp().await;
        let e = write_frame(&mut wr, &mut frame).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        drop(wr);
        // What the file still had, and nothing after it.
        assert!(reader.await.unwrap().len() < 1_000_200);
    }
}
