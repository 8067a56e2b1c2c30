//! Handing what arrives from outside (the bus, NOTIFY) to an actor without
//! growing its mailbox past its bound: anyone who can publish on the broker
//! or NOTIFY the database decides how fast that is, not roomcast.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::dev::SendError;
use actix::Recipient;
use prometheus::IntCounter;

/// An actor's mailbox as the broker's or the listener's task sees it. A
/// burst
/// must not grow the mailbox past its bound (`do_send` would), so
/// messages are handed with `try_send`: what a full mailbox refuses is
/// dropped and counted (`roomcast_inbound_overflow_total`),
/// and the actor is sent its repair once it has room (the head check, a
/// presence or room list resync), which finds again what the dropped
/// messages said. One repair is pending at a time.
pub struct Mailbox<R: actix::Message<Result = ()> + Send + 'static> {
    repair: Recipient<R>,
    make: fn() -> R,
    pending: Arc<AtomicBool>,
}

impl<R: actix::Message<Result = ()> + Send + 'static> Clone for Mailbox<R> {
    fn clone(&self) -> Self {
        Mailbox {
            repair: self.repair.clone(),
            make: self.make,
            pending: self.pending.clone(),
        }
    }
}

/// While a repair finds the mailbox full, it tries again this often.
const REPAIR_RETRY: Duration = Duration::from_millis(20);

impl<R: actix::Message<Result = ()> + Send + 'static> Mailbox<R> {
    pub fn new(repair: Recipient<R>, make: fn() -> R) -> Self {
        Mailbox {
            repair,
            make,
            pending: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Hands `msg` to `to` (an address of this mailbox's actor), or drops
    /// it if the mailbox is full; `repairs` says whether a drop needs the
    /// repair (ephemeral events are best effort: it does not).
    pub fn hand<M>(&self, to: &Recipient<M>, msg: M, repairs: bool, overflow: &IntCounter)
    where
        M: actix::Message<Result = ()> + Send + 'static,
    {
        if let Err(SendError::Full(_)) = to.try_send(msg) {
            overflow.inc();
            if repairs {
                self.repair_soon();
            }
        }
    }

    /// Sends the repair once the mailbox has room (one pending at a time).
    pub fn repair_soon(&self) {
        if self.pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let (repair, make, pending) = (self.repair.clone(), self.make, self.pending.clone());
        actix_web::rt::spawn(async move {
            loop {
                // Cleared before the repair is queued: a drop after this
                // point asks for another one (at worst one too many).
                pending.store(false, Ordering::Release);
                match repair.try_send(make()) {
                    Err(SendError::Full(_)) => {
                        if pending.swap(true, Ordering::AcqRel) {
                            // Another drop started its own repair.
                            return;
                        }
                        tokio::time::sleep(REPAIR_RETRY).await;
                    }
                    _ => return,
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::{Actor, Context, Handler, Message};
    use std::sync::atomic::AtomicUsize;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Ping;

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Repair;

    #[derive(Default, Clone)]
    struct Seen {
        pings: Arc<AtomicUsize>,
        repairs: Arc<AtomicUsize>,
    }

    struct Sink(Seen);

    const BOUND: usize = 16;

    impl Actor for Sink {
        type Context = Context<Self>;
        fn started(&mut self, ctx: &mut Context<Self>) {
            ctx.set_mailbox_capacity(BOUND);
        }
    }

    impl Handler<Ping> for Sink {
        type Result = ();
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) {
            self.0.pings.fetch_add(1, Ordering::Relaxed);
        }
    }

    impl Handler<Repair> for Sink {
        type Result = ();
        fn handle(&mut self, _: Repair, _: &mut Context<Self>) {
            self.0.repairs.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A flood handed while the actor cannot run (as when the broker
    /// delivers faster than the actor handles): the mailbox never holds
    /// more than its bound (with `do_send` all 10,000 were queued), every
    /// drop is counted, and one repair follows each flood.
    #[actix_web::test]
    async fn a_flood_never_grows_the_mailbox_and_is_repaired_once() {
        let seen = Seen::default();
        let addr = Sink(seen.clone()).start();
        tokio::task::yield_now().await; // `started`: the capacity is set
        let mailbox = Mailbox::new(addr.clone().recipient(), || Repair);
        let to = addr.recipient::<Ping>();
        let overflow = IntCounter::new("overflow", "test").unwrap();
        for round in 1..=2 {
            let pings = seen.pings.load(Ordering::Relaxed);
            for _ in 0..10_000 {
                mailbox.hand(&to, Ping, true, &overflow);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let taken = seen.pings.load(Ordering::Relaxed) - pings;
            assert!(
                taken <= BOUND + 2,
                "round {round}: {taken} pings were queued"
            );
            assert_eq!(overflow.get() as usize, round * 10_000 - (taken + pings));
            assert_eq!(seen.repairs.load(Ordering::Relaxed), round);
        }
    }

    /// Best-effort messages (`repairs: false`) are dropped with no repair.
    #[actix_web::test]
    async fn best_effort_drops_ask_no_repair() {
        let seen = Seen::default();
        let addr = Sink(seen.clone()).start();
        tokio::task::yield_now().await;
        let mailbox = Mailbox::new(addr.clone().recipient(), || Repair);
        let to = addr.recipient::<Ping>();
        let overflow = IntCounter::new("overflow", "test").unwrap();
        for _ in 0..1_000 {
            mailbox.hand(&to, Ping, false, &overflow);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(overflow.get() > 900);
        assert_eq!(seen.repairs.load(Ordering::Relaxed), 0);
    }
}
