//! The outbound budget of a session (WebSocket or SSE).
//!
//! actix's WebSocket context buffers without bound (actix/actix-web#2441),
//! so the session counts what it hands to its transport and a wrapper around
//! the response body counts what the HTTP layer has taken to write to the
//! socket (the HTTP/1 dispatcher only pulls the body while its own write
//! buffer is small). The difference is the session's unsent backlog: past the
//! soft bound the session stops taking pushes and pulls its catch-up from the
//! database as it drains; past the hard bound it is closed (4008).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::metrics::Backlog;

pub struct Outbox {
    /// Written by the session, taken by the transport; shared with the
    /// metrics (`roomcast_session_backlog_bytes`).
    counters: Arc<Backlog>,
    soft: u64,
    hard: u64,
}

impl Outbox {
    pub fn new(soft: usize, hard: usize) -> Self {
        Outbox {
            counters: Arc::new(Backlog {
                written: AtomicU64::new(0),
                sent: AtomicU64::new(0),
            }),
            soft: soft as u64,
            hard: hard.max(soft) as u64,
        }
    }

    /// The counters, for the transport's body stream and the metrics.
    pub fn counters(&self) -> Arc<Backlog> {
        self.counters.clone()
    }

    /// `n` more bytes were handed to the transport.
    pub fn wrote(&mut self, n: usize) {
        self.counters.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes handed to the transport and not yet taken by the HTTP layer.
    pub fn backlog(&self) -> u64 {
        self.counters.bytes()
    }

    /// Below the soft bound: events may be pushed.
    pub fn has_room(&self) -> bool {
        self.backlog() < self.soft
    }

    /// Drained to half the soft bound: a session that stopped taking pushes
    /// resumes (the gap keeps it from flapping at the bound).
    pub fn drained(&self) -> bool {
        self.backlog() <= self.soft / 2
    }

    /// Past the hard bound: the session is closed.
    pub fn overflowed(&self) -> bool {
        self.backlog() > self.hard
    }
}

/// Bytes a server-to-client WebSocket frame with `payload` bytes takes on the
/// wire (servers do not mask).
pub fn ws_frame_len(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        }
}

/// A response body stream that counts the bytes the HTTP layer takes.
pub struct Counted<S> {
    inner: Pin<Box<S>>,
    counters: Arc<Backlog>,
}

impl<S> Counted<S> {
    pub fn new(inner: S, counters: Arc<Backlog>) -> Self {
        Counted {
            inner: Box::pin(inner),
            counters,
        }
    }
}

impl<S, E> Stream for Counted<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &polled {
            self.counters
                .sent
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_bounds() {
        let mut out = Outbox::new(100, 400);
        assert!(out.has_room());
        out.wrote(150);
        assert!(!out.has_room() && !out.drained() && !out.overflowed());
        out.counters().sent.fetch_add(100, Ordering::Relaxed);
        assert!(out.drained());
        out.wrote(500);
        assert!(out.overflowed());
        assert_eq!(ws_frame_len(10), 12);
        assert_eq!(ws_frame_len(200), 204);
        assert_eq!(ws_frame_len(70_000), 70_010);
    }
}
