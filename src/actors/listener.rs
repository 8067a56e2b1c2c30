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
//!
//! With a bus (`ROOMCAST_BUS`) this instance's own commits and ephemeral
//! events travel on the bus, and only SQL producers still notify. Their
//! hints are then relayed onto the bus by one instance: the listener that
//! holds the relay advisory lock (session-level, on this very connection,
//! so it is released when the instance dies and another listener takes it
//! within a second). The other listeners ignore hints.

use crate::seal::Seal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use futures_util::{stream, StreamExt};
use tokio_postgres::{AsyncMessage, NoTls};

use crate::mail::{
    Announcement, Arrivals, BoardsMail, Ephemeral, Hint, Kick, PresenceIn, PresenceMail,
    RoomChanged, RouterMail,
};
use crate::metrics::{Metrics, QueryKind};
use crate::protocol::{EphemeralFrame, RoomId, RoomKey};
use crate::store::EPHEMERAL_CHANNEL;

/// The `application_name` of the listener's connection (operators and tests
/// find it in `pg_stat_activity` by this name).
pub const APPLICATION_NAME: &str = "roomcast-listener";
/// How often the idle listener checks that its connection is alive.
const KEEPALIVE: Duration = Duration::from_secs(10);
pub use crate::store::PRESENCE_CHANNEL;
/// The NOTIFY channel of captured rows committed to the outbox.
pub const OUTBOX_CHANNEL: &str = "roomcast_outbox";
/// How often a listener that is not the relay tries to become it.
const RELAY_TRY: Duration = Duration::from_secs(1);
/// Advisory lock of the instance relaying SQL producers' commits onto the bus.
const RELAY_LOCK: i64 = 0x7263_7265_6c61_7901; // "rcrelay" + 1

/// Where hints go.
#[derive(Clone)]
pub enum Hints {
    /// No bus: every hint to the Broadcaster (and ephemeral announcements of
    /// other instances too).
    Router,
    /// A bus: hints to the relay while this instance holds the relay lock,
    /// nowhere otherwise.
    Relay(Recipient<Hint>),
}

/// Runs the listener for ever on the current (actix) runtime.
///
/// It also LISTENs on `roomcast_ephemeral`, where instances announce
/// ephemeral events to each other (`instance` tells this instance's own
/// announcements apart: they were delivered locally already).
pub fn spawn(
    mut config: tokio_postgres::Config,
    router: RouterMail,
    metrics: Arc<Metrics>,
    connected: Arc<AtomicBool>,
    (instance, seal): (Arc<str>, Arc<Seal>),
    hints: Hints,
    presence: PresenceMail,
    boards: BoardsMail,
    capture: Recipient<Kick>,
) {
    config.application_name(APPLICATION_NAME);
    config.connect_timeout(Duration::from_secs(5));
    actix_web::rt::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let to = Targets {
            arrivals: Arrivals::new(&router, presence, boards),
            capture,
        };
        loop {
            match listen(
                &config,
                &to,
                &metrics,
                &connected,
                (&instance, &seal),
                &hints,
            )
            .await
            {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => log::warn!("listener: {e}; reconnecting in {backoff:?}"),
            }
            connected.store(false, Ordering::Release);
            if metrics.relay_leader.get() == 1 {
                log::warn!("no longer the relay (the listener connection ended)");
            }
            metrics.relay_leader.set(0);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
}

/// Where what the listener hears goes. Any database role can NOTIFY, so
/// nothing heard is handed with `do_send`: a full mailbox drops it, counted
/// (`roomcast_inbound_overflow_total{from="notify"}`) and repaired
/// (`crate::mailbox`).
struct Targets {
    arrivals: Arrivals,
    capture: Recipient<Kick>,
}

async fn listen(
    config: &tokio_postgres::Config,
    to: &Targets,
    metrics: &Metrics,
    connected: &AtomicBool,
    (instance, seal): (&str, &Seal),
    hints: &Hints,
) -> Result<(), tokio_postgres::Error> {
    let overflow = &metrics.overflow_notify;
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
            .batch_execute(&format!(
                "LISTEN roomcast; LISTEN {EPHEMERAL_CHANNEL}; LISTEN {PRESENCE_CHANNEL}; LISTEN {OUTBOX_CHANNEL}"
            ))
            .await?;
        connected.store(true, Ordering::Release);
        log::info!("listener connected");
        // Whatever was committed (or announced) while we were not listening
        // is found now.
        to.arrivals.router.repair_soon();
        to.arrivals.presence.repair_soon();
        to.arrivals.boards.repair_soon();
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.tick().await;
        let mut relay_try = tokio::time::interval(RELAY_TRY);
        let mut leader = false;
        loop {
            tokio::select! {
                n = rx.recv() => match n {
                    Some(n) if n.channel() == PRESENCE_CHANNEL => {
                        match seal.open_text(PRESENCE_CHANNEL, n.payload()) {
                            Some(text) => {
                                if let Ok(a) = serde_json::from_str::<Announcement>(&text) {
                                    to.arrivals.presence.hand(&to.arrivals.presence_in, PresenceIn(a), true, overflow);
                                }
                            }
                            None => metrics.bus_rejected.inc(),
                        }
                    }
                    Some(n) if n.channel() == OUTBOX_CHANNEL => to.capture.do_send(Kick),
                    Some(n) if n.channel() == EPHEMERAL_CHANNEL => {
                        match seal.open_text(EPHEMERAL_CHANNEL, n.payload()) {
                            Some(text) => {
                                if let (Hints::Router, Some(e)) = (hints, parse_ephemeral(&text, instance)) {
                                    to.arrivals.router.hand(&to.arrivals.ephemeral, e, false, overflow);
                                }
                            }
                            None => metrics.bus_rejected.inc(),
                        }
                    }
                    Some(n) => {
                        metrics.notifications.inc();
                        match (hints, parse_hint(n.payload())) {
                            (Hints::Router, Some(hint)) => {
                                let changed = RoomChanged { key: hint.key.clone() };
                                to.arrivals.boards.hand(&to.arrivals.room_changed, changed, true, overflow);
                                to.arrivals.router.hand(&to.arrivals.hint, hint, true, overflow);
                            }
                            // Dropped when the relay is full: the other instances'
                            // head checks find the commit (the bus is at most once).
                            (Hints::Relay(relay), Some(hint)) if leader => {
                                let _ = relay.try_send(hint);
                            }
                            _ => {}
                        }
                    }
                    None => return Ok(()), // the connection ended
                },
                _ = keepalive.tick() => {
                    metrics.queries(QueryKind::Background, 1);
                    // NOTIFY is not replicated: a listener left on a server
                    // that became a standby (a switchover) hears nothing.
                    let row = client.query_one("SHOW transaction_read_only", &[]).await?;
                    if row.get::<_, &str>(0) == "on" {
                        log::warn!("listener: the database became read-only (a standby?); reconnecting to the primary");
                        return Ok(());
                    }
                }
                _ = relay_try.tick(), if matches!(hints, Hints::Relay(_)) && !leader => {
                    metrics.queries(QueryKind::Background, 1);
                    let row = client
                        .query_one("SELECT pg_try_advisory_lock($1)", &[&RELAY_LOCK])
                        .await?;
                    if row.get::<_, bool>(0) {
                        leader = true;
                        metrics.relay_leader.set(1);
                        log::info!("this instance relays SQL producers' commits onto the bus");
                        // Commits made before it took over are found by the head checks.
                        to.arrivals.router.repair_soon();
                    }
                }
            }
        }
    }
    .await;
    driver.abort();
    result
}

/// A hint payload is the JSON array `[org, room, seq]`, seq 1 or more.
fn parse_hint(payload: &str) -> Option<Hint> {
    let (org, room, seq): (String, String, i64) = serde_json::from_str(payload).ok()?;
    if seq < 1 {
        return None;
    }
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
