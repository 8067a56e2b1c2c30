//! Rate and connection limits (governor), answered in the contract's shape:
//! 429 `rate_limited` with `Retry-After` for publishes per org and
//! connections per `sub`; `error` then close 4029 for a WebSocket client
//! flooding messages. `ROOMCAST_RATE_LIMITS=off` turns them all off; size
//! limits are elsewhere and always on.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{Config, Switch};

/// Seconds a client refused for too many connections should wait.
const CONNECTIONS_RETRY_AFTER: u64 = 5;

fn quota(rate: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(rate.max(1)).expect("not zero");
    let burst = NonZeroU32::new(burst.max(1)).expect("not zero");
    Quota::per_second(rate).allow_burst(burst)
}

pub struct Limits {
    publish: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
    client: Option<Quota>,
    max_per_sub: Option<usize>,
    connections: Mutex<HashMap<(String, String), usize>>,
}

/// A request over a limit: answered 429 `rate_limited` with `Retry-After`
/// (`From<Refused> for ApiError`, in http/error.rs).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Refused {
    pub message: String,
    /// Seconds to wait.
    pub retry_after: u64,
}

impl Limits {
    pub fn new(config: &Config) -> Self {
        let on = config.rate_limits == Switch::On;
        Limits {
            publish: on
                .then(|| RateLimiter::keyed(quota(config.publish_rate, config.publish_burst))),
            clock: DefaultClock::default(),
            client: on.then(|| quota(config.client_msg_rate, config.client_msg_burst)),
            max_per_sub: on.then_some(config.max_connections_per_sub),
            connections: Mutex::new(HashMap::new()),
        }
    }

    /// One publish request of `org`; refused with the time to wait.
    pub fn check_publish(&self, org: &str) -> Result<(), Refused> {
        let Some(limiter) = &self.publish else {
            return Ok(());
        };
        limiter.check_key(&org.to_owned()).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            Refused {
                message: format!("too many publishes for this org; retry in {wait:?}"),
                retry_after: retry_after(wait),
            }
        })
    }

    /// A limiter for one WebSocket client's messages (`None`: unlimited).
    pub fn client_limiter(&self) -> Option<DefaultDirectRateLimiter> {
        self.client.map(RateLimiter::direct)
    }

    /// Counts a new connection of (`org`, `sub`); refused past the limit. The
    /// guard gives the slot back when dropped.
    pub fn connect(self: &Arc<Self>, org: &str, sub: &str) -> Result<ConnectionSlot, Refused> {
        let key = (org.to_owned(), sub.to_owned());
        let mut map = self.connections.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if self.max_per_sub.is_some_and(|max| *n >= max) {
            return Err(Refused {
                message: format!(
                    "too many open connections for this sub (at most {})",
                    self.max_per_sub.unwrap_or_default()
                ),
                retry_after: CONNECTIONS_RETRY_AFTER,
            });
        }
        *n += 1;
        Ok(ConnectionSlot {
            limits: self.clone(),
            key,
        })
    }

    /// Forgets orgs that have not published for a while (bounded memory).
    pub fn sweep(&self) {
        if let Some(l) = &self.publish {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

fn retry_after(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// An open connection counted against its `sub`.
pub struct ConnectionSlot {
    limits: Arc<Limits>,
    key: (String, String),
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut map = self
            .limits
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_per_sub() {
        let mut c = Config::new("postgres://x", "s");
        c.max_connections_per_sub = 2;
        let limits = Arc::new(Limits::new(&c));
        let a = limits.connect("o", "u").unwrap();
        let _b = limits.connect("o", "u").unwrap();
        assert!(limits.connect("o", "u").is_err());
        assert!(limits.connect("o", "other").is_ok());
        drop(a);
        assert!(limits.connect("o", "u").is_ok());
        c.rate_limits = Switch::Off;
        let off = Arc::new(Limits::new(&c));
        let slots: Vec<_> = (0..10).map(|_| off.connect("o", "u").unwrap()).collect();
        assert_eq!(slots.len(), 10);
    }

    #[test]
    fn publishes_per_org() {
        let mut c = Config::new("postgres://x", "s");
        c.publish_rate = 1;
        c.publish_burst = 3;
        let limits = Limits::new(&c);
        for _ in 0..3 {
            limits.check_publish("a").unwrap();
        }
        match limits.check_publish("a") {
            Err(Refused { retry_after, .. }) => assert!(retry_after >= 1),
            other => panic!("{other:?}"),
        }
        limits.check_publish("b").unwrap();
        assert_eq!(retry_after(Duration::from_millis(1)), 1);
    }
}
