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
}

impl ClientIo {
    /// Wraps `stream`, with `prefix` to read first.
    pub fn new(stream: TcpStream, prefix: Bytes, send_timeout: Duration) -> Self {
        ClientIo { prefix, stream, send_timeout, stall: None, stalled: false, keep_open: Arc::default() }
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
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
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
}
