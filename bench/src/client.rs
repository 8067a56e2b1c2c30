//! The bench's clients: WebSocket (tokio-tungstenite) and HTTP/1.1 keep-alive
//! connections (hyper), spread over several loopback source addresses so
//! tens of thousands of sockets never run out of ephemeral ports.

use std::borrow::Cow;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub type Ws = WebSocketStream<TcpStream>;

static NEXT_SOURCE: AtomicUsize = AtomicUsize::new(0);

/// A TCP connection to the server from 127.0.0.(1..=32).
pub async fn tcp(port: u16) -> Result<TcpStream> {
    let i = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed);
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % 32) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let stream = socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A WebSocket to `path` with small buffers (tens of thousands are open at once).
pub async fn ws(port: u16, path: &str) -> Result<Ws> {
    let stream = tcp(port).await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://127.0.0.1:{port}{path}"),
        stream,
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// A WebSocket, retried for up to `within` (a storm overflows accept queues).
pub async fn ws_retry(port: u16, path: &str, within: Duration) -> Result<Ws> {
    let until = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(20);
    loop {
        match ws(port, path).await {
            Ok(ws) => return Ok(ws),
            Err(e) if tokio::time::Instant::now() + pause > until => return Err(e),
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        }
    }
}

/// The fields of a server frame the bench looks at.
#[derive(Deserialize)]
pub struct Frame<'a> {
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    #[serde(default)]
    pub seq: Option<i64>,
    #[serde(default)]
    pub head: Option<i64>,
    #[serde(default, borrow)]
    pub via: Option<Cow<'a, str>>,
}

/// Reads frames until the next server message (pings are answered by
/// tungstenite on the next read/flush).
pub async fn next_text(ws: &mut Ws) -> Result<Option<Bytes>> {
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(t))) => return Ok(Some(Bytes::from(t))),
            Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(_)) => continue,
        }
    }
}

/// A subscriber's view of one room: every event must be `last + 1`.
#[derive(Default, Clone, Debug)]
pub struct Tally {
    pub last: i64,
    pub received: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub push: u64,
    pub catchup: u64,
}

impl Tally {
    pub fn from(since: i64) -> Tally {
        Tally {
            last: since,
            ..Tally::default()
        }
    }

    /// Applies one frame; answers the seq of an event frame.
    pub fn apply(&mut self, text: &[u8]) -> Result<Option<i64>> {
        let f: Frame = serde_json::from_slice(text)?;
        match f.op.as_ref() {
            "event" => {
                let seq = f.seq.ok_or_else(|| anyhow!("event without seq"))?;
                self.received += 1;
                if seq <= self.last {
                    self.duplicates += 1;
                } else {
                    if seq > self.last + 1 {
                        self.gaps += 1;
                    }
                    self.last = seq;
                }
                match f.via.as_deref() {
                    Some("push") => self.push += 1,
                    _ => self.catchup += 1,
                }
                Ok(Some(seq))
            }
            "reset" => bail!("unexpected reset: {}", String::from_utf8_lossy(text)),
            "error" => bail!("server error frame: {}", String::from_utf8_lossy(text)),
            _ => Ok(None),
        }
    }
}

/// Opens `/v1/rooms/{room}/ws` (with `since` when given) and waits for
/// `subscribed`; answers the socket and the room's head.
pub async fn subscribe(
    port: u16,
    room: &str,
    since: Option<i64>,
    token: &str,
    within: Duration,
) -> Result<(Ws, i64)> {
    let path = match since {
        Some(s) => format!("/v1/rooms/{room}/ws?since={s}&token={token}"),
        None => format!("/v1/rooms/{room}/ws?token={token}"),
    };
    let mut ws = ws_retry(port, &path, within).await?;
    loop {
        let text = next_text(&mut ws)
            .await?
            .ok_or_else(|| anyhow!("closed before subscribed"))?;
        let f: Frame = serde_json::from_slice(&text)?;
        if f.op == "subscribed" {
            return Ok((ws, f.head.unwrap_or(0)));
        }
        if f.op == "error" {
            bail!("subscribe refused: {}", String::from_utf8_lossy(&text));
        }
    }
}

/// One HTTP/1.1 keep-alive connection.
pub struct Http {
    send: SendRequest<Full<Bytes>>,
}

impl Http {
    pub async fn connect(port: u16) -> Result<Http> {
        let stream = tcp(port).await?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Http { send })
    }

    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<Bytes>,
    ) -> Result<(u16, Bytes)> {
        self.send.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "127.0.0.1");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let res = self
            .send
            .send_request(req.body(Full::new(body.unwrap_or_default()))?)
            .await?;
        let status = res.status().as_u16();
        let body = res.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// GET with `auth` an `Authorization` header value.
    pub async fn get(&mut self, path: &str, auth: Option<&str>) -> Result<(u16, Bytes)> {
        self.request("GET", path, auth, None).await
    }

    /// POST a JSON body; answers the status and the body.
    pub async fn post(&mut self, path: &str, auth: &str, body: Bytes) -> Result<(u16, Bytes)> {
        self.request("POST", path, Some(auth), Some(body)).await
    }
}

/// Publishes `body` to `room`, retrying 503s; answers the seqs given.
pub async fn publish(http: &mut Http, auth: &str, room: &str, body: Bytes) -> Result<Vec<i64>> {
    let path = format!("/v1/rooms/{room}/events");
    for _ in 0..50 {
        let (status, answer) = http.post(&path, auth, body.clone()).await?;
        match status {
            200 | 201 => {
                let v: serde_json::Value = serde_json::from_slice(&answer)?;
                if let Some(s) = v["seq"].as_i64() {
                    return Ok(vec![s]);
                }
                let seqs = v["seqs"]
                    .as_array()
                    .ok_or_else(|| anyhow!("no seq in {v}"))?
                    .iter()
                    .filter_map(|s| s.as_i64())
                    .collect();
                return Ok(seqs);
            }
            503 => tokio::time::sleep(Duration::from_millis(50)).await,
            s => bail!("publish answered {s}: {}", String::from_utf8_lossy(&answer)),
        }
    }
    bail!("publish kept answering 503")
}

/// A single event's body, about `size` bytes of data.
pub fn event_body(ty: &str, i: u64, size: usize) -> Bytes {
    let pad = "x".repeat(size.saturating_sub(24));
    Bytes::from(format!(
        r#"{{"type":"{ty}","data":{{"i":{i},"text":"{pad}"}}}}"#
    ))
}

/// A batch body of `n` events.
pub fn batch_body(ty: &str, from: u64, n: usize, size: usize) -> Bytes {
    let pad = "x".repeat(size.saturating_sub(24));
    let mut s = String::from(r#"{"events":["#);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            r#"{{"type":"{ty}","data":{{"i":{},"text":"{pad}"}}}}"#,
            from + i as u64
        ));
    }
    s.push_str("]}");
    Bytes::from(s)
}

/// Opens one subscription per `(room, since)`, `concurrency` handshakes at a
/// time, in order; answers the sockets with the heads they were given.
pub async fn subscribe_many(
    port: u16,
    specs: Vec<(String, Option<i64>)>,
    token: &str,
    concurrency: usize,
    progress: impl Fn(usize),
) -> Result<Vec<(Ws, i64)>> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let opened: Vec<Result<(Ws, i64)>> = futures_util::stream::iter(specs)
        .map(|(room, since)| {
            let done = &done;
            let progress = &progress;
            async move {
                let r = subscribe(port, &room, since, token, Duration::from_secs(30)).await;
                progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                r
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    opened.into_iter().collect()
}

/// Reads `ws` until its tally reaches `target`; answers when it got there.
pub async fn drain_to(ws: &mut Ws, tally: &mut Tally, target: i64) -> Result<std::time::Instant> {
    while tally.last < target {
        let text = next_text(ws)
            .await?
            .ok_or_else(|| anyhow!("closed at seq {} of {target}", tally.last))?;
        tally.apply(&text)?;
    }
    Ok(std::time::Instant::now())
}
