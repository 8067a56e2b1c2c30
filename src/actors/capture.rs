//! The Capture actor: moves what captured tables appended to
//! `roomcast_outbox` into their rooms' logs.
//!
//! `roomcast_capture` (migrations/V11) never publishes inside the writer's
//! transaction: taking the room's lock there made writers wait on each
//! other and on publishes, and deadlock (docs/decisions.md). It appends
//! the event to the outbox and NOTIFYs `roomcast_outbox` at commit. Every
//! instance moves committed rows, one room per transaction (holding that
//! room's lock only, so a mover never waits in a cycle), in outbox order,
//! deleting them in the same transaction: each captured change becomes one
//! event, exactly once. A room being moved by another instance is skipped
//! (an advisory lock per room), so two movers never reorder a room.
//!
//! It runs when the listener hears the NOTIFY, and every second whatever
//! it hears (a lost notification delays a captured change by a second at
//! most).

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use deadpool_postgres::Pool;

pub use crate::mail::Kick;
use crate::metrics::{Metrics, QueryKind};
use crate::store::{self, StoreError};

/// The outbox is looked at this often whatever the notifications say.
const EVERY: Duration = Duration::from_secs(1);
/// Rooms moved per round (a full round is followed by another at once).
const ROOMS_PER_ROUND: i64 = 200;

pub struct Capture {
    pool: Pool,
    metrics: Arc<Metrics>,
    /// A round is running.
    moving: bool,
    /// Another round is due when this one ends.
    again: bool,
}

impl Capture {
    pub fn new(pool: Pool, metrics: Arc<Metrics>) -> Self {
        Capture {
            pool,
            metrics,
            moving: false,
            again: false,
        }
    }

    fn round(&mut self, ctx: &mut Context<Self>) {
        if self.moving {
            self.again = true;
            return;
        }
        self.moving = true;
        self.again = false;
        let (pool, metrics) = (self.pool.clone(), self.metrics.clone());
        async move {
            let client = pool.get().await?;
            metrics.queries(QueryKind::Background, 1);
            let rooms = store::outbox_rooms(&**client, ROOMS_PER_ROUND).await?;
            let full = rooms.len() as i64 >= ROOMS_PER_ROUND;
            let mut moved = 0i64;
            for (org, room) in rooms {
                metrics.queries(QueryKind::Publish, 1);
                moved += i64::from(store::move_outbox(&**client, &org, &room).await?.max(0));
            }
            Ok::<_, StoreError>((moved, full))
        }
        .into_actor(self)
        .map(|res, act, ctx| {
            act.moving = false;
            match res {
                Ok((moved, full)) => {
                    if moved > 0 {
                        log::debug!("capture: {moved} captured changes published");
                    }
                    if full {
                        act.again = true;
                    }
                }
                Err(e) => log::warn!("capture: moving the outbox: {e}"),
            }
            if std::mem::take(&mut act.again) {
                act.round(ctx);
            }
        })
        .spawn(ctx);
    }
}

impl Actor for Capture {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(EVERY, |act, ctx| act.round(ctx));
    }
}

impl Handler<Kick> for Capture {
    type Result = ();

    fn handle(&mut self, _: Kick, ctx: &mut Context<Self>) {
        self.round(ctx);
    }
}
