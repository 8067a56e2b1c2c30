//! The Listener: one dedicated PostgreSQL connection (never from the pool)
//! that LISTENs on channel `roomcast` for commits made by any instance or by
//! `roomcast_publish` in SQL, and hands each hint to the Broadcaster.
//!
//! Why the notification carries no payload but (org, room, seq): NOTIFY
//! payloads are capped at 8000 bytes and a hint is all the router needs; it
//! reads the events back from the log, coalesced. A notification can be lost
//! (the connection drops, the listener is restarted), so after every
//! (re)connect the Broadcaster is told to check every followed room's head,
//! and its poll timer covers the rest.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures_util::{stream, StreamExt};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::db::EPHEMERAL_CHANNEL;
use crate::metrics::{Metrics, QueryKind};
use crate::protocol::{EphemeralFrame, RoomId, RoomKey};
use crate::room::{Broadcaster, Ephemeral, Hint, ListenerReconnected};

/// The `application_name` of the listener's connection (operators and tests
/// find it in `pg_stat_activity` by this name).
pub const APPLICATION_NAME: &str = "roomcast-listener";
/// How often the idle listener checks that its connection is alive.
const KEEPALIVE: Duration = Duration::from_secs(10);

/// Runs the listener for ever on the current (actix) runtime.
///
/// It also LISTENs on `roomcast_ephemeral`, where instances announce
/// ephemeral events to each other (`instance` tells this instance's own
/// announcements apart: they were delivered locally already).
pub fn spawn(
    mut config: tokio_postgres::Config,
    router: Addr<Broadcaster>,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
    instance: Arc<str>,
) {
    config.application_name(APPLICATION_NAME);
    config.connect_timeout(Duration::from_secs(5));
    actix_web::rt::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        loop {
            match listen(&config, &router, &metrics, &connected, &instance).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => log::warn!("listener: {e}; reconnecting in {backoff:?}"),
            }
            connected.store(false, Ordering::Release);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

async fn listen(
    config: &tokio_postgres::Config,
    router: &Addr<Broadcaster>,
    metrics: &Metrics,
    connected: &AtomicBool,
    instance: &str,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut conn) = config.connect(NoTls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = actix_web::rt::spawn(async move {
        let mut messages = stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::warn!("listener connection: {e}");
                    break;
                }
            }
        }
    });
    metrics.queries(QueryKind::Other, 1);
    let result = async {
        client
            .batch_execute(&format!("LISTEN roomcast; LISTEN {EPHEMERAL_CHANNEL}"))
            .await?;
        connected.store(true, Ordering::Release);
        log::info!("listener connected");
        // Whatever was committed while we were not listening is found now.
        router.do_send(ListenerReconnected);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        loop {
            tokio::select! {
                n = rx.recv() => match n {
                    Some(n) if n.channel() == EPHEMERAL_CHANNEL => {
                        if let Some(e) = parse_ephemeral(n.payload(), instance) {
                            router.do_send(e);
                        }
                    }
                    Some(n) => {
                        metrics.notifications.inc();
                        if let Some(hint) = parse_hint(n.payload()) {
                            router.do_send(hint);
                        }
                    }
                    None => return Ok(()), // the connection ended
                },
                _ = keepalive.tick() => {
                    metrics.queries(QueryKind::Other, 1);
                    client.simple_query("SELECT 1").await?;
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// A hint payload is the JSON array `[org, room, seq]`.
fn parse_hint(payload: &str) -> Option<Hint> {
    let (org, room, seq): (String, String, i64) = serde_json::from_str(payload).ok()?;
    let room = RoomId::parse(&room).ok()?;
    Some(Hint {
        key: RoomKey { org, room },
        seq,
    })
}

/// An ephemeral announcement is `[instance, org, room, frame]`; `None` for
/// this instance's own (or a malformed one).
fn parse_ephemeral(payload: &str, me: &str) -> Option<Ephemeral> {
    let (from, org, room, text): (String, String, String, String) =
        serde_json::from_str(payload).ok()?;
    if from == me {
        return None;
    }
    let room = RoomId::parse(&room).ok()?;
    let frame = EphemeralFrame::decode(&room, &text)?;
    Some(Ephemeral {
        key: RoomKey { org, room },
        frame: Arc::new(frame),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hints() {
        let h = super::parse_hint(r#"["acme","call-1",42]"#).unwrap();
        assert_eq!(h.seq, 42);
        assert_eq!(h.key.org, "acme");
        assert!(super::parse_hint("nonsense").is_none());
    }
}
