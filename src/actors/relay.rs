//! The Relay actor: with a bus, commits made by SQL producers
//! (`roomcast_publish` inside their own transactions) still arrive as NOTIFY
//! hints. One instance (the one whose listener holds the relay advisory
//! lock) reads such commits back once and puts their frames on the bus, so
//! an SQL-published event costs one database read, not one per instance.
//! When that instance dies its lock goes with its connection and another
//! instance's listener takes it over; commits whose hint went to the dead
//! one are found by every instance's head check.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::bus::Bus;
use crate::mail::{
    BoardsMail, Catchup, CatchupDone, Committed, DbMail, Hint, RoomChanged, RouterMail,
};
use crate::protocol::{Frame, RoomKey, Via};

/// A read that failed is tried again after this long.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// A room with no SQL commit for this long is forgotten.
const IDLE: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Relayed {
    /// Highest seq relayed (or decided not to be: older than the first hint).
    done: i64,
    /// Highest seq a hint announced (a hint is not the truth: only what
    /// the database answers is relayed, and a read that finds nothing drops
    /// what the hint said).
    wanted: i64,
    /// Something was relayed (the room was not only heard of by hints).
    confirmed: bool,
    reading: bool,
    touched: Option<Instant>,
}

pub struct Relay {
    db: DbMail,
    boards: BoardsMail,
    router: RouterMail,
    bus: Bus,
    rooms: HashMap<RoomKey, Relayed>,
}

impl Relay {
    pub fn new(db: DbMail, router: RouterMail, boards: BoardsMail, bus: Bus) -> Self {
        Relay {
            db,
            boards,
            router,
            bus,
            rooms: HashMap::new(),
        }
    }

    fn read(&mut self, key: &RoomKey, ctx: &mut Context<Self>) {
        let Some(r) = self.rooms.get_mut(key) else {
            return;
        };
        if r.reading || r.done >= r.wanted {
            return;
        }
        r.reading = true;
        self.db.catchup.do_send(Catchup {
            key: key.clone(),
            after: r.done,
            via: Via::Push,
            reply: ctx.address().recipient(),
        });
    }
}

impl Actor for Relay {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(Duration::from_secs(60), |act, _| {
            act.rooms
                .retain(|_, r| r.reading || r.touched.is_some_and(|t| t.elapsed() < IDLE));
        });
    }
}

impl Handler<Hint> for Relay {
    type Result = ();

    /// An SQL producer committed `seq`: relay it (and whatever came with it
    /// that is not relayed yet). A room first heard of is relayed from the
    /// hint on: what came before was another instance's to put on the bus.
    fn handle(&mut self, msg: Hint, ctx: &mut Context<Self>) {
        let r = self
            .rooms
            .entry(msg.key.clone())
            .or_insert_with(|| Relayed {
                done: msg.seq - 1,
                ..Relayed::default()
            });
        r.touched = Some(Instant::now());
        r.wanted = r.wanted.max(msg.seq);
        self.read(&msg.key, ctx);
    }
}

impl Handler<CatchupDone> for Relay {
    type Result = ();

    fn handle(&mut self, msg: CatchupDone, ctx: &mut Context<Self>) {
        let Some(r) = self.rooms.get_mut(&msg.key) else {
            return;
        };
        r.reading = false;
        match msg.frames {
            Ok(frames) => {
                let fresh: Vec<Frame> = frames.iter().filter(|f| f.seq > r.done).cloned().collect();
                if let Some(last) = fresh.last() {
                    r.done = last.seq;
                    r.confirmed = true;
                    self.bus.publish_frames(&msg.key, &fresh, false);
                    self.boards.changed.do_send(RoomChanged {
                        key: msg.key.clone(),
                    });
                    self.router.committed.do_send(Committed {
                        key: msg.key.clone(),
                        frames: fresh,
                        closed: false,
                    });
                } else if !msg.more {
                    // Nothing more to read: the hint's seq is not there (a
                    // forged or stale hint). Never wait for it again, and
                    // never take it for the head: a room known only by such
                    // hints is forgotten (the next hint starts it afresh).
                    if !r.confirmed {
                        self.rooms.remove(&msg.key);
                        return;
                    }
                    r.wanted = r.done;
                }
                self.read(&msg.key, ctx);
            }
            Err(e) => {
                log::warn!("relay: reading {} failed: {e}", msg.key);
                let key = msg.key.clone();
                ctx.run_later(RETRY_AFTER, move |act, ctx| act.read(&key, ctx));
            }
        }
    }
}
