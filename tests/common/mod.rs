//! Test harness: a fresh database per test (named by a uuid) on a real
//! PostgreSQL, the real server on 127.0.0.1:0, real HTTP and WebSocket
//! clients speaking the public protocol.
//!
//! PostgreSQL: `ROOMCAST_TEST_ADMIN_URL` if set; else the server on
//! 127.0.0.1:5432 if one answers; else a private cluster started here with
//! initdb/pg_ctl under the target directory (so `cargo test` works wherever
//! PostgreSQL is installed, running or not). `ROOMCAST_TEST_PRIVATE_PG=1`
//! forces the private cluster.
#![allow(dead_code)]

pub mod ha;

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use awc::ws;
use futures_util::{SinkExt, StreamExt};
use roomcast::auth::{mint, now_secs, Claims};
use roomcast::config::Config;
use roomcast::pgcluster::PrivateCluster;
use roomcast::startup::Application;
use serde_json::{json, Value};
use tokio_postgres::NoTls;

pub const SECRET: &str = "test-secret";
/// `ROOMCAST_CLUSTER_SECRET` of every test instance (required with a bus).
pub const CLUSTER_SECRET: &str = "test-cluster-secret";

/// The test process holds many sockets at once (2,000 WebSocket clients in
/// the reconnect storm, 500 long-polls with their server side in-process):
/// raise the soft open-file limit to the hard one, as the server does at
/// start. A normal user's soft limit is often 1,024; root's is often higher,
/// so without this the suite passed as root and failed as a user.
pub fn raise_open_files() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain libc calls on a local struct.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
                lim.rlim_cur = lim.rlim_max;
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    eprintln!("could not raise the open-file limit");
                }
            }
        }
    });
}

/// Where tests keep private PostgreSQL clusters: `ROOMCAST_TEST_TMPDIR` if
/// set (CI points it into a mode-700 directory, as a checkout under `/root`
/// is), else cargo's temporary directory under `target/`.
pub fn tmp_dir() -> std::path::PathBuf {
    std::env::var_os("ROOMCAST_TEST_TMPDIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

/// The admin connection string of the PostgreSQL the tests use.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("ROOMCAST_TEST_ADMIN_URL") {
            return url;
        }
        let local = "127.0.0.1:5432".parse().expect("address");
        let force_private = std::env::var_os("ROOMCAST_TEST_PRIVATE_PG").is_some();
        if !force_private && TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
            return "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into();
        }
        let dir = tmp_dir().join("test-pg");
        let cluster = PrivateCluster::start(&dir).expect("start a private PostgreSQL cluster");
        let url = cluster.url("postgres");
        std::mem::forget(cluster); // left running for the other test binaries
        url
    })
}

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(admin_url(), NoTls)
        .await
        .expect("connect to PostgreSQL as admin");
    actix_web::rt::spawn(conn);
    client
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> Self {
        raise_open_files();
        let name = format!("rc_test_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let url = admin_url().replace("dbname=postgres", &format!("dbname={name}"));
        TestDb { name, url }
    }

    /// A plain SQL connection to the test database.
    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect to the test database");
        actix_web::rt::spawn(conn);
        client
    }
}

impl TestDb {
    /// How many events are stored, in every room.
    pub async fn event_count(&self) -> i64 {
        self.client()
            .await
            .query_one("SELECT count(*) FROM events", &[])
            .await
            .expect("count events")
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok((client, conn)) = tokio_postgres::connect(admin_url(), NoTls).await {
                    tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        })
        .join();
    }
}

/// A server running in this process.
pub struct TestApp {
    pub port: u16,
    pub metrics: std::sync::Arc<roomcast::metrics::Metrics>,
}

pub fn config(db: &TestDb) -> Config {
    let mut c = Config::new(db.url.clone(), SECRET);
    c.cluster_secret = Some(CLUSTER_SECRET.into());
    c.workers = 2;
    c.db_pool = 8;
    c
}

/// Starts the server in-process on 127.0.0.1:0.
pub async fn spawn_app(config: Config) -> TestApp {
    let app = Application::build(config)
        .await
        .expect("build the application");
    let port = app.port();
    let metrics = app.state.metrics.clone();
    actix_web::rt::spawn(app.run(std::future::pending()));
    TestApp { port, metrics }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Waits until `/readyz` answers 200 (the notification listener is
    /// LISTENing: a commit from now on is announced), or panics after 20 s.
    pub async fn ready(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let res = awc::Client::default().get(self.url("/readyz")).send().await;
            if matches!(&res, Ok(r) if r.status() == 200) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server never got ready"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `roomcast_db_queries_total{kind}` as this server counts it.
    pub async fn queries(&self, kind: &str) -> u64 {
        metric(
            self.port,
            &format!("roomcast_db_queries_total{{kind=\"{kind}\"}}"),
        )
        .await
    }
}

/// Reads one sample from a server's /metrics.
pub async fn metric(port: u16, name: &str) -> u64 {
    let text = http_get_text(port, "/metrics").await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0))
        })
        .unwrap_or(0.0) as u64
}

pub async fn http_get_text(port: u16, path: &str) -> String {
    let mut res = awc::Client::default()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
        .expect("GET");
    let body = res.body().limit(16 << 20).await.expect("body");
    String::from_utf8_lossy(&body).into_owned()
}

/// A token of `org` for `sub`; `publish` adds `"pub": true`.
pub fn token(org: &str, sub: &str, publish: bool) -> String {
    token_with(org, sub, publish, None, 3600)
}

pub fn token_with(
    org: &str,
    sub: &str,
    publish: bool,
    rooms: Option<Vec<&str>>,
    ttl: i64,
) -> String {
    mint(
        SECRET,
        &Claims {
            sub: sub.into(),
            org: org.into(),
            exp: (now_secs() as i64 + ttl).max(0) as u64,
            rooms: rooms.map(|r| r.into_iter().map(String::from).collect()),
            publish: publish.then_some(true),
            info: None,
        },
    )
}

/// POSTs `body` as JSON; answers (status, body, headers).
pub async fn post(
    port: u16,
    path: &str,
    token: &str,
    body: &Value,
) -> (u16, Value, HashMap<String, String>) {
    post_raw(port, path, token, serde_json::to_vec(body).expect("json")).await
}

pub async fn post_raw(
    port: u16,
    path: &str,
    token: &str,
    body: Vec<u8>,
) -> (u16, Value, HashMap<String, String>) {
    let mut req = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .insert_header(("content-type", "application/json"));
    if !token.is_empty() {
        req = req.insert_header(("authorization", format!("Bearer {token}")));
    }
    let mut res = req.send_body(body).await.expect("POST");
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let bytes = res.body().limit(16 << 20).await.expect("body");
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (res.status().as_u16(), value, headers)
}

/// Publishes one event and returns its seq (panics unless 201).
pub async fn publish(port: u16, token: &str, room: &str, ty: &str, data: Value) -> i64 {
    let (status, body, _) = post(
        port,
        &format!("/v1/rooms/{room}/events"),
        token,
        &json!({"type": ty, "data": data}),
    )
    .await;
    assert_eq!(status, 201, "publish answered {status}: {body}");
    body["seq"].as_i64().expect("seq")
}

/// A WebSocket client speaking the roomcast protocol.
pub struct WsClient {
    framed: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
    pub closed: Option<Option<ws::CloseReason>>,
    /// The connection ended (closed, broken or reset).
    pub ended: bool,
}

impl WsClient {
    /// Connects to `path` (with its query string); panics if refused.
    pub async fn connect(port: u16, path: &str) -> WsClient {
        Self::try_connect(port, path)
            .await
            .expect("WebSocket upgrade")
    }

    pub async fn try_connect(port: u16, path: &str) -> Result<WsClient, awc::error::WsClientError> {
        Self::try_connect_with(port, path, &[]).await
    }

    /// Connects with a receive buffer of `rcvbuf` bytes. Setting the size
    /// turns off the kernel's receive-buffer autotuning, so a client that
    /// stops reading holds at most that much. Otherwise it can hold up to
    /// `net.ipv4.tcp_rmem`'s maximum (32 MiB here), and whether the
    /// server's own backlog ever fills would depend on the machine.
    /// The upgrade is written by hand because awc cannot be given a socket.
    pub async fn connect_with_small_window(port: u16, path: &str, rcvbuf: u32) -> WsClient {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        let mut stream = socket
            .connect(([127, 0, 0, 1], port).into())
            .await
            .expect("connect");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("upgrade");
        // The answer's head, a byte at a time: what follows it is frames.
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(stream.read_u8().await.expect("upgrade answer"));
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
        WsClient {
            framed: actix_codec::Framed::new(
                Box::new(stream) as awc::BoxedSocket,
                ws::Codec::new().client_mode().max_size(1 << 20),
            ),
            closed: None,
            ended: false,
        }
    }

    /// Connects with extra request headers (an `Origin`, say).
    pub async fn try_connect_with(
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsClient, awc::error::WsClientError> {
        let mut req = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
            .ws(format!("ws://127.0.0.1:{port}{path}"))
            .max_frame_size(1 << 20);
        for (k, v) in headers {
            req = req.set_header(*k, *v);
        }
        let (_res, framed) = req.connect().await?;
        Ok(WsClient {
            framed,
            closed: None,
            ended: false,
        })
    }

    pub async fn send(&mut self, msg: Value) {
        self.framed
            .send(ws::Message::Text(msg.to_string().into()))
            .await
            .expect("send");
    }

    /// Sends several messages in one write (the server reads them together).
    pub async fn send_all(&mut self, msgs: &[Value]) {
        for m in msgs {
            self.framed
                .feed(ws::Message::Text(m.to_string().into()))
                .await
                .expect("feed");
        }
        self.framed.flush().await.expect("flush");
    }

    pub async fn send_raw(&mut self, msg: ws::Message) {
        let _ = self.framed.send(msg).await;
    }

    /// The next JSON message, or None on close or after `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        if self.ended {
            return None;
        }
        loop {
            let frame = match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return None,
                Ok(None) => {
                    self.ended = true;
                    return None;
                }
                Ok(Some(frame)) => frame,
            };
            match frame {
                Ok(ws::Frame::Text(b)) => return serde_json::from_slice(&b).ok(),
                Ok(ws::Frame::Ping(p)) => {
                    let _ = self.framed.send(ws::Message::Pong(p)).await;
                }
                Ok(ws::Frame::Close(reason)) => {
                    self.closed = Some(reason);
                    self.ended = true;
                    return None;
                }
                Ok(_) => {}
                Err(_) => {
                    self.ended = true;
                    return None;
                }
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.recv_within(Duration::from_secs(20))
            .await
            .expect("a message within 20 s")
    }

    /// Receives until a message with `op` arrives (panics after 20 s).
    pub async fn expect_op(&mut self, op: &str) -> Value {
        loop {
            let m = self.recv().await;
            if m["op"] == op {
                return m;
            }
            assert_ne!(m["op"], "error", "unexpected error: {m}");
        }
    }

    /// Collects event frames until `room`'s seq reaches `until`; panics after
    /// `wait` with what it has.
    pub async fn events_until(&mut self, room: &str, until: i64, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            if got
                .last()
                .is_some_and(|e: &Value| e["seq"].as_i64() >= Some(until))
            {
                return got;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(m) if m["op"] == "event" && m["room"] == room => got.push(m),
                Some(_) => {}
                None => panic!(
                    "room {room}: wanted seq {until}, got {} events (last {:?}), closed={:?}",
                    got.len(),
                    got.last().map(|e| e["seq"].clone()),
                    self.closed
                ),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.framed.send(ws::Message::Close(None)).await;
    }
}

/// Asserts that `events` are exactly seqs `from..=to`, in order, once each.
pub fn assert_exactly(events: &[Value], from: i64, to: i64) {
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    let want: Vec<i64> = (from..=to).collect();
    assert_eq!(seqs, want, "expected exactly {from}..={to} in order");
}

/// A free loopback port (for servers that must come back on the same one).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The real `roomcast serve` binary in a child process.
pub struct ServerProcess {
    pub child: Child,
    pub port: u16,
}

impl ServerProcess {
    pub fn start(db_url: &str, port: u16, env: &[(&str, &str)]) -> ServerProcess {
        Self::start_with_stderr(db_url, port, env, Stdio::inherit())
    }

    /// As `start`, with the server's stderr (its log) sent to `stderr`.
    pub fn start_with_stderr(
        db_url: &str,
        port: u16,
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> ServerProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.arg("serve")
            .env("DATABASE_URL", db_url)
            .env("ROOMCAST_BIND", format!("127.0.0.1:{port}"))
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("ROOMCAST_WORKERS", "1")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn roomcast serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the port line");
        let port = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        ServerProcess { child, port }
    }

    /// SIGKILL: no shutdown of any kind.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.child.wait().expect("wait")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `path` with a bearer `token` (if any) and extra headers; answers
/// (status, JSON body or Null, headers).
pub async fn get(
    port: u16,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> (u16, Value, HashMap<String, String>) {
    let mut req = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
        .get(format!("http://127.0.0.1:{port}{path}"));
    if !token.is_empty() {
        req = req.insert_header(("authorization", format!("Bearer {token}")));
    }
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut res = req.send().await.expect("GET");
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let bytes = res.body().limit(64 << 20).await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    (res.status().as_u16(), value, headers)
}

/// Polls `room` from `since` until the answer is empty; answers every event
/// seen, in the order received.
pub async fn poll_all(port: u16, token: &str, room: &str, since: i64, limit: i64) -> Vec<Value> {
    let mut cursor = since;
    let mut out = Vec::new();
    loop {
        let (status, body, _) = get(
            port,
            &format!("/v1/rooms/{room}/events?since={cursor}&limit={limit}"),
            token,
            &[],
        )
        .await;
        assert_eq!(status, 200, "poll: {body}");
        let events = body["events"].as_array().expect("events").clone();
        if events.is_empty() {
            return out;
        }
        cursor = events.last().unwrap()["seq"].as_i64().unwrap();
        out.extend(events);
    }
}

/// One Server-Sent Events message.
#[derive(Debug, Clone)]
pub struct SseMsg {
    pub id: Option<i64>,
    pub event: String,
    pub data: Value,
}

/// A Server-Sent Events client.
pub struct SseClient {
    res: awc::ClientResponse,
    buf: Vec<u8>,
    pub status: u16,
    pub content_type: String,
    /// Comment lines seen (heartbeats).
    pub comments: usize,
    /// The stream ended.
    pub ended: bool,
}

impl SseClient {
    /// Opens `path` (with its query string) with extra headers.
    pub async fn connect(port: u16, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut req = awc::Client::builder()
            .timeout(Duration::from_secs(60))
            .finish()
            .get(format!("http://127.0.0.1:{port}{path}"))
            .insert_header(("accept", "text/event-stream"));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let res = req.send().await.expect("SSE GET");
        let status = res.status().as_u16();
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        SseClient {
            res,
            buf: Vec::new(),
            status,
            content_type,
            comments: 0,
            ended: false,
        }
    }

    /// The next message (comments and `retry:` lines are counted and
    /// skipped), or None when the stream ends or after `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<SseMsg> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&block).into_owned();
                let (mut id, mut event, mut data) = (None, String::from("message"), None);
                for line in text.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).expect("data is JSON"));
                    }
                }
                if let Some(data) = data {
                    return Some(SseMsg { id, event, data });
                }
            }
            match tokio::time::timeout_at(deadline, self.res.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Some(Err(_))) | Ok(None) => {
                    self.ended = true;
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Collects events of the stream until seq `until`; panics after `wait`.
    pub async fn events_until(&mut self, until: i64, wait: Duration) -> Vec<SseMsg> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got: Vec<SseMsg> = Vec::new();
        while got.last().and_then(|m| m.id) < Some(until) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Some(m) if m.data["op"] == "event" && m.id.is_some() => got.push(m),
                Some(_) => {}
                None => panic!(
                    "SSE: wanted seq {until}, got {} events (last {:?}), ended={}",
                    got.len(),
                    got.last().map(|m| m.id),
                    self.ended
                ),
            }
        }
        got
    }

    /// The `data` of each message, as the WebSocket frames they are.
    pub fn frames(msgs: &[SseMsg]) -> Vec<Value> {
        msgs.iter().map(|m| m.data.clone()).collect()
    }
}

/// The HTTP status a refused WebSocket upgrade answered (panics if it was
/// accepted or failed otherwise).
pub fn refused_status(result: Result<WsClient, awc::error::WsClientError>) -> u16 {
    match result {
        Err(awc::error::WsClientError::InvalidResponseStatus(s)) => s.as_u16(),
        Err(e) => panic!("upgrade failed otherwise: {e}"),
        Ok(_) => panic!("upgrade accepted"),
    }
}

/// The port of the PostgreSQL the tests use.
pub fn admin_port() -> u16 {
    admin_url()
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432)
}

/// A TCP proxy (in front of PostgreSQL or a broker) that can cut every
/// connection it carries at once, and, once armed, break a connection right
/// after PostgreSQL reports `COMMIT` (before the client hears it: the commit
/// happened, the client cannot know), and, with [`Proxy::arm_outage`], start
/// an outage at that very moment.
pub struct Proxy {
    pub port: u16,
    /// While on, nothing is forwarded either way and the connections stay
    /// open (a peer that stopped answering without closing: a black hole).
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    outage: std::sync::Arc<std::sync::atomic::AtomicBool>,
    armed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    cuts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    live: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let outage = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (a, c, l, r) = (armed.clone(), cuts.clone(), live.clone(), refusing.clone());
        let o = outage.clone();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let fz = frozen.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if r.load(Ordering::Acquire) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut live = l.lock().unwrap();
                    live.retain(|s| s.peer_addr().is_ok());
                    live.push(client.try_clone().unwrap());
                    live.push(server.try_clone().unwrap());
                }
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let (fz1, fz2) = (fz.clone(), fz.clone());
                let hold = |f: &std::sync::atomic::AtomicBool| {
                    while f.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = {
                        hold(&fz1);
                        c_in.read(&mut buf)
                    } {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                let (mut s_in, mut c_out) = (server, client);
                let (armed, cuts) = (a.clone(), c.clone());
                let (outage, refusing, live) = (o.clone(), r.clone(), l.clone());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65536];
                    while let Ok(n) = {
                        hold(&fz2);
                        s_in.read(&mut buf)
                    } {
                        if n == 0 {
                            break;
                        }
                        let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                        if commit
                            && armed
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |k| {
                                    k.checked_sub(1)
                                })
                                .is_ok()
                        {
                            cuts.fetch_add(1, Ordering::AcqRel);
                            if outage.load(Ordering::Acquire) {
                                // Before this client hears anything: no
                                // other connection can ask what happened.
                                refusing.store(true, Ordering::Release);
                                for s in live.lock().unwrap().drain(..) {
                                    let _ = s.shutdown(std::net::Shutdown::Both);
                                }
                            }
                            break;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                    let _ = s_in.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy {
            port,
            frozen,
            refusing,
            outage,
            armed,
            cuts,
            live,
        }
    }

    /// Breaks the next `n` connections that report a COMMIT.
    pub fn arm(&self, n: usize) {
        self.armed.store(n, std::sync::atomic::Ordering::Release);
    }

    /// Like [`Proxy::arm`], and each such break also starts an outage
    /// (as [`Proxy::refuse`] on and [`Proxy::cut_all`]) before the broken
    /// connection's client hears of it, so the commit's outcome cannot be
    /// looked up until `refuse(false)`.
    pub fn arm_outage(&self, n: usize) {
        self.outage
            .store(true, std::sync::atomic::Ordering::Release);
        self.arm(n);
    }

    /// Connections broken after a COMMIT so far.
    pub fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::Acquire)
    }

    /// While on, nothing is forwarded and connections stay open.
    pub fn freeze(&self, on: bool) {
        self.frozen.store(on, std::sync::atomic::Ordering::Release);
    }

    /// While on, new connections are closed at once (an outage).
    pub fn refuse(&self, on: bool) {
        self.refusing
            .store(on, std::sync::atomic::Ordering::Release);
    }

    /// Cuts every connection open now (new ones are carried again).
    pub fn cut_all(&self) {
        for s in self.live.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Finds a program on PATH or in the system directories Debian puts
/// servers in (`/usr/sbin` is not on every user's PATH).
pub fn program(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin", "/usr/local/sbin"].map(Into::into))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A message broker of the test's own (`nats-server` or `redis-server`) on
/// a free port, killed when dropped.
pub struct Broker {
    pub kind: &'static str,
    pub port: u16,
    child: Option<Child>,
    /// More arguments of the server (an ACL, say).
    extra: Vec<String>,
}

impl Broker {
    pub fn nats() -> Broker {
        Self::start("nats", free_port())
    }

    pub fn redis() -> Broker {
        Self::start("redis", free_port())
    }

    /// `nats` or `redis`.
    pub fn of(kind: &str) -> Broker {
        match kind {
            "nats" => Self::nats(),
            _ => Self::redis(),
        }
    }

    fn start(kind: &'static str, port: u16) -> Broker {
        Self::start_with(kind, port, &[])
    }

    /// A broker started with more arguments.
    pub fn start_with(kind: &'static str, port: u16, extra: &[&str]) -> Broker {
        let mut b = Broker {
            kind,
            port,
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        b.restart();
        b
    }

    /// The `ROOMCAST_BUS` URL of this broker.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind, self.port)
    }

    /// The URL of this broker reached through `proxy`.
    pub fn url_via(&self, proxy: &Proxy) -> String {
        format!("{}://127.0.0.1:{}", self.kind, proxy.port)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on its port and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            "nats" => {
                let mut c = Command::new(program("nats-server").expect("nats-server is installed"));
                c.args(["-a", "127.0.0.1", "-p", &port]);
                c
            }
            _ => {
                let mut c =
                    Command::new(program("redis-server").expect("redis-server is installed"));
                c.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c
            }
        };
        cmd.args(&self.extra);
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the broker");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let addr = format!("127.0.0.1:{}", self.port).parse().expect("address");
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not start",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------- presence

/// A token of `sub` in org `org` carrying `info`.
pub fn member_token(org: &str, sub: &str, info: Value) -> String {
    mint(
        SECRET,
        &Claims {
            sub: sub.into(),
            org: org.into(),
            exp: now_secs() + 3600,
            rooms: None,
            publish: None,
            info: Some(info),
        },
    )
}

/// A connection that is a member of a room and keeps its view of the
/// members from `subscribed` and the `presence` frames.
pub struct Member {
    pub ws: WsClient,
    pub sub: String,
    pub room: String,
    pub seen: BTreeSet<String>,
    pub frames: usize,
    /// Every (joined, left) frame received, in order.
    pub log: Vec<(Vec<String>, Vec<String>)>,
}

impl Member {
    pub async fn join(port: u16, org: &str, sub: &str, room: &str) -> Member {
        Self::join_with(port, org, sub, room, json!({"name": sub.to_uppercase()})).await
    }

    /// Joins with a token carrying `info`.
    pub async fn join_with(port: u16, org: &str, sub: &str, room: &str, info: Value) -> Member {
        let tok = member_token(org, sub, info);
        let mut ws = WsClient::connect(port, &format!("/v1/ws?token={tok}")).await;
        ws.expect_op("welcome").await;
        ws.send(json!({"op": "subscribe", "room": room, "presence": true}))
            .await;
        let s = ws.expect_op("subscribed").await;
        let seen = s["presence"]
            .as_array()
            .expect("subscribed carries the members")
            .iter()
            .map(|m| m["sub"].as_str().unwrap().to_owned())
            .collect();
        Member {
            ws,
            sub: sub.into(),
            room: room.into(),
            seen,
            frames: 0,
            log: Vec::new(),
        }
    }

    pub fn apply(&mut self, m: &Value) {
        if m["op"] != "presence" || m["room"] != self.room.as_str() {
            return;
        }
        self.frames += 1;
        let joined: Vec<String> = m["joined"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["sub"].as_str().unwrap().to_owned())
            .collect();
        let left: Vec<String> = m["left"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["sub"].as_str().unwrap().to_owned())
            .collect();
        for s in &joined {
            assert!(
                self.seen.insert(s.clone()),
                "{} told {s} joined twice",
                self.sub
            );
        }
        for s in &left {
            assert!(
                self.seen.remove(s),
                "{} told {s} left but never joined",
                self.sub
            );
        }
        self.log.push((joined, left));
    }

    /// Reads frames for `d`.
    pub async fn read_for(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.ws.recv_within(left).await {
                Some(m) => self.apply(&m),
                None if self.ws.ended => return,
                None => {}
            }
        }
    }

    /// Reads frames until the view is `want` (panics after 40 s).
    pub async fn until(&mut self, want: &BTreeSet<String>) {
        self.until_by(want, Instant::now() + Duration::from_secs(40))
            .await
    }

    /// Reads frames until the view is `want` (panics at `deadline`).
    pub async fn until_by(&mut self, want: &BTreeSet<String>, deadline: Instant) {
        while &self.seen != want {
            assert!(
                Instant::now() < deadline,
                "{} sees {:?}, wanted {:?}",
                self.sub,
                self.seen,
                want
            );
            if let Some(m) = self.ws.recv_within(Duration::from_millis(500)).await {
                self.apply(&m);
            }
        }
    }
}

pub fn set(subs: &[&str]) -> BTreeSet<String> {
    subs.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------- room lists

/// A live room list (tests/boards.rs, tests/chaos.rs): its view of the rooms (room -> snapshot), kept from `rooms` and
/// `room` frames.
pub struct Board {
    pub ws: WsClient,
    pub view: HashMap<String, Value>,
    /// `room` frames received per room.
    pub frames: HashMap<String, usize>,
}

impl Board {
    pub async fn open(port: u16, tok: &str, filter: Value) -> Board {
        let mut ws = WsClient::connect(port, &format!("/v1/ws?token={tok}")).await;
        ws.expect_op("welcome").await;
        let mut msg = json!({"op": "subscribe_rooms"});
        for (k, v) in filter.as_object().unwrap() {
            msg[k] = v.clone();
        }
        ws.send(msg).await;
        let first = ws.expect_op("rooms").await;
        let view = first["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["room"].as_str().unwrap().to_owned(), r.clone()))
            .collect();
        Board {
            ws,
            view,
            frames: HashMap::new(),
        }
    }

    pub fn apply(&mut self, m: &Value) {
        if m["op"] != "room" {
            return;
        }
        let id = m["room"]["room"].as_str().unwrap().to_owned();
        *self.frames.entry(id.clone()).or_default() += 1;
        if m["matches"] == true {
            self.view.insert(id, m["room"].clone());
        } else {
            self.view.remove(&id);
        }
    }

    pub async fn read_for(&mut self, d: Duration) {
        let until = tokio::time::Instant::now() + d;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            if let Some(m) = self.ws.recv_within(left).await {
                self.apply(&m);
            }
        }
    }

    /// Reads until `ok` holds of the board, or 20 s (the caller asserts).
    pub async fn read_until(&mut self, ok: impl Fn(&Board) -> bool) {
        self.read_until_by(ok, Instant::now() + Duration::from_secs(20))
            .await
    }

    /// Reads until `ok` holds of the board, or `deadline` (the caller
    /// asserts).
    pub async fn read_until_by(&mut self, ok: impl Fn(&Board) -> bool, deadline: Instant) {
        let deadline = tokio::time::Instant::from_std(deadline);
        while !ok(self) && tokio::time::Instant::now() < deadline {
            self.read_for(Duration::from_millis(100)).await;
        }
    }

    /// (room, head, status) of every room in the view, sorted.
    pub fn heads(&self) -> Vec<(String, i64, String)> {
        let mut v: Vec<_> = self.view.values().map(room_head).collect();
        v.sort();
        v
    }
}

/// (room, head, status) of a room snapshot.
fn room_head(r: &Value) -> (String, i64, String) {
    (
        r["room"].as_str().unwrap().to_owned(),
        r["head"].as_i64().unwrap(),
        r["status"].as_str().unwrap().to_owned(),
    )
}

pub async fn list(port: u16, tok: &str, query: &str) -> Vec<(String, i64, String)> {
    let (s, body, _) = get(port, &format!("/v1/rooms?limit=1000{query}"), tok, &[]).await;
    assert_eq!(s, 200, "{body}");
    let mut v: Vec<_> = body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(room_head)
        .collect();
    v.sort();
    v
}

pub async fn publish_ok(port: u16, tok: &str, room: &str, body: Value) {
    let (s, b, _) = post(port, &format!("/v1/rooms/{room}/events"), tok, &body).await;
    assert!(s == 201 || s == 200, "{s} {b}");
}

/// Waits until every instance reports its bus connected.
pub async fn bus_up(ports: &[u16]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for &p in ports {
        while metric(p, "roomcast_bus_connected").await != 1 {
            assert!(Instant::now() < deadline, "the bus of :{p} never connected");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// -------------------------------------------------------- network namespaces

/// Runs a shell command; whether it succeeded.
pub fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace of the test's own, joined to this one by a veth pair
/// (`host_ip` here, `ns_ip` there, a /30): a peer whose network can be cut
/// without closing its sockets (`ip link set <ns_if> down` inside). Needs
/// root; `None` where `ip netns add` fails. Deleted when dropped.
pub struct Netns {
    pub ns: String,
    pub ns_if: String,
    pub host_ip: String,
    pub ns_ip: String,
}

impl Netns {
    pub fn new() -> Option<Netns> {
        let tag = format!("{:04x}", uuid::Uuid::new_v4().as_u128() & 0xffff);
        let subnet = 1 + (uuid::Uuid::new_v4().as_u128() % 250);
        let net = Netns {
            ns: format!("rcns{tag}"),
            ns_if: format!("rcb{tag}"),
            host_ip: format!("10.213.{subnet}.1"),
            ns_ip: format!("10.213.{subnet}.2"),
        };
        if !sh(&format!("ip netns add {}", net.ns)) {
            return None;
        }
        let (ns, ns_if, host_if) = (&net.ns, &net.ns_if, format!("rca{tag}"));
        for cmd in [
            format!("ip link add {host_if} type veth peer name {ns_if}"),
            format!("ip link set {ns_if} netns {ns}"),
            format!("ip addr add {}/30 dev {host_if}", net.host_ip),
            format!("ip link set {host_if} up"),
            format!(
                "ip netns exec {ns} ip addr add {}/30 dev {ns_if}",
                net.ns_ip
            ),
            format!("ip netns exec {ns} ip link set {ns_if} up"),
            format!("ip netns exec {ns} ip link set lo up"),
        ] {
            assert!(sh(&cmd), "{cmd}");
        }
        Some(net)
    }

    /// Cuts the namespace off: nothing reaches it, nothing leaves it, its
    /// sockets stay open.
    pub fn cut(&self) {
        assert!(sh(&format!(
            "ip netns exec {} ip link set {} down",
            self.ns, self.ns_if
        )));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// ------------------------------------------------------------ certificates

/// A certificate authority and a server certificate it signed for
/// 127.0.0.1 (made with `openssl`, in a directory of their own).
pub struct TestCerts {
    pub dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl TestCerts {
    pub fn make() -> TestCerts {
        let dir = tmp_dir().join(format!("certs-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let d = dir.display();
        let ok = sh(&format!(
            "cd {d} && \
             openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
               -keyout ca.key -out ca.pem -days 2 -subj '/CN=roomcast test CA' && \
             openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
               -keyout server.key -out server.csr -subj '/CN=127.0.0.1' && \
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > ext.cnf && \
             openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
               -out server.pem -days 2 -extfile ext.cnf && chmod 644 server.key"
        ));
        assert!(ok, "openssl could not make the test certificates in {d}");
        TestCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        }
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
