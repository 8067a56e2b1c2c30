//! Presence as a view of the `presence` table, kept right whatever the
//! announcements do.
//!
//! Each instance owns its connections and writes its members of a room to
//! the table, one transaction at a time, each with its change counter
//! (`ver`, rising), which the same transaction stores in
//! `presence_instances`. Announcements (bus or NOTIFY) carry the changes to
//! the other instances so that they show them at once; they may be lost,
//! duplicated, delayed or reordered. What makes the view right is the
//! reconciliation: each instance reads the table (the live instances with
//! their `ver`, and their rows of the rooms it follows, in one statement)
//! on a timer, after a reconnect of its bus or listener, and when an
//! announcement is too large to carry, and takes from it every member whose
//! last known change is not newer than what the table showed.
//!
//! The state here is pure (no IO): [`Remote`] is one room's view of the
//! other instances, [`Written`] one room's members as this instance wrote
//! them. The actor (`super`) does the reading and writing; the property
//! test at the bottom throws loss, duplication, reordering, failed writes
//! and instance deaths at these and checks that every view converges to the
//! table.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::store::PresenceEntry;

/// What one other instance holds of a member of the room.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    info: Arc<Value>,
    /// 0: a leave (kept so that an older announcement arriving late does
    /// not bring the member back; dropped by the next reconciliation).
    connections: i64,
    /// The owner's change counter of this state.
    ver: i64,
    /// The tick at which it was taken (see [`Remote::reconcile`]).
    touched: u64,
}

/// A room's members on the other instances, as this instance knows them.
#[derive(Debug, Default)]
pub struct Remote {
    /// (instance, sub) -> what that instance holds.
    entries: HashMap<(String, String), Entry>,
    /// Each live instance's `ver` as the last read of this room showed it:
    /// an announcement not newer than that is already in what was read.
    known: HashMap<String, i64>,
}

/// A live instance and its change counter, as a read of the table saw them.
pub use crate::store::PresenceAlive as Alive;

/// A row of the table: (instance, row's ver, entry).
pub use crate::store::PresenceRow as Row;

impl Remote {
    /// Takes an announcement of instance `from`: its state changes at `ver`
    /// (`full`: `members` is every member it holds in the room, the others
    /// left it). `tick` is the actor's clock now. Stale and duplicated
    /// announcements change nothing.
    pub fn announce(
        &mut self,
        from: &str,
        ver: i64,
        full: bool,
        members: &[PresenceEntry],
        tick: u64,
    ) {
        if self.known.get(from).is_some_and(|k| ver <= *k) {
            return; // the table was read at a later state
        }
        if full {
            let listed: HashSet<&str> = members.iter().map(|e| e.sub.as_str()).collect();
            self.entries
                .retain(|(i, sub), e| i != from || e.ver >= ver || listed.contains(sub.as_str()));
        }
        for m in members {
            let k = (from.to_owned(), m.sub.clone());
            if self.entries.get(&k).is_some_and(|e| e.ver >= ver) {
                continue;
            }
            self.entries.insert(
                k,
                Entry {
                    info: Arc::new(m.info.clone()),
                    connections: m.connections,
                    ver,
                    touched: tick,
                },
            );
        }
    }

    /// Takes what a read of the table issued at tick `issued` found: the
    /// live instances with their `ver` (`alive`) and their rows of this room.
    ///
    /// An entry whose change is not newer than its instance's `ver` in the
    /// read is replaced by the row (or goes, with no row): the read saw that
    /// change or a later one. A newer entry (an announcement of a change made
    /// after the read) stays. The entries of an instance the read did not
    /// find alive go, unless they were announced after the read was issued
    /// (an instance that started meanwhile).
    pub fn reconcile(&mut self, issued: u64, alive: &Alive, rows: &[Row], tick: u64) {
        let mut table: HashMap<(&str, &str), (i64, &PresenceEntry)> = HashMap::new();
        for (instance, ver, e) in rows {
            if alive.contains_key(instance) {
                table.insert((instance.as_str(), e.sub.as_str()), (*ver, e));
            }
        }
        self.entries.retain(|(i, sub), e| match alive.get(i) {
            Some(v) if e.ver > *v => true,
            Some(_) => table.contains_key(&(i.as_str(), sub.as_str())),
            None => e.touched > issued,
        });
        for ((instance, sub), (ver, row)) in table {
            let v = alive.get(instance).copied().unwrap_or(ver);
            let k = (instance.to_owned(), sub.to_owned());
            match self.entries.get(&k) {
                Some(e) if e.ver > v => {}
                Some(e) if e.connections == row.connections && *e.info == row.info => {}
                _ => {
                    self.entries.insert(
                        k,
                        Entry {
                            info: Arc::new(row.info.clone()),
                            connections: row.connections,
                            ver,
                            touched: tick,
                        },
                    );
                }
            }
        }
        // Reads are answered in the order they were issued (one at a time),
        // so each instance's `ver` here only rises. An instance the read
        // found dead is heard no more (a late announcement of it would bring
        // its members back) until a read finds it alive again.
        for (i, k) in self.known.iter_mut() {
            if !alive.contains_key(i) {
                *k = i64::MAX;
            }
        }
        for i in self.entries.keys() {
            if !alive.contains_key(&i.0) {
                self.known.insert(i.0.clone(), i64::MAX);
            }
        }
        for (i, v) in alive {
            self.known.insert(i.clone(), *v);
        }
    }

    /// The members the other instances hold (one entry per member, whatever
    /// its number of instances).
    pub fn members(&self) -> impl Iterator<Item = (&String, &Arc<Value>)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.connections > 0)
            .map(|((_, sub), e)| (sub, &e.info))
    }
}

/// A member as this instance holds it: info and connections here.
pub type Held = HashMap<String, (Arc<Value>, i64)>;

/// What this instance wrote of its members of one room.
#[derive(Debug, Default)]
pub struct Written {
    /// sub -> (info, connections) as the table holds them.
    rows: Held,
    /// A write of the room failed, or its outcome is not known: the table's
    /// rows are not known, and the next write rewrites the room in full.
    unsure: bool,
}

/// One room's part of a write.
#[derive(Debug, Clone)]
pub struct RoomWrite {
    /// Changed members (`connections` 0: gone); with `full`, every member
    /// held (the table's other rows of this instance in the room go).
    pub entries: Vec<PresenceEntry>,
    pub full: bool,
    /// What the table holds once the write commits.
    held: Held,
}

impl Written {
    /// What to write so that the table holds `held`; `None` when it does.
    pub fn changes(&self, held: &Held) -> Option<RoomWrite> {
        if self.unsure {
            let entries = held
                .iter()
                .map(|(sub, (info, conns))| entry(sub, info, *conns))
                .collect();
            return Some(RoomWrite {
                entries,
                full: true,
                held: held.clone(),
            });
        }
        let mut entries: Vec<PresenceEntry> = held
            .iter()
            .filter(|(sub, h)| self.rows.get(*sub) != Some(h))
            .map(|(sub, (info, conns))| entry(sub, info, *conns))
            .collect();
        entries.extend(
            self.rows
                .iter()
                .filter(|(sub, _)| !held.contains_key(*sub))
                .map(|(sub, (info, _))| entry(sub, info, 0)),
        );
        (!entries.is_empty()).then(|| RoomWrite {
            entries,
            full: false,
            held: held.clone(),
        })
    }

    /// The write committed.
    pub fn committed(&mut self, w: RoomWrite) {
        self.rows = w.held;
        self.unsure = false;
    }

    /// The write failed, or its outcome is unknown.
    pub fn failed(&mut self) {
        self.unsure = true;
    }

    /// Nothing of the room is held or written.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && !self.unsure
    }
}

pub fn entry(sub: &str, info: &Arc<Value>, connections: i64) -> PresenceEntry {
    PresenceEntry {
        sub: sub.to_owned(),
        info: (**info).clone(),
        connections,
    }
}

#[cfg(test)]
mod tests {
    //! The property: whatever happens to the announcements (lost,
    //! duplicated, delayed past later ones and past reads of the table) and
    //! to the writes (failed, or committed with the answer lost) and to the
    //! instances (killed), once the surviving instances have written their
    //! state and read the table once, every view of every room equals the
    //! table, which equals what the live instances hold. And on the way, a
    //! member that stays connected to a live instance is never dropped from
    //! a view that showed it.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const INSTANCES: usize = 3;
    const ROOMS: usize = 2;
    const SUBS: usize = 3;

    #[derive(Debug, Clone)]
    enum Op {
        /// A member connects to (or leaves) an instance's room.
        Toggle {
            inst: usize,
            room: usize,
            sub: usize,
        },
        /// The instance writes its changes; the outcome as given.
        Write { inst: usize, outcome: Outcome },
        /// A message on the wire is delivered (and kept, when duplicated).
        Deliver { pick: usize, dup: bool },
        /// A message on the wire is lost.
        Lose { pick: usize },
        /// An instance issues a read of the table (answered later).
        Issue { inst: usize },
        /// A read's answer arrives; `late`: the statement saw the table as
        /// it is now, not as it was when issued.
        Answer { inst: usize, late: bool },
        /// kill -9.
        Kill { inst: usize },
        /// The table finds an instance dead (its heartbeat aged out).
        Expire,
    }

    #[derive(Debug, Clone, Copy)]
    enum Outcome {
        Commits,
        Fails,
        /// Committed, but the instance never heard so.
        AnswerLost,
    }

    fn op() -> impl Strategy<Value = Op> {
        let i = 0..INSTANCES;
        prop_oneof![
            4 => (i.clone(), 0..ROOMS, 0..SUBS).prop_map(|(inst, room, sub)| Op::Toggle { inst, room, sub }),
            3 => (i.clone(), prop_oneof![6 => Just(Outcome::Commits), 1 => Just(Outcome::Fails), 1 => Just(Outcome::AnswerLost)])
                .prop_map(|(inst, outcome)| Op::Write { inst, outcome }),
            4 => (any::<usize>(), any::<bool>()).prop_map(|(pick, dup)| Op::Deliver { pick, dup }),
            1 => any::<usize>().prop_map(|pick| Op::Lose { pick }),
            1 => i.clone().prop_map(|inst| Op::Issue { inst }),
            1 => (i.clone(), any::<bool>()).prop_map(|(inst, late)| Op::Answer { inst, late }),
            1 => i.clone().prop_map(|inst| Op::Kill { inst }),
            1 => Just(Op::Expire),
        ]
    }

    /// The `presence` and `presence_instances` tables.
    #[derive(Default, Clone)]
    struct Table {
        /// (instance, room, sub) -> (ver, connections)
        rows: HashMap<(usize, usize, String), (i64, i64)>,
        /// instance -> (ver, alive)
        instances: HashMap<usize, (i64, bool)>,
    }

    impl Table {
        fn alive(&self) -> Alive {
            self.instances
                .iter()
                .filter(|(_, (_, alive))| *alive)
                .map(|(i, (v, _))| (name(*i), *v))
                .collect()
        }

        fn rows(&self, room: usize) -> Vec<Row> {
            self.rows
                .iter()
                .filter(|((_, r, _), _)| *r == room)
                .map(|((i, _, sub), (ver, conns))| {
                    (name(*i), *ver, entry(sub, &Arc::new(Value::Null), *conns))
                })
                .collect()
        }

        /// The members of a room over the live instances, but `me`.
        fn members(&self, room: usize, me: usize) -> BTreeSet<String> {
            self.rows
                .iter()
                .filter(|((i, r, _), (_, c))| {
                    *r == room && *i != me && *c > 0 && self.instances.get(i).is_some_and(|x| x.1)
                })
                .map(|((_, _, sub), _)| sub.clone())
                .collect()
        }

        fn write(&mut self, inst: usize, ver: i64, rooms: &[(usize, RoomWrite)]) {
            for (room, w) in rooms {
                if w.full {
                    self.rows.retain(|(i, r, _), _| !(*i == inst && r == room));
                }
                for e in &w.entries {
                    let k = (inst, *room, e.sub.clone());
                    if e.connections > 0 {
                        self.rows.insert(k, (ver, e.connections));
                    } else {
                        self.rows.remove(&k);
                    }
                }
            }
            let alive = self.instances.get(&inst).is_none_or(|x| x.1);
            self.instances.insert(inst, (ver, alive));
        }
    }

    fn name(i: usize) -> String {
        format!("i{i}")
    }

    #[derive(Default)]
    struct Instance {
        dead: bool,
        ver: i64,
        tick: u64,
        /// room -> sub -> connected here
        local: Vec<HashSet<String>>,
        written: Vec<Written>,
        remote: Vec<Remote>,
        /// A read in flight: (issued, what it found).
        reading: Option<(u64, Alive, Vec<Vec<Row>>)>,
    }

    impl Instance {
        fn new() -> Self {
            Instance {
                local: vec![HashSet::new(); ROOMS],
                written: (0..ROOMS).map(|_| Written::default()).collect(),
                remote: (0..ROOMS).map(|_| Remote::default()).collect(),
                ..Instance::default()
            }
        }

        fn held(&self, room: usize) -> Held {
            self.local[room]
                .iter()
                .map(|s| (s.clone(), (Arc::new(Value::Null), 1)))
                .collect()
        }

        fn view(&self, room: usize) -> BTreeSet<String> {
            self.remote[room]
                .members()
                .map(|(s, _)| s.clone())
                .collect()
        }
    }

    /// An announcement on the wire: (to, from, room, ver, full, entries).
    type Msg = (usize, usize, usize, i64, bool, Vec<PresenceEntry>);

    struct World {
        table: Table,
        inst: Vec<Instance>,
        wire: Vec<Msg>,
    }

    impl World {
        fn write(&mut self, i: usize, outcome: Outcome) {
            let me = &mut self.inst[i];
            if me.dead {
                return;
            }
            let rooms: Vec<(usize, RoomWrite)> = (0..ROOMS)
                .filter_map(|r| me.written[r].changes(&me.held(r)).map(|w| (r, w)))
                .collect();
            if rooms.is_empty() {
                return;
            }
            me.ver += 1;
            let ver = me.ver;
            match outcome {
                Outcome::Fails => {
                    for (r, _) in &rooms {
                        me.written[*r].failed();
                    }
                }
                Outcome::AnswerLost => {
                    self.table.write(i, ver, &rooms);
                    for (r, _) in &rooms {
                        me.written[*r].failed();
                    }
                }
                Outcome::Commits => {
                    self.table.write(i, ver, &rooms);
                    for (r, w) in rooms {
                        for to in 0..INSTANCES {
                            if to != i {
                                self.wire.push((to, i, r, ver, w.full, w.entries.clone()));
                            }
                        }
                        me.written[r].committed(w);
                    }
                }
            }
        }

        fn issue(&mut self, i: usize) {
            let table = self.table.clone();
            let me = &mut self.inst[i];
            if me.dead || me.reading.is_some() {
                return;
            }
            let mut alive = table.alive();
            alive.remove(&name(i));
            let rows = (0..ROOMS).map(|r| table.rows(r)).collect();
            me.reading = Some((me.tick, alive, rows));
            me.tick += 1;
        }

        fn answer(&mut self, i: usize, late: bool) {
            let table = self.table.clone();
            let me = &mut self.inst[i];
            let Some((issued, mut alive, mut rows)) = me.reading.take() else {
                return;
            };
            if late {
                alive = table.alive();
                alive.remove(&name(i));
                rows = (0..ROOMS).map(|r| table.rows(r)).collect();
            }
            for (r, rows) in rows.iter().enumerate() {
                me.remote[r].reconcile(issued, &alive, rows, me.tick);
            }
        }

        fn deliver(&mut self, m: Msg) {
            let (to, from, room, ver, full, entries) = m;
            let me = &mut self.inst[to];
            if !me.dead {
                me.remote[room].announce(&name(from), ver, full, &entries, me.tick);
            }
        }

        /// Every live instance's view, per room.
        fn views(&self) -> Vec<(usize, usize, BTreeSet<String>)> {
            let mut v = Vec::new();
            for (i, x) in self.inst.iter().enumerate() {
                if !x.dead {
                    for r in 0..ROOMS {
                        v.push((i, r, x.view(r)));
                    }
                }
            }
            v
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn every_view_converges_to_the_table(ops in proptest::collection::vec(op(), 0..120)) {
            let mut w = World {
                table: Table::default(),
                inst: (0..INSTANCES).map(|_| Instance::new()).collect(),
                wire: Vec::new(),
            };
            // Members connected since the start and never toggled, per
            // (instance, room): once shown, never dropped while their
            // instance lives.
            let mut views = w.views();
            for op in ops {
                match op {
                    Op::Toggle { inst, room, sub } => {
                        let x = &mut w.inst[inst];
                        if !x.dead {
                            // Member 0 of each instance only ever connects
                            // (the invariant below watches it).
                            let s = format!("s{sub}@{inst}");
                            if sub == 0 || !x.local[room].remove(&s) {
                                x.local[room].insert(s);
                            }
                        }
                    }
                    Op::Write { inst, outcome } => w.write(inst, outcome),
                    Op::Deliver { pick, dup } => {
                        if !w.wire.is_empty() {
                            let k = pick % w.wire.len();
                            let m = if dup { w.wire[k].clone() } else { w.wire.remove(k) };
                            w.deliver(m);
                        }
                    }
                    Op::Lose { pick } => {
                        if !w.wire.is_empty() {
                            let k = pick % w.wire.len();
                            w.wire.remove(k);
                        }
                    }
                    Op::Issue { inst } => w.issue(inst),
                    Op::Answer { inst, late } => w.answer(inst, late),
                    Op::Kill { inst } => {
                        let alive = w.inst.iter().filter(|x| !x.dead).count();
                        if alive > 1 {
                            w.inst[inst].dead = true;
                        }
                    }
                    Op::Expire => {
                        for (i, x) in w.inst.iter().enumerate() {
                            if x.dead {
                                if let Some(e) = w.table.instances.get_mut(&i) {
                                    e.1 = false;
                                }
                            }
                        }
                    }
                }
                // A member that never left its live instance is never
                // dropped from a view that showed it.
                let now = w.views();
                for ((i, r, before), (j, _, after)) in views.iter().zip(&now) {
                    if i != j {
                        continue; // an instance died: the views shifted
                    }
                    for s in before.difference(after) {
                        let owner = owner_of(s);
                        prop_assert!(
                            !s.starts_with("s0@") || w.inst[owner].dead,
                            "instance {} dropped {} from room {} while it was connected",
                            i, s, r
                        );
                    }
                }
                views = now;
            }
            // Quiescence: the dead are found dead, the living write what
            // they hold and each reads the table once; messages still on
            // the wire arrive (late) or not.
            for (i, x) in w.inst.iter().enumerate() {
                if x.dead {
                    if let Some(e) = w.table.instances.get_mut(&i) {
                        e.1 = false;
                    }
                }
            }
            for i in 0..INSTANCES {
                w.inst[i].reading = None;
                w.write(i, Outcome::Commits);
            }
            let late: Vec<Msg> = w.wire.drain(..).collect();
            for i in 0..INSTANCES {
                w.issue(i);
                w.answer(i, false);
            }
            let truth = |w: &World, i: usize, r: usize| -> BTreeSet<String> {
                w.inst
                    .iter()
                    .enumerate()
                    .filter(|(j, y)| *j != i && !y.dead)
                    .flat_map(|(_, y)| y.local[r].iter().cloned())
                    .collect()
            };
            for (i, x) in w.inst.iter().enumerate() {
                for r in 0..ROOMS {
                    if !x.dead {
                        prop_assert_eq!(&w.table.members(r, i), &truth(&w, i, r));
                        prop_assert_eq!(x.view(r), truth(&w, i, r), "instance {} room {}", i, r);
                    }
                }
            }
            // Announcements still on the wire arrive now, after the read: a
            // live instance's are older than what was read and change
            // nothing; a dead one's may show its members again until the
            // next read.
            for m in late {
                w.deliver(m);
            }
            for (i, x) in w.inst.iter().enumerate() {
                for r in 0..ROOMS {
                    if !x.dead {
                        let view = x.view(r);
                        let t = truth(&w, i, r);
                        prop_assert!(view.is_superset(&t));
                        for s in view.difference(&t) {
                            prop_assert!(w.inst[owner_of(s)].dead, "{} shown in room {} by {}", s, r, i);
                        }
                    }
                }
            }
            for i in 0..INSTANCES {
                w.issue(i);
                w.answer(i, false);
            }
            for (i, x) in w.inst.iter().enumerate() {
                for r in 0..ROOMS {
                    if !x.dead {
                        prop_assert_eq!(x.view(r), truth(&w, i, r), "instance {} room {}", i, r);
                    }
                }
            }
        }
    }

    /// `s<k>@<instance>`: the instance a test member connects to.
    fn owner_of(s: &str) -> usize {
        s.rsplit('@')
            .next()
            .and_then(|o| o.parse().ok())
            .unwrap_or(0)
    }
}
