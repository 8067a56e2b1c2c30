//! Faults: a server killed with SIGKILL and restarted, PostgreSQL going away
//! (on a private cluster this test owns, never the shared one), SIGTERM.

mod common;

use std::time::Duration;

use common::*;
use roomcast::pgcluster::PrivateCluster;
use serde_json::{json, Value};

/// Follows a room across reconnects, always resuming with since = last seq.
async fn follow(port: u16, room: &str, until: i64, deadline: Duration) -> Vec<Value> {
    let viewer = token("acme", "viewer", false);
    let stop = tokio::time::Instant::now() + deadline;
    let mut got: Vec<Value> = Vec::new();
    let mut reconnects = 0;
    while got.last().and_then(|e| e["seq"].as_i64()).unwrap_or(0) < until {
        assert!(
            tokio::time::Instant::now() < stop,
            "gave up at {} events",
            got.len()
        );
        let since = got.last().and_then(|e| e["seq"].as_i64()).unwrap_or(0);
        let path = format!("/v1/rooms/{room}/ws?since={since}&token={viewer}");
        let Ok(mut ws) = WsClient::try_connect(port, &path).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        reconnects += 1;
        while let Some(m) = ws.recv_within(Duration::from_secs(5)).await {
            if m["op"] == "event" {
                got.push(m);
                if got.last().and_then(|e| e["seq"].as_i64()) >= Some(until) {
                    break;
                }
            }
        }
    }
    assert!(reconnects >= 2, "the client never had to reconnect");
    got
}

#[actix_web::test]
async fn clients_resume_exactly_once_across_kill_9_and_restart() {
    let db = TestDb::new().await;
    let port = free_port();
    let mut server = ServerProcess::start(&db.url, port, &[("ROOMCAST_POLL_MS", "500")]);
    const N: i64 = 150;
    let followers: Vec<_> = (0..4)
        .map(|_| actix_web::rt::spawn(follow(port, "meeting", N, Duration::from_secs(60))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The producer writes through SQL, so it keeps going while the server is dead.
    let sql = db.client().await;
    for i in 1..=N {
        sql.execute(
            "SELECT roomcast_publish('acme', 'meeting', 'segment', $1::jsonb)",
            &[&json!(i)],
        )
        .await
        .unwrap();
        if i == 50 {
            server.kill9();
        }
        if i == 90 {
            server = ServerProcess::start(&db.url, port, &[("ROOMCAST_POLL_MS", "500")]);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for f in followers {
        let evs = f.await.expect("follower");
        assert_exactly(&evs, 1, N);
    }
    // SIGTERM: clients are told 1001 and the process exits 0.
    let viewer = token("acme", "viewer", false);
    let mut ws = WsClient::connect(port, &format!("/v1/rooms/meeting/ws?token={viewer}")).await;
    ws.expect_op("subscribed").await;
    let stopping = std::time::Instant::now();
    let status = server.terminate();
    let took = stopping.elapsed();
    assert!(status.success(), "exit status {status}");
    // Within a bound: an idle server exits in milliseconds; requests in
    // flight get at most the 10 s shutdown timeout.
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    eprintln!("SIGTERM to exit 0 with one WebSocket open: {took:?}");
    assert!(ws.recv_within(Duration::from_secs(5)).await.is_none());
    let reason = ws.closed.clone().flatten().expect("a close frame");
    assert_eq!(u16::from(reason.code), 1001);
}

#[actix_web::test]
async fn publishes_get_503_while_the_database_is_down_and_nothing_acknowledged_is_lost() {
    let dir = tmp_dir().join(format!("pg-down-{}", uuid::Uuid::new_v4().simple()));
    let cluster = web_block(|d| PrivateCluster::start(&d), dir.clone()).await;
    let url = cluster.url("postgres");
    let mut cfg = roomcast::config::Config::new(url.clone(), SECRET);
    cfg.workers = 1;
    cfg.poll_ms = 300;
    let app = spawn_app(cfg).await;
    let producer = token("acme", "producer", true);
    let viewer = token("acme", "viewer", false);
    let mut ws =
        WsClient::connect(app.port, &format!("/v1/rooms/r/ws?since=0&token={viewer}")).await;
    ws.expect_op("subscribed").await;

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        acknowledged.push(publish(app.port, &producer, "r", "before", json!(i)).await);
    }
    cluster.stop();
    let (s, b, h) = post(
        app.port,
        "/v1/rooms/r/events",
        &producer,
        &json!({"type": "during"}),
    )
    .await;
    assert_eq!(s, 503, "{b}");
    assert_eq!(b["error"]["code"], "unavailable");
    assert!(h.contains_key("retry-after"), "{h:?}");
    let ready = awc::Client::default()
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    let cluster = web_block(|d| PrivateCluster::start(&d), dir.clone()).await;
    // Retries succeed once PostgreSQL is back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, b, _) = post(
            app.port,
            "/v1/rooms/r/events",
            &producer,
            &json!({"type": "after", "id": "retry-1"}),
        )
        .await;
        if s == 201 || s == 200 {
            acknowledged.push(b["seq"].as_i64().unwrap());
            break;
        }
        assert_eq!(s, 503, "{b}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "PostgreSQL never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(acknowledged, vec![1, 2, 3, 4, 5, 6]);
    let evs = ws.events_until("r", 6, Duration::from_secs(30)).await;
    assert_exactly(&evs, 1, 6);
    cluster.destroy();
}

/// A private cluster left running by an earlier run is found again when the
/// directory that named it no longer says its port: a fresh checkout at the
/// same path (CI's) relocates to the same cluster, whose postmaster.pid
/// names the port. Before, start failed on the running postmaster's lock
/// ("could not start PostgreSQL"), and the tests with it.
#[actix_web::test]
async fn a_private_cluster_left_running_is_found_again() {
    let dir = tmp_dir().join(format!("pg-left-{}", uuid::Uuid::new_v4().simple()));
    let first = web_block(|d| PrivateCluster::start(&d), dir.clone()).await;
    let url = first.url("postgres");
    // What a fresh checkout at the same path has of it: no port file.
    std::fs::remove_file(dir.join("port")).expect("the port file");
    let again = web_block(|d| PrivateCluster::start(&d), dir.clone()).await;
    assert_eq!(
        again.url("postgres"),
        url,
        "the running cluster, found again"
    );
    let (client, conn) = tokio_postgres::connect(&again.url("postgres"), tokio_postgres::NoTls)
        .await
        .expect("connect to the cluster found again");
    actix_web::rt::spawn(conn);
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
    drop(first);
    again.destroy();
}

async fn web_block<T: Send + 'static>(
    f: impl FnOnce(std::path::PathBuf) -> std::io::Result<T> + Send + 'static,
    dir: std::path::PathBuf,
) -> T {
    actix_web::web::block(move || f(dir))
        .await
        .expect("block")
        .expect("cluster")
}

/// Issue 23, item 9: a relay leader cut off by a network partition (its
/// network namespace's link goes down: no reset, no FIN reaches
/// PostgreSQL) loses the relay lock to another instance within 20 s:
/// PostgreSQL ends the vanished backend (every roomcast connection asks it
/// for short keepalives and a `tcp_user_timeout`), and the lock goes with
/// it. PostgreSQL (a private cluster) and NATS listen on the veth address.
/// Needs root (`ip netns`); says so and passes where it cannot run.
#[actix_web::test]
async fn a_partitioned_relay_leader_loses_its_role_within_20_seconds() {
    let Some(net) = Netns::new() else {
        eprintln!("SKIPPED: a_partitioned_relay_leader_loses_its_role_within_20_seconds needs root (ip netns add)");
        return;
    };
    let host = net.host_ip.clone();
    // A private cluster on the veth address.
    let dir = std::path::PathBuf::from(format!(
        "/tmp/rc-partition-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    struct Cluster(std::path::PathBuf, String);
    impl Drop for Cluster {
        fn drop(&mut self) {
            sh(&format!(
                "runuser -u postgres -- {}/pg_ctl -D {}/data -m immediate stop",
                self.1,
                self.0.display()
            ));
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let pgbin = std::process::Command::new("sh")
        .args([
            "-c",
            "dirname \"$(command -v pg_ctl || ls /usr/lib/postgresql/*/bin/pg_ctl | tail -n 1)\"",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap();
    let pg_port = free_port();
    let d = dir.display().to_string();
    for cmd in [
        format!("chown postgres {d}"),
        format!(
            "runuser -u postgres -- {pgbin}/initdb -D {d}/data -A trust -U postgres >/dev/null"
        ),
        format!("echo 'host all all 10.213.0.0/16 trust' >> {d}/data/pg_hba.conf"),
        format!(
            "runuser -u postgres -- {pgbin}/pg_ctl -D {d}/data -w -l {d}/log \
             -o '-c listen_addresses={host} -p {pg_port} -k {d}' start >/dev/null"
        ),
    ] {
        assert!(sh(&cmd), "{cmd}");
    }
    let _cluster = Cluster(dir.clone(), pgbin);
    let admin = format!("host={host} port={pg_port} user=postgres dbname=postgres");
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    actix_web::rt::spawn(conn);
    client.batch_execute("CREATE DATABASE rc").await.unwrap();
    let url = format!("host={host} port={pg_port} user=postgres dbname=rc");
    let nats_port = free_port();
    let _nats = Killed(
        std::process::Command::new(program("nats-server").expect("nats-server is installed"))
            .args(["-a", &host, "-p", &nats_port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let bus = format!("nats://{host}:{nats_port}");
    // Instance a, in the namespace, first: it takes the relay.
    let _a = Killed(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.ns,
                env!("CARGO_BIN_EXE_roomcast"),
                "serve",
            ])
            .env("DATABASE_URL", &url)
            .env("ROOMCAST_BUS", &bus)
            .env("ROOMCAST_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("ROOMCAST_BIND", format!("{}:0", net.ns_ip))
            .env("ROOMCAST_JWT_SECRET", SECRET)
            .env("ROOMCAST_POLL_MS", "1000")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (watch, conn) = tokio_postgres::connect(
        &url.replace("dbname=rc", "dbname=rc"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    actix_web::rt::spawn(conn);
    let holder = || async {
        watch
            .query_opt(
                "SELECT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                  WHERE l.locktype = 'advisory' AND l.granted
                    AND a.application_name = 'roomcast-listener'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while holder().await.as_deref() != Some(net.ns_ip.as_str()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance in the namespace never took the relay"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Instance b, on this side.
    let _b = ServerProcess::start(
        &url,
        0,
        &[("ROOMCAST_BUS", bus.as_str()), ("ROOMCAST_POLL_MS", "1000")],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    net.cut();
    let cut = std::time::Instant::now();
    while holder().await.as_deref() != Some(host.as_str()) {
        assert!(
            cut.elapsed() < Duration::from_secs(20),
            "the partitioned instance still holds the relay ({:?})",
            holder().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "a partitioned relay leader lost the relay after {:?}",
        cut.elapsed()
    );
}
