//! The outbound budget of a session (WebSocket or SSE).
//!
//! actix's WebSocket context buffers without bound (actix/actix-web#2441),
//! so the session counts what it hands to its transport and a wrapper around
//! the response body counts what the HTTP layer has taken to write to the
//! socket (the HTTP/1 dispatcher only pulls the body while its own write
//! buffer is small). The difference is the session's unsent backlog: past the
//! soft bound the session stops taking pushes and pulls its catch-up from the
//! database as it drains; past the hard bound it is closed (4008). Bounds are
//! in bytes and in frames: the end offset of every unsent frame is kept, so
//! the frames still queued are counted exactly.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;

use crate::metrics::Backlog;

pub use crate::config::Bounds;

pub struct Outbox {
    /// Written by the session, taken by the transport; shared with the
    /// metrics (`roomcast_session_backlog_bytes`).
    counters: Arc<Backlog>,
    /// End offsets (in written bytes) of the frames not yet taken, and when
    /// each was written.
    ends: VecDeque<(u64, Instant)>,
    bounds: Bounds,
}

impl Outbox {
    pub fn new(bounds: Bounds) -> Self {
        Outbox {
            counters: Arc::new(Backlog {
                written: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                oldest_ms: AtomicU64::new(0),
            }),
            ends: VecDeque::new(),
            bounds,
        }
    }

    /// Frames handed to the transport and not yet (wholly) taken.
    pub fn frames(&mut self) -> usize {
        let sent = self.counters.sent.load(Ordering::Relaxed);
        let before = self.ends.len();
        while self.ends.front().is_some_and(|&(end, _)| end <= sent) {
            self.ends.pop_front();
        }
        if self.ends.len() != before {
            self.publish_oldest();
        }
        self.ends.len()
    }

    /// How long the oldest unsent frame has waited.
    pub fn lag(&mut self) -> Duration {
        self.frames();
        self.ends
            .front()
            .map_or(Duration::ZERO, |(_, at)| at.elapsed())
    }

    /// Tells the metrics when the oldest unsent frame was written.
    fn publish_oldest(&self) {
        let ms = self
            .ends
            .front()
            .map_or(0, |&(_, at)| crate::metrics::clock_ms(at));
        self.counters.oldest_ms.store(ms, Ordering::Relaxed);
    }

    /// The counters, for the transport's body stream and the metrics.
    pub fn counters(&self) -> Arc<Backlog> {
        self.counters.clone()
    }

    /// One more frame of `n` bytes was handed to the transport.
    pub fn wrote(&mut self, n: usize) {
        let end = self.counters.written.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        self.frames(); // forget what was taken
        self.ends.push_back((end, Instant::now()));
        if self.ends.len() == 1 {
            self.publish_oldest();
        }
    }

    /// Bytes handed to the transport and not yet taken by the HTTP layer.
    pub fn backlog(&self) -> u64 {
        self.counters.bytes()
    }

    /// Below the soft bounds: events may be pushed.
    pub fn has_room(&mut self) -> bool {
        self.backlog() < self.bounds.bytes as u64
            && self.frames() < self.bounds.frames
            && self.lag() < self.bounds.lag
    }

    /// Drained to half the soft bounds: a session that stopped taking pushes
    /// resumes (the gap keeps it from flapping at the bound).
    pub fn drained(&mut self) -> bool {
        self.backlog() <= self.bounds.bytes as u64 / 2
            && self.frames() <= self.bounds.frames / 2
            && self.lag() < self.bounds.lag / 2
    }

    /// Past a hard bound: the session is closed.
    pub fn overflowed(&mut self) -> bool {
        self.backlog() > self.bounds.close_bytes.max(self.bounds.bytes) as u64
            || self.frames() > self.bounds.close_frames.max(self.bounds.frames)
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

    fn bounds(bytes: usize, frames: usize) -> Bounds {
        Bounds {
            bytes,
            frames,
            close_bytes: bytes * 4,
            close_frames: frames * 4,
            lag: Duration::from_secs(3600),
        }
    }

    #[test]
    fn lag_bound() {
        let mut out = Outbox::new(Bounds {
            lag: Duration::from_millis(50),
            ..bounds(1 << 20, 1000)
        });
        out.wrote(10);
        assert!(out.has_room());
        std::thread::sleep(Duration::from_millis(60));
        assert!(!out.has_room(), "the oldest unsent frame waited 60 ms");
        assert!(out.counters().oldest_ms.load(Ordering::Relaxed) > 0);
        out.counters().sent.fetch_add(10, Ordering::Relaxed);
        assert!(out.drained() && out.has_room());
        assert_eq!(out.lag(), Duration::ZERO);
        assert_eq!(out.counters().oldest_ms.load(Ordering::Relaxed), 0);
    }

    /// `roomcast_session_lag_seconds` is the age of the oldest unsent frame
    /// of any session, and 0 once it is taken.
    #[test]
    fn lag_metric() {
        let metrics = crate::metrics::Metrics::new();
        let lag = |m: &crate::metrics::Metrics| -> f64 {
            m.render()
                .lines()
                .find_map(|l| l.strip_prefix("roomcast_session_lag_seconds "))
                .expect("the lag gauge")
                .parse()
                .unwrap()
        };
        let mut out = Outbox::new(bounds(1 << 20, 1000));
        metrics.watch_backlog(1, &out.counters());
        assert_eq!(lag(&metrics), 0.0);
        out.wrote(10);
        std::thread::sleep(Duration::from_millis(300));
        out.wrote(10);
        let seen = lag(&metrics);
        assert!((0.29..5.0).contains(&seen), "lag {seen} s");
        // The first frame is taken: the second one is the oldest now.
        out.counters().sent.fetch_add(10, Ordering::Relaxed);
        out.frames();
        assert!(lag(&metrics) < seen, "still {} s", lag(&metrics));
        out.counters().sent.fetch_add(10, Ordering::Relaxed);
        out.frames();
        assert_eq!(lag(&metrics), 0.0);
    }

    #[test]
    fn backlog_bounds() {
        let mut out = Outbox::new(bounds(100, 1000));
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

    #[test]
    fn frame_bounds() {
        let mut out = Outbox::new(bounds(1 << 20, 4));
        for _ in 0..3 {
            out.wrote(10);
        }
        assert_eq!(out.frames(), 3);
        assert!(out.has_room());
        out.wrote(10);
        assert!(!out.has_room(), "4 frames queued");
        // The transport takes one and a half frames: two are still queued.
        out.counters().sent.fetch_add(25, Ordering::Relaxed);
        assert_eq!(out.frames(), 2);
        assert!(out.drained() && out.has_room());
        for _ in 0..15 {
            out.wrote(1);
        }
        assert!(out.overflowed(), "17 frames > 16");
    }
}
