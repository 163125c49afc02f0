//! A client's request body as handlers see it: hyper's, with a deadline between reads and a
//! flag that says whether it was read to its end.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body a [`Handler`](super::Handler) gets. Reading it fails once the client sent
/// nothing for `read_timeout` while the body was wanted (nginx's `client_body_timeout`); the
/// wait for a consumer (an upstream reading slowly) does not count. `complete` is set when
/// the last byte was read: the HTTP/1 driver hands the connection on only then, so bytes of a
/// body nobody read are never parsed as a next request.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    read_timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    complete: Option<Arc<AtomicBool>>,
}

/// Reading the client's request body failed: the client's fault, never the upstream's (the
/// upstream exchange it breaks is not held against the endpoint, and not retried).
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// The client sent nothing for the body read timeout.
    #[error("request body: nothing received within the body read timeout")]
    Timeout,
    /// The body was broken (invalid chunked coding, cut short) or the client left.
    #[error("request body: {0}")]
    Broken(#[source] hyper::Error),
}

impl ClientBodyError {
    /// Whether the error (or one of its sources) is a client body error.
    pub fn in_chain<'e>(e: &'e (dyn std::error::Error + 'static)) -> Option<&'e ClientBodyError> {
        let mut source = Some(e);
        while let Some(err) = source {
            if let Some(found) = err.downcast_ref::<ClientBodyError>() {
                return Some(found);
            }
            source = err.source();
        }
        None
    }
}

impl ClientBody {
    /// Wraps `inner`; `complete`, if given, is set once the body was read to its end.
    pub fn new(inner: Incoming, read_timeout: Duration, complete: Option<Arc<AtomicBool>>) -> Self {
        let body = ClientBody { inner, read_timeout, timer: None, waiting: false, complete };
        if body.inner.is_end_stream() {
            body.mark_complete();
        }
        body
    }

    /// A flag set once the body was read to its end (the connection's, if it has one).
    pub fn completion(&mut self) -> Arc<AtomicBool> {
        let flag = self.complete.get_or_insert_with(|| Arc::new(AtomicBool::new(self.inner.is_end_stream())));
        Arc::clone(flag)
    }

    fn mark_complete(&self) {
        if let Some(flag) = &self.complete {
            flag.store(true, Ordering::Release);
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.mark_complete();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                if this.inner.is_end_stream() {
                    this.mark_complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ClientBodyError::Broken(e).into()))),
            Poll::Pending => {
                let deadline = Instant::now() + this.read_timeout;
                if !this.waiting {
                    this.waiting = true;
                    match &mut this.timer {
                        Some(t) => t.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                match this.timer.as_mut().expect("armed above").as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(ClientBodyError::Timeout.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
