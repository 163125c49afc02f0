//! The idle keep-alive connections to one endpoint, of one kind (hyper senders or raw sockets).

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use hyper::client::conn::http1::SendRequest;
use tokio::net::TcpStream;

use super::RequestBody;
use crate::data::clock::clock_ms;

/// A connection that can wait in an idle list.
pub(super) trait Reusable {
    /// Whether the peer closed it (or it can otherwise not take a request).
    fn is_closed(&self) -> bool;
}

impl Reusable for SendRequest<RequestBody> {
    fn is_closed(&self) -> bool {
        SendRequest::is_closed(self)
    }
}

impl Reusable for TcpStream {
    /// A socket that is readable while idle was closed by the upstream, or sent bytes no
    /// request asked for: either way it cannot take one. Costs a syscall only when the
    /// reactor has seen it readable since the last read ran dry.
    fn is_closed(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_read_ready(&mut cx) {
            Poll::Pending => false,
            Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(())) => {
                !matches!(self.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }
}

/// Idle connections, the most recently returned at the back: a request takes the warmest,
/// and the oldest age out at the front.
#[derive(Debug)]
pub(super) struct IdleList<C> {
    list: Mutex<VecDeque<Idle<C>>>,
}

#[derive(Debug)]
struct Idle<C> {
    conn: C,
    since_ms: u64,
}

impl<C: Reusable> IdleList<C> {
    pub(super) fn new() -> Self {
        IdleList { list: Mutex::new(VecDeque::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle<C>>> {
        self.list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned connection still open and idle for less than `idle_ms`.
    pub(super) fn check_out(&self, idle_ms: u64) -> Option<C> {
        let now = clock_ms();
        loop {
            let conn = {
                let mut list = self.lock();
                let c = list.pop_back()?;
                if now.saturating_sub(c.since_ms) >= idle_ms {
                    // The most recent one expired, so did all the older ones.
                    list.clear();
                    return None;
                }
                c.conn
            };
            // Checked outside the lock: for a socket it may be a syscall.
            if !conn.is_closed() {
                return Some(conn);
            }
        }
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(super) fn check_in(&self, conn: C) {
        self.lock().push_back(Idle { conn, since_ms: clock_ms() });
    }

    /// Closes the connections idle for `idle_ms` or closed by the peer, oldest first.
    pub(super) fn close_expired(&self, idle_ms: u64) {
        let now = clock_ms();
        let mut list = self.lock();
        while list.front().is_some_and(|c| now.saturating_sub(c.since_ms) >= idle_ms || c.conn.is_closed()) {
            list.pop_front();
        }
    }

    /// Closes them all.
    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}
