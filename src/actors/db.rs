//! The Db actor: runs publishes and catch-up queries against the pool.
//!
//! Catch-up is coalesced here. Requests for one room wait in a queue while a
//! round of queries for that room is running; the next round takes them all,
//! sorts them by cursor and serves every cluster of nearby cursors (within one
//! page) with a single query whose frames are shared by all its requesters.
//! A reconnect storm of a thousand sessions on one room therefore costs a
//! handful of queries, not a thousand. Snapshot reads (one per subscribe) are
//! shared the same way.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use deadpool_postgres::Pool;
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::bus::Bus;
pub use crate::mail::{
    Announce, Catchup, CatchupDone, ChangeMark, Heads, Health, LatestRead, ListRooms, Members,
    PollPage, Publish, RoomsById, RoomsChangedSince, Snapshot,
};
use crate::mail::{BoardsMail, CheckHeads, Committed, Hint, RoomChanged, RouterMail};
use crate::metrics::{Metrics, QueryKind};
use crate::protocol::{Event, Frame, NewEvent, RoomKey, RoomStatus, Via};
use crate::store::{
    self, OrgHealth, Page, PollFrom, Published, RoomFilter, RoomRow, RoomView, StoreError,
};

pub use crate::store::EPHEMERAL_CHANNEL;
/// NOTIFY payloads are capped at 8000 bytes by PostgreSQL.
const MAX_NOTIFY_PAYLOAD: usize = 7999;

struct Waiter {
    after: i64,
    reply: Recipient<CatchupDone>,
}

#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    running: bool,
}

/// Admission control for reads: at most this many run at once, the rest
/// wait their turn in order (a reconnect storm queues here instead of
/// timing out on the pool), and the pool keeps connections free for
/// publishes.
#[derive(Clone)]
struct Reads {
    pool: Pool,
    permits: Arc<Semaphore>,
    /// Longest a read may take, all included.
    bound: std::time::Duration,
}

impl Reads {
    /// Runs a read with a bound on its whole time (slot, connection and
    /// statement): a read that never answers (a connection black-holed by
    /// the network) ends as `Unavailable` instead of holding its room's
    /// queue for ever.
    async fn run<T>(
        &self,
        read: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.bound, read)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(
                    "a read did not answer in time".into(),
                ))
            })
    }

    async fn get(&self) -> Result<(OwnedSemaphorePermit, deadpool_postgres::Object), StoreError> {
        // Bounded: a hung database answers "unavailable" instead of piling
        // up reads that wait for ever.
        let permit = tokio::time::timeout(READ_SLOT_WAIT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| StoreError::Unavailable("no read slot: the database is slow".into()))?
            .map_err(|_| StoreError::Unavailable("shutting down".into()))?;
        Ok((permit, self.pool.get().await?))
    }
}

/// Longest wait for a read slot.
const READ_SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Pool connections kept for publishes whatever the reads do.
const RESERVED_FOR_PUBLISH: usize = 4;

/// Sends the hints of this instance's commits, batched: while one NOTIFY
/// statement runs, the next hints gather (and coalesce per room), so the
/// database takes one notifying commit per batch instead of one per publish.
/// A hint lost here (a crash right after a commit) is covered by every
/// instance's poll fallback.
async fn notifier(
    pool: Pool,
    metrics: Arc<Metrics>,
    mut rx: mpsc::UnboundedReceiver<(RoomKey, i64)>,
) {
    while let Some((key, seq)) = rx.recv().await {
        let mut batch: HashMap<RoomKey, i64> = HashMap::new();
        batch.insert(key, seq);
        while let Ok((k, s)) = rx.try_recv() {
            let e = batch.entry(k).or_insert(s);
            *e = (*e).max(s);
        }
        let payloads: Vec<String> = batch
            .into_iter()
            .map(|(k, s)| serde_json::json!([k.org, k.room, s]).to_string())
            .collect();
        metrics.queries(QueryKind::Publish, 1);
        let sent = async {
            let client = pool.get().await?;
            store::notify_hints(&client, &payloads).await
        };
        if let Err(e) = sent.await {
            log::warn!(
                "{} hints not sent (the poll fallback covers them): {e}",
                payloads.len()
            );
        }
    }
}

pub struct Db {
    pool: Pool,
    reads: Reads,
    /// This instance's commits, to the notifier.
    hints: mpsc::UnboundedSender<(RoomKey, i64)>,
    metrics: Arc<Metrics>,
    /// Where committed events go (the Broadcaster).
    router: RouterMail,
    /// Live room lists: told of every room this instance commits to.
    boards: BoardsMail,
    /// Events per catch-up query.
    page: i64,
    /// Bytes of event data per catch-up or poll page (at least one event).
    page_bytes: i64,
    /// Pending catch-up requests per (room, label).
    queues: HashMap<(RoomKey, Via), Queue>,
    /// Snapshot reads running, with everyone waiting for each.
    snapshots: HashMap<RoomKey, Vec<oneshot::Sender<Result<RoomView, StoreError>>>>,
    /// The bus to other instances: this instance's commits and ephemeral
    /// events go there (`None`: NOTIFY hints and NOTIFY announcements).
    bus: Option<Bus>,
    /// Seals NOTIFY announcements of ephemeral events.
    seal: Arc<crate::seal::Seal>,
    /// Poll pages being read, with everyone waiting for each.
    pages: HashMap<(RoomKey, PollFrom, i64), Vec<oneshot::Sender<Result<Arc<Page>, StoreError>>>>,
    /// Rooms with a publish round running, and the publishes that arrived
    /// meanwhile (they share the next round's transaction: group commit).
    publishing: HashMap<RoomKey, Vec<Waiting>>,
    /// How long a publish's COMMIT may wait (`store::publish`).
    commit_wait: Option<std::time::Duration>,
}

impl Db {
    pub fn new(
        pool: Pool,
        metrics: Arc<Metrics>,
        router: RouterMail,
        boards: BoardsMail,
        page: i64,
        page_bytes: i64,
        (bus, seal): (Option<Bus>, Arc<crate::seal::Seal>),
        read_bound: std::time::Duration,
    ) -> Self {
        let readers = (pool.status().max_size.saturating_sub(RESERVED_FOR_PUBLISH)).max(2);
        let (hints, rx) = mpsc::unbounded_channel();
        if bus.is_none() {
            actix_web::rt::spawn(notifier(pool.clone(), metrics.clone(), rx));
        }
        Db {
            bus,
            seal,
            hints,
            reads: Reads {
                pool: pool.clone(),
                permits: Arc::new(Semaphore::new(readers)),
                bound: read_bound,
            },
            pool,
            metrics,
            router,
            boards,
            page: page.max(1),
            page_bytes: page_bytes.max(1),
            queues: HashMap::new(),
            snapshots: HashMap::new(),
            pages: HashMap::new(),
            publishing: HashMap::new(),
            commit_wait: None,
        }
    }

    /// A COMMIT waiting longer than `wait` is answered 503 (ambiguous).
    pub fn commit_wait(mut self, wait: Option<std::time::Duration>) -> Self {
        self.commit_wait = wait;
        self
    }

    /// Starts a round for `qkey` if none is running: every waiting request
    /// is served, nearby cursors sharing one query.
    fn run_round(&mut self, qkey: (RoomKey, Via), ctx: &mut Context<Self>) {
        let Some(queue) = self.queues.get_mut(&qkey) else {
            return;
        };
        if queue.running {
            return;
        }
        let mut waiting = std::mem::take(&mut queue.waiting);
        if waiting.is_empty() {
            self.queues.remove(&qkey);
            return;
        }
        queue.running = true;
        waiting.sort_by_key(|w| w.after);
        let (page, page_bytes) = (self.page, self.page_bytes);
        let mut clusters: Vec<(i64, Vec<Waiter>)> = Vec::new();
        for w in waiting {
            match clusters.last_mut() {
                Some((start, members)) if w.after < *start + page => members.push(w),
                _ => clusters.push((w.after, vec![w])),
            }
        }
        self.metrics
            .queries(QueryKind::Catchup, clusters.len() as u64);
        let reads = self.reads.clone();
        let key = qkey.0.clone();
        let starts: Vec<i64> = clusters.iter().map(|(s, _)| *s).collect();
        let fut = async move {
            join_all(starts.into_iter().map(|after| {
                let reads = reads.clone();
                let key = key.clone();
                async move {
                    reads
                        .run(async {
                            let (_permit, client) = reads.get().await?;
                            store::events_after(&client, &key, after, page, page_bytes).await
                        })
                        .await
                }
            }))
            .await
        };
        ctx.spawn(fut.into_actor(self).map(move |results, act, ctx| {
            let (key, via) = &qkey;
            let mut again = Vec::new();
            for ((start, members), result) in clusters.into_iter().zip(results) {
                let more = matches!(&result, Ok(p) if p.more);
                // The lowest seq stored: the room's `first`, or the page's
                // first event if it starts past the cursor (the pruner
                // deleted those events and has not moved `first` yet).
                let first = result.as_ref().ok().and_then(|p| {
                    let shown = p.events.first().map(|e| e.seq).filter(|&q| q > start + 1);
                    p.first.max(shown)
                });
                let born = result.as_ref().ok().and_then(|p| p.born);
                let lost = result.as_ref().map(|p| p.lost.clone()).unwrap_or_default();
                let frames = result.map(|p| encode(key, &p.events, *via));
                if let Err(e) = &frames {
                    log::warn!("catch-up query failed room={key}: {e}");
                }
                let last = frames.as_ref().ok().and_then(|f| f.last().map(|f| f.seq));
                let done = CatchupDone {
                    key: key.clone(),
                    frames,
                    more,
                    first,
                    born,
                    lost,
                };
                for m in members {
                    // A page cut short (by its byte bound) before this
                    // member's cursor holds nothing for it: it waits for the
                    // next round, which reads from its own cursor.
                    if more && last.is_some_and(|l| l <= m.after) {
                        again.push(m);
                    } else {
                        m.reply.do_send(done.clone());
                    }
                }
            }
            if let Some(q) = act.queues.get_mut(&qkey) {
                q.running = false;
                q.waiting.extend(again);
            }
            act.run_round(qkey, ctx);
        }));
    }
}

fn encode(key: &RoomKey, events: &[Event], via: Via) -> Arc<[Frame]> {
    events
        .iter()
        .map(|e| Frame::encode(&key.room, e, via))
        .collect()
}

impl Actor for Db {
    type Context = Context<Self>;
}

/// A publish waiting for its room's next round.
struct Waiting {
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Published>, StoreError>>,
}

/// Events one group-commit round takes at most (more requests wait for the
/// next round; a single request may carry up to 1000 itself).
const GROUP_MAX_EVENTS: usize = 1000;

impl Handler<Publish> for Db {
    type Result = ResponseFuture<Result<Vec<Published>, StoreError>>;

    /// Group commit: while a room's publish round runs, publishes to that room
    /// wait, and the next round commits all of them in one transaction (one
    /// `roomcast_publish_many` call), each request answered with its own seqs.
    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let waiting = Waiting {
            events: msg.events,
            reply: tx,
        };
        match self.publishing.entry(msg.key.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push(waiting),
            Entry::Vacant(e) => {
                e.insert(Vec::new());
                self.publish_round(msg.key, vec![waiting], ctx);
            }
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Internal("publish dropped".into())))
        })
    }
}

impl Db {
    /// Commits `group` (publishes to one room, in arrival order) in one
    /// transaction. When that fails, each request is retried alone, in order,
    /// so one request's error (room closed, bad input) never fails another.
    /// Then starts the next round with whatever arrived meanwhile.
    fn publish_round(&mut self, key: RoomKey, group: Vec<Waiting>, ctx: &mut Context<Self>) {
        let pool = self.pool.clone();
        let metrics = self.metrics.clone();
        let mut counts = Vec::with_capacity(group.len());
        let mut replies = Vec::with_capacity(group.len());
        let mut all = Vec::new();
        for mut w in group {
            counts.push(w.events.len());
            all.append(&mut w.events);
            replies.push(w.reply);
        }
        let round_key = key.clone();
        let commit_wait = self.commit_wait;
        let fut = async move {
            // BEGIN, roomcast_publish_many, COMMIT.
            metrics.queries(QueryKind::Publish, 3);
            let mut results = Vec::with_capacity(counts.len());
            match store::publish(&pool, &round_key, &all, commit_wait).await {
                Ok(mut published) => {
                    for &n in counts.iter().rev() {
                        let tail = published.split_off(published.len() - n);
                        results.push(Ok(tail));
                    }
                    results.reverse();
                }
                // An error that proves nothing was written and names one
                // request's fault (a terminal status mid-round, bad input):
                // each request again, alone, so it fails only its own.
                Err(StoreError::RoomClosed(_) | StoreError::Invalid(_)) if counts.len() > 1 => {
                    let mut at = 0;
                    for &n in &counts {
                        metrics.queries(QueryKind::Publish, 3);
                        results.push(
                            store::publish(&pool, &round_key, &all[at..at + n], commit_wait).await,
                        );
                        at += n;
                    }
                }
                // The database is unreachable, or the commit's outcome is
                // unknown: every request of the round gets the same answer
                // at once (retrying alone could store keyless events twice,
                // and would make the k-th request wait k timeouts).
                Err(e) => results.extend(counts.iter().map(|_| Err(e.clone()))),
            }
            (all, counts, replies, results)
        };
        ctx.spawn(
            fut.into_actor(self)
                .map(move |(all, counts, replies, results), act, ctx| {
                    let mut frames = Vec::new();
                    let mut closed = false;
                    // A retried publish answered `duplicate` may be the
                    // retry of a commit whose answer was lost (and whose
                    // event was never announced): it is announced now.
                    let mut duplicate_seq = None;
                    let mut unknown = false;
                    let mut events = all.into_iter();
                    for ((n, reply), result) in counts.into_iter().zip(replies).zip(results) {
                        let evs: Vec<NewEvent> = events.by_ref().take(n).collect();
                        unknown |= matches!(result, Err(StoreError::Ambiguous(_)));
                        if let Ok(published) = &result {
                            for (ev, p) in evs.into_iter().zip(published) {
                                if p.duplicate {
                                    duplicate_seq = duplicate_seq.max(Some(p.seq));
                                    continue;
                                }
                                closed |= ev.status.is_some_and(RoomStatus::is_terminal);
                                let mut event = Event {
                                    seq: p.seq,
                                    ty: ev.ty.as_str().to_owned(),
                                    data: ev.data,
                                    ts: p.ts.clone(),
                                    state: ev.state,
                                    status: ev.status,
                                    updates: None,
                                    appends: None,
                                    deletes: None,
                                };
                                event.set_change(ev.change);
                                frames.push(Frame::encode(&key.room, &event, Via::Push));
                            }
                        }
                        let _ = reply.send(result);
                    }
                    match (&act.bus, frames.last()) {
                        (Some(bus), Some(_)) => bus.publish_frames(&key, &frames, closed),
                        (None, Some(last)) => {
                            let _ = act.hints.send((key.clone(), last.seq));
                        }
                        (_, None) => {}
                    }
                    if !frames.is_empty() {
                        act.boards.changed.do_send(RoomChanged { key: key.clone() });
                        act.metrics.events_published.inc_by(frames.len() as u64);
                        act.router.committed.do_send(Committed {
                            key: key.clone(),
                            frames,
                            closed,
                        });
                    }
                    if let Some(seq) = duplicate_seq {
                        act.announce_hint(&key, seq);
                    }
                    if unknown {
                        // The round may have committed unseen: look.
                        act.router.check_heads.do_send(CheckHeads);
                    }
                    let next = act.next_group(&key);
                    if next.is_empty() {
                        act.publishing.remove(&key);
                    } else {
                        act.publish_round(key, next, ctx);
                    }
                }),
        );
    }

    /// Tells every instance (this one included) that `seq` exists in `key`,
    /// without its frames: they read it back if they miss it.
    fn announce_hint(&self, key: &RoomKey, seq: i64) {
        self.router.hint.do_send(Hint {
            key: key.clone(),
            seq,
        });
        match &self.bus {
            Some(bus) => bus.publish_hint(key, seq),
            None => {
                let _ = self.hints.send((key.clone(), seq));
            }
        }
    }

    /// The publishes waiting for `key`, up to `GROUP_MAX_EVENTS` events (at
    /// least one request), in arrival order.
    fn next_group(&mut self, key: &RoomKey) -> Vec<Waiting> {
        let Some(waiting) = self.publishing.get_mut(key) else {
            return Vec::new();
        };
        let mut total = 0;
        let mut take = 0;
        for w in waiting.iter() {
            if take > 0 && total + w.events.len() > GROUP_MAX_EVENTS {
                break;
            }
            total += w.events.len();
            take += 1;
        }
        waiting.drain(..take).collect()
    }
}

impl Handler<Snapshot> for Db {
    type Result = ResponseFuture<Result<RoomView, StoreError>>;

    /// Snapshots of one room asked for while a read of it runs share that read.
    fn handle(&mut self, msg: Snapshot, ctx: &mut Context<Self>) -> Self::Result {
        if msg.fresh {
            self.metrics.queries(QueryKind::Head, 1);
            let reads = self.reads.clone();
            return Box::pin(async move {
                reads
                    .run(async {
                        let (_permit, client) = reads.get().await?;
                        store::room(&client, &msg.key).await
                    })
                    .await
            });
        }
        let (tx, rx) = oneshot::channel();
        match self.snapshots.entry(msg.key.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push(tx),
            Entry::Vacant(e) => {
                e.insert(vec![tx]);
                self.metrics.queries(QueryKind::Head, 1);
                let reads = self.reads.clone();
                let key = msg.key;
                let read_key = key.clone();
                let read = async move {
                    reads
                        .run(async {
                            let (_permit, client) = reads.get().await?;
                            store::room(&client, &read_key).await
                        })
                        .await
                };
                ctx.spawn(read.into_actor(self).map(move |res, act, _| {
                    for waiter in act.snapshots.remove(&key).unwrap_or_default() {
                        let _ = waiter.send(res.clone());
                    }
                }));
            }
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("snapshot read dropped".into())))
        })
    }
}

impl Handler<Heads> for Db {
    type Result = ResponseFuture<Result<Vec<(RoomKey, i64, RoomStatus)>, StoreError>>;

    fn handle(&mut self, msg: Heads, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        self.metrics.queries(QueryKind::Head, 1);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    store::heads(&client, &msg.keys).await
                })
                .await
        })
    }
}

impl Handler<Catchup> for Db {
    type Result = ();

    fn handle(&mut self, msg: Catchup, ctx: &mut Context<Self>) {
        let qkey = (msg.key, msg.via);
        self.queues
            .entry(qkey.clone())
            .or_default()
            .waiting
            .push(Waiter {
                after: msg.after,
                reply: msg.reply,
            });
        self.run_round(qkey, ctx);
    }
}

impl Handler<PollPage> for Db {
    type Result = ResponseFuture<Result<Arc<Page>, StoreError>>;

    fn handle(&mut self, msg: PollPage, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let id = (msg.key, msg.from, msg.limit);
        match self.pages.entry(id.clone()) {
            Entry::Occupied(mut e) => e.get_mut().push(tx),
            Entry::Vacant(e) => {
                e.insert(vec![tx]);
                self.metrics.queries(QueryKind::Poll, 1);
                let reads = self.reads.clone();
                let (key, from, limit) = id.clone();
                let page_bytes = self.page_bytes;
                let read = async move {
                    reads
                        .run(async {
                            let (_permit, client) = reads.get().await?;
                            store::page(&client, &key, from, limit, page_bytes).await
                        })
                        .await
                        .map(Arc::new)
                };
                ctx.spawn(read.into_actor(self).map(move |res, act, _| {
                    for waiter in act.pages.remove(&id).unwrap_or_default() {
                        let _ = waiter.send(res.clone());
                    }
                }));
            }
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(StoreError::Unavailable("poll read dropped".into())))
        })
    }
}

impl Handler<LatestRead> for Db {
    type Result = ResponseFuture<Result<Arc<crate::store::LatestPage>, StoreError>>;

    fn handle(&mut self, msg: LatestRead, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        let page_bytes = self.page_bytes;
        self.metrics.queries(QueryKind::Catchup, 1);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    store::latest(&client, &msg.key, msg.after, msg.limit, page_bytes).await
                })
                .await
                .map(Arc::new)
        })
    }
}

impl Handler<ListRooms> for Db {
    type Result = ResponseFuture<Result<Vec<(String, RoomRow)>, StoreError>>;

    fn handle(&mut self, msg: ListRooms, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        self.metrics.queries(QueryKind::Other, 1);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    let filter = match &msg.claim {
                        None => RoomFilter::All,
                        Some(claim) => RoomFilter::Claim(claim),
                    };
                    store::list_rooms(
                        &client,
                        &msg.org,
                        msg.status,
                        msg.prefix.as_deref(),
                        filter,
                        msg.limit,
                    )
                    .await
                })
                .await
        })
    }
}

impl Handler<Announce> for Db {
    type Result = ();

    fn handle(&mut self, msg: Announce, ctx: &mut Context<Self>) {
        if let Some(bus) = &self.bus {
            return bus.publish_ephemeral(&msg.key, &msg.frame);
        }
        let payload = self.seal.seal_text(
            EPHEMERAL_CHANNEL,
            &serde_json::json!([&*msg.instance, msg.key.org, msg.key.room, &*msg.frame.text])
                .to_string(),
        );
        if payload.len() > MAX_NOTIFY_PAYLOAD {
            log::warn!(
                "ephemeral event for {} too large for other instances ({} bytes)",
                msg.key,
                payload.len()
            );
            return;
        }
        self.metrics.queries(QueryKind::Publish, 1);
        let pool = self.pool.clone();
        ctx.spawn(
            async move {
                let sent = async {
                    let client = pool.get().await?;
                    let stmt = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
                    client
                        .execute(&stmt, &[&EPHEMERAL_CHANNEL, &payload])
                        .await?;
                    Ok::<_, StoreError>(())
                };
                if let Err(e) = sent.await {
                    log::debug!("ephemeral event not sent to other instances: {e}");
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<Health> for Db {
    type Result = ResponseFuture<Result<OrgHealth, StoreError>>;

    fn handle(&mut self, msg: Health, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        self.metrics.queries(QueryKind::Other, 2);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    store::org_health(&client, &msg.org, msg.rooms.as_deref(), msg.stalled_after_s)
                        .await
                })
                .await
        })
    }
}

impl Handler<Members> for Db {
    type Result = ResponseFuture<Result<Vec<store::PresenceEntry>, StoreError>>;

    fn handle(&mut self, msg: Members, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        self.metrics.queries(QueryKind::Other, 1);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    store::presence_members(&client, &msg.key, store::PRESENCE_DEAD_AFTER).await
                })
                .await
        })
    }
}

impl Handler<RoomsById> for Db {
    type Result = ResponseFuture<Result<Vec<(String, RoomRow)>, StoreError>>;

    fn handle(&mut self, msg: RoomsById, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        self.metrics.queries(QueryKind::Other, 1);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    let rooms: Vec<&str> = msg.rooms.iter().map(String::as_str).collect();
                    store::rooms_by_id(&client, &msg.org, &rooms).await
                })
                .await
        })
    }
}

impl Handler<ChangeMark> for Db {
    type Result = ResponseFuture<Result<i64, StoreError>>;

    fn handle(&mut self, _: ChangeMark, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        self.metrics.queries(QueryKind::Background, 1);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    store::change_mark(&client).await
                })
                .await
        })
    }
}

impl Handler<RoomsChangedSince> for Db {
    type Result = ResponseFuture<Result<(i64, Vec<(String, RoomRow)>), StoreError>>;

    fn handle(&mut self, msg: RoomsChangedSince, _ctx: &mut Context<Self>) -> Self::Result {
        let reads = self.reads.clone();
        self.metrics.queries(QueryKind::Background, 1);
        Box::pin(async move {
            reads
                .run(async {
                    let (_permit, client) = reads.get().await?;
                    store::rooms_changed_since(&client, &msg.org, msg.mark).await
                })
                .await
        })
    }
}

impl From<&Addr<Db>> for crate::mail::DbMail {
    fn from(a: &Addr<Db>) -> Self {
        crate::mail::DbMail {
            catchup: a.clone().recipient(),
            heads: a.clone().recipient(),
            change_mark: a.clone().recipient(),
            rooms_by_id: a.clone().recipient(),
            rooms_changed_since: a.clone().recipient(),
        }
    }
}
