//! The client socket as the HTTP/1 and HTTP/2 codecs see it: bytes already read first, and a
//! deadline on every write that stalls.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::data::http1::chunked::Scanner;

/// A client connection's socket. Reads return `prefix` first: bytes an earlier reader (the
/// protocol sniffing, Weir's HTTP/1 codec or a finished hyper connection) took but did not use.
/// A write that cannot make progress for `send_timeout` fails with `TimedOut` (nginx's
/// `send_timeout`): a client that stops reading cannot hold a connection, its buffers and an
/// upstream connection forever.
#[derive(Debug)]
pub struct ClientIo {
    /// Bytes read but not yet consumed; served before the socket's.
    pub prefix: Bytes,
    /// The socket.
    pub stream: TcpStream,
    send_timeout: Duration,
    /// Armed while a write is blocked; allocated on the first stall only.
    stall: Option<Pin<Box<Sleep>>>,
    stalled: bool,
    /// While set, `poll_shutdown` does nothing: a hyper connection is being wound down and
    /// the socket outlives it.
    keep_open: Arc<AtomicBool>,
    /// While hyper serves a request: where that request ends. Boxed: a parked connection
    /// holds a `ClientIo`, and has none.
    pub(crate) fence: Option<Box<Fence>>,
}

/// Where the request hyper is serving ends: reads stop there (pending until hyper is wound
/// down), so hyper never reads the next request's head. That head is read and checked by the
/// listener's codec instead: hyper would apply its own rules to it (keep one of two equal
/// `Content-Length` fields, drop one beside `Transfer-Encoding`, answer a NUL with an empty
/// 400 of its own), not Weir's.
#[derive(Debug)]
pub(crate) struct Fence {
    /// Bytes hyper may still read: the head, and a length-delimited body.
    left: u64,
    /// A chunked body follows those bytes; it ends where this says.
    chunked: Option<Scanner>,
}

impl Fence {
    /// A request of `len` bytes in all (its head and a length-delimited body).
    pub(crate) fn length(len: u64) -> Self {
        Fence { left: len, chunked: None }
    }

    /// A head of `head` bytes, then a chunked body.
    pub(crate) fn chunked(head: u64) -> Self {
        Fence { left: head, chunked: Some(Scanner::default()) }
    }
}

impl ClientIo {
    /// Wraps `stream`, with `prefix` to read first.
    pub fn new(stream: TcpStream, prefix: Bytes, send_timeout: Duration) -> Self {
        ClientIo { prefix, stream, send_timeout, stall: None, stalled: false, keep_open: Arc::default(), fence: None }
    }

    /// Takes the pending bytes into a new read buffer of at least `capacity`, for a codec
    /// that reads a head.
    pub fn take_prefix(&mut self, capacity: usize) -> bytes::BytesMut {
        let pending = std::mem::take(&mut self.prefix);
        let mut buf = bytes::BytesMut::with_capacity(capacity.max(pending.len()));
        buf.extend_from_slice(&pending);
        buf
    }

    /// Reads `prefix` first, then the socket, with no fence.
    fn poll_read_open(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }

    /// Reads no further than the fence. Nothing is read past it: bytes of the next request
    /// that came with the end of a chunked body go back in front of `prefix`.
    fn poll_read_fenced(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let fence = self.fence.as_deref().expect("called with a fence");
        let want = match (fence.left, &fence.chunked) {
            // The request's end. Nothing wakes this read: the driver of the hyper connection
            // winds it down once the response is out, and takes the socket back.
            (0, None) => return Poll::Pending,
            (0, Some(_)) => buf.remaining(),
            (left, _) => buf.remaining().min(usize::try_from(left).unwrap_or(usize::MAX)),
        };
        let room = buf.initialize_unfilled_to(want);
        let mut limited = ReadBuf::new(room);
        ready!(self.poll_read_open(cx, &mut limited))?;
        let read = limited.filled();
        let fence = self.fence.as_deref_mut().expect("called with a fence");
        let n = if fence.left > 0 {
            fence.left -= read.len() as u64;
            read.len()
        } else {
            let scanner = fence.chunked.as_mut().expect("a chunked body is left");
            match scanner.scan(read) {
                Ok(None) => read.len(),
                Ok(Some(end)) => {
                    fence.chunked = None;
                    if end < read.len() {
                        self.prefix = Bytes::from([&read[end..], &self.prefix[..]].concat());
                    }
                    end
                }
                // hyper's chunked decoder may take what Weir's scanner refuses (the fast path
                // refuses it likewise): the body fails here, and the connection with it.
                Err(e) => return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
            }
        };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }

    /// The flag that, while set, keeps `poll_shutdown` from closing the socket.
    pub fn keep_open(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.keep_open)
    }

    /// A write made no progress: fails once the stall lasted `send_timeout`.
    fn poll_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let deadline = Instant::now() + self.send_timeout;
        if !self.stalled {
            self.stalled = true;
            match &mut self.stall {
                Some(sleep) => sleep.as_mut().reset(deadline),
                None => self.stall = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let sleep = self.stall.as_mut().expect("armed above");
        ready!(sleep.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read within the send timeout")))
    }

    fn progressed<T>(&mut self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = false;
        }
        r
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.fence.is_some() { this.poll_read_fenced(cx, buf) } else { this.poll_read_open(cx, buf) }
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Pending => this.poll_stall(cx),
            r => this.progressed(r),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Pending => this.poll_stall(cx),
            r => this.progressed(r),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.keep_open.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_client_that_stops_reading_times_out_the_write() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let s = TcpStream::connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await; // never reads
            drop(s);
        });
        let (stream, _) = listener.accept().await.unwrap();
        let mut io = ClientIo::new(stream, Bytes::from_static(b"ab"), Duration::from_millis(200));
        let mut two = [0u8; 2];
        io.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"ab");
        let chunk = vec![0u8; 1 << 20];
        let started = std::time::Instant::now();
        let err = loop {
            if let Err(e) = io.write_all(&chunk).await {
                break e;
            }
            assert!(started.elapsed() < Duration::from_secs(4), "writes never stalled");
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        client.abort();
    }

    /// A `ClientIo` over a connected socket, with `prefix` pending and `fence` set.
    async fn fenced(prefix: &'static [u8], fence: Fence) -> (ClientIo, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let mut io = ClientIo::new(stream, Bytes::from_static(prefix), Duration::from_secs(5));
        io.fence = Some(Box::new(fence));
        (io, client)
    }

    /// Reads in small pieces until a read would wait.
    async fn read_until_pending(io: &mut ClientIo) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 7];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), io.read(&mut chunk)).await {
            assert!(n > 0, "no end of file before the fence");
            out.extend_from_slice(&chunk[..n]);
        }
        out
    }

    #[tokio::test]
    async fn reads_stop_at_the_end_of_a_length_delimited_request() {
        let first = b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (mut io, mut client) =
            fenced(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhel", Fence::length(first.len() as u64))
                .await;
        client.write_all(b"loGET /next HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(read_until_pending(&mut io).await, first);
        // What follows stays for the next reader, unread.
        io.fence = None;
        let mut rest = [0u8; 22];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET /next HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn reads_stop_at_the_end_of_a_chunked_body() {
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        let all = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n";
        let (mut io, _client) = fenced(all, Fence::chunked(head.len() as u64)).await;
        let read = read_until_pending(&mut io).await;
        assert_eq!(read, &all[..all.len() - 22]);
        assert_eq!(io.prefix.as_ref(), b"GET /next HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn a_chunked_body_weir_refuses_fails_the_read() {
        let (mut io, _client) = fenced(b"POST / HTTP/1.1\r\n\r\n5\nhello\r\n0\r\n\r\n", Fence::chunked(19)).await;
        let mut buf = vec![0u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 19);
        assert_eq!(io.read(&mut buf).await.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
