//! The floor under roomcast, for the benchmark tool: the same frameworks
//! (actix-web, actix-web-actors, one actor per WebSocket session, a
//! broadcaster actor) with none of roomcast's work. No database, no auth,
//! no catch-up, no cursor: a publish is given the next in-memory seq and
//! handed to the room's sessions at once, and answered.
//!
//! `roomcast-bench --floor target/release/examples/actix_floor` runs the
//! latency and idle scenarios against it next to roomcast, so that what the
//! frameworks cost and what roomcast adds are told apart. It speaks just
//! enough of the protocol for those scenarios: `GET /v1/rooms/{room}/ws`
//! (answers `subscribed`, then pings every `ROOMCAST_HEARTBEAT_MS`),
//! `POST /v1/rooms/{room}/events` (one event), `/metrics` (connections).
//! `ROOMCAST_FLOOR_ROUTE=worker` routes frames once per worker thread (an
//! experiment of issue 16, docs/bench/notes.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;

static CONNECTIONS: AtomicI64 = AtomicI64::new(0);

#[derive(Message, Clone)]
#[rtype(result = "()")]
struct Frame {
    room: Arc<str>,
    text: Arc<str>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Join {
    room: String,
    id: u64,
    to: Recipient<Frame>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct Leave {
    room: String,
    id: u64,
}

#[derive(Message)]
#[rtype(result = "i64")]
struct Publish {
    room: String,
    body: serde_json::Value,
}

#[derive(Default)]
struct Broadcaster {
    rooms: HashMap<String, (i64, HashMap<u64, Recipient<Frame>>)>,
}

impl Actor for Broadcaster {
    type Context = Context<Self>;
}

impl Handler<Join> for Broadcaster {
    type Result = ();
    fn handle(&mut self, m: Join, _: &mut Context<Self>) {
        self.rooms.entry(m.room).or_default().1.insert(m.id, m.to);
    }
}

impl Handler<Leave> for Broadcaster {
    type Result = ();
    fn handle(&mut self, m: Leave, _: &mut Context<Self>) {
        if let Some((_, s)) = self.rooms.get_mut(&m.room) {
            s.remove(&m.id);
        }
    }
}

impl Handler<Publish> for Broadcaster {
    type Result = i64;
    fn handle(&mut self, m: Publish, _: &mut Context<Self>) -> i64 {
        let (seq, sessions) = self.rooms.entry(m.room.clone()).or_default();
        *seq += 1;
        let frame = serde_json::json!({
            "op": "event", "room": m.room, "seq": *seq, "type": m.body["type"],
            "data": m.body["data"], "ts": "2026-01-01T00:00:00.000Z", "via": "push",
        });
        let frame = Frame {
            room: Arc::from(m.room.as_str()),
            text: Arc::from(frame.to_string()),
        };
        for s in sessions.values() {
            let _ = s.try_send(frame.clone());
        }
        *seq
    }
}

struct Session {
    id: u64,
    room: String,
    heartbeat: Duration,
    hub: Addr<Broadcaster>,
    /// This worker thread's router, when frames are routed per worker.
    router: Option<Addr<WorkerRouter>>,
}

/// `ROOMCAST_FLOOR_ROUTE=worker`: the broadcaster sends each frame once per
/// worker thread that has subscribers of the room, and that thread's
/// router hands it to its own sessions (same-thread mailbox sends, no
/// cross-thread wake-up per session). An experiment for issue 16.
struct WorkerRouter {
    id: u64,
    hub: Addr<Broadcaster>,
    rooms: HashMap<String, HashMap<u64, Recipient<Frame>>>,
}

impl Actor for WorkerRouter {
    type Context = Context<Self>;
}

/// Answered once the hub routes the room to this router: the router takes
/// no other message meanwhile (`AtomicResponse`), so a second session of
/// the room is not answered before the first one's registration either.
impl Handler<Join> for WorkerRouter {
    type Result = AtomicResponse<Self, ()>;
    fn handle(&mut self, m: Join, ctx: &mut Context<Self>) -> Self::Result {
        let sessions = self.rooms.entry(m.room.clone()).or_default();
        let first = sessions.is_empty();
        sessions.insert(m.id, m.to);
        if !first {
            return AtomicResponse::new(Box::pin(fut::ready(())));
        }
        let joined = self.hub.send(Join {
            room: m.room,
            id: self.id,
            to: ctx.address().recipient(),
        });
        AtomicResponse::new(Box::pin(joined.into_actor(self).map(|_, _, _| ())))
    }
}

impl Handler<Leave> for WorkerRouter {
    type Result = ();
    fn handle(&mut self, m: Leave, _: &mut Context<Self>) {
        if let Some(s) = self.rooms.get_mut(&m.room) {
            s.remove(&m.id);
            if s.is_empty() {
                self.rooms.remove(&m.room);
                self.hub.do_send(Leave {
                    room: m.room,
                    id: self.id,
                });
            }
        }
    }
}

impl Handler<Frame> for WorkerRouter {
    type Result = ();
    fn handle(&mut self, m: Frame, _: &mut Context<Self>) {
        if let Some(sessions) = self.rooms.get(&*m.room) {
            for s in sessions.values() {
                let _ = s.try_send(m.clone());
            }
        }
    }
}

thread_local! {
    static ROUTER: std::cell::RefCell<Option<Addr<WorkerRouter>>> = const { std::cell::RefCell::new(None) };
}

/// The calling worker thread's router, started on first use.
fn local_router(shared: &Shared) -> Addr<WorkerRouter> {
    ROUTER.with(|r| {
        r.borrow_mut()
            .get_or_insert_with(|| {
                WorkerRouter {
                    // Router ids stay clear of session ids.
                    id: u64::MAX - shared.next.fetch_add(1, Ordering::Relaxed) as u64,
                    hub: shared.hub.clone(),
                    rooms: HashMap::new(),
                }
                .start()
            })
            .clone()
    })
}

impl Actor for Session {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        let join = Join {
            room: self.room.clone(),
            id: self.id,
            to: ctx.address().recipient(),
        };
        // `subscribed` once frames of the room are routed to this session,
        // as roomcast answers it: a publish the client makes after it
        // reaches the session.
        let to: Recipient<Join> = match &self.router {
            Some(router) => router.clone().recipient(),
            None => self.hub.clone().recipient(),
        };
        let joined = to.send(join);
        ctx.wait(joined.into_actor(self).map(|_, act, ctx| {
            ctx.text(format!(
                r#"{{"op":"subscribed","room":"{}","head":0}}"#,
                act.room
            ))
        }));
        if !self.heartbeat.is_zero() {
            ctx.run_interval(self.heartbeat, |_, ctx| ctx.ping(b""));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        let leave = Leave {
            room: std::mem::take(&mut self.room),
            id: self.id,
        };
        match &self.router {
            Some(router) => router.do_send(leave),
            None => self.hub.do_send(leave),
        }
    }
}

impl Handler<Frame> for Session {
    type Result = ();
    fn handle(&mut self, m: Frame, ctx: &mut Self::Context) {
        ctx.text(&*m.text);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for Session {
    fn handle(&mut self, m: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match m {
            Ok(ws::Message::Ping(p)) => ctx.pong(&p),
            Ok(ws::Message::Close(_)) | Err(_) => ctx.stop(),
            Ok(_) => {}
        }
    }
}

struct Shared {
    hub: Addr<Broadcaster>,
    heartbeat: Duration,
    next: AtomicI64,
    per_worker: bool,
}

async fn subscribe(
    req: HttpRequest,
    room: web::Path<String>,
    stream: web::Payload,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let session = Session {
        id: shared.next.fetch_add(1, Ordering::Relaxed) as u64,
        room: room.into_inner(),
        heartbeat: shared.heartbeat,
        hub: shared.hub.clone(),
        router: shared.per_worker.then(|| local_router(&shared)),
    };
    ws::start(session, &req, stream)
}

async fn publish(
    room: web::Path<String>,
    body: web::Json<serde_json::Value>,
    shared: web::Data<Shared>,
) -> actix_web::Result<HttpResponse> {
    let seq = shared
        .hub
        .send(Publish {
            room: room.into_inner(),
            body: body.into_inner(),
        })
        .await
        .map_err(actix_web::error::ErrorServiceUnavailable)?;
    Ok(HttpResponse::Created().json(serde_json::json!({ "seq": seq })))
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok().body(format!(
        "roomcast_connections{{transport=\"ws\"}} {}\n",
        CONNECTIONS.load(Ordering::Relaxed)
    ))
}

fn main() -> std::io::Result<()> {
    let bind = std::env::var("ROOMCAST_BIND").unwrap_or_else(|_| "127.0.0.1:0".into());
    let heartbeat = std::env::var("ROOMCAST_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25_000);
    let workers = std::env::var("ROOMCAST_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    actix::System::new().block_on(async move {
        let hub = Broadcaster::default().start();
        let shared = web::Data::new(Shared {
            hub,
            heartbeat: Duration::from_millis(heartbeat),
            next: AtomicI64::new(0),
            per_worker: std::env::var("ROOMCAST_FLOOR_ROUTE").as_deref() == Ok("worker"),
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/v1/rooms/{room}/ws", web::get().to(subscribe))
                .route("/v1/rooms/{room}/events", web::post().to(publish))
                .route("/metrics", web::get().to(metrics))
        })
        .workers(workers)
        .backlog(4096)
        .max_connections(1_000_000)
        .bind(bind)?;
        let port = server.addrs()[0].port();
        println!("actix_floor listening on port {port}");
        server.run().await
    })
}
