//! Survives hostile clients under load: 2,000 hostile sockets (sockets that trickle a request
//! head, sockets that connect and say nothing, WebSocket connections without a token that
//! flood requests and never read) against one gateway, while 200 honest clients with tokens
//! each receive every event, in order. Bounded in count and time, loopback only.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

const HONEST: usize = 200;
const HOSTILE: usize = 2_000;
const EVENTS: usize = 2_000;

/// Lifts this process's open-file limit to its hard limit: 2,200 sockets of one test.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn token() -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"exp": 4_000_000_000u64, "topics": ["cdc.*"]}),
        &jsonwebtoken::EncodingKey::from_secret(b"load-secret"),
    )
    .unwrap()
}

/// One hostile socket of kind `n % 3`, kept until the test aborts it.
async fn hostile(gateway: std::net::SocketAddr, n: usize) {
    let Ok(mut socket) = TcpStream::connect(gateway).await else {
        return;
    };
    match n % 3 {
        // Trickles a request head, a byte a second.
        0 => {
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if socket.write_all(&[*byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        // Says nothing.
        1 => tokio::time::sleep(Duration::from_secs(120)).await,
        // A WebSocket without a token that floods and never reads.
        _ => {
            let url = format!("ws://{gateway}/ws");
            let Ok((mut ws, _)) = tokio_tungstenite::client_async(url, socket).await else {
                return;
            };
            let flood = "x".repeat(16_000);
            for id in 0..1_000 {
                let request = json!({"action": flood, "id": id}).to_string();
                if ws.send(Message::text(request)).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_hostile_sockets_do_not_cost_honest_clients_an_event() {
    raise_open_files();
    let (_tansu, gateway, producer, topic) = start_stack(&[
        "--auth",
        "jwt",
        "--jwt-secret",
        "load-secret",
        "--auth-timeout",
        "2s",
        "--header-read-timeout",
        "2s",
        "--max-pending-auth",
        "500",
        "--max-http-connections",
        "4096",
    ])
    .await;
    let token = token();
    let mut honest = Vec::new();
    for _ in 0..HONEST {
        let mut request = gateway.ws_url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut client = Client { ws };
        client.subscribe("cdc.order", json!({})).await;
        honest.push(client);
    }
    let addr = gateway.addr();
    let attackers: Vec<_> = (0..HOSTILE)
        .map(|n| tokio::spawn(hostile(addr, n)))
        .collect();
    // Let the attack take hold before the events flow.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let events: Vec<String> = (0..EVENTS)
        .map(|seq| {
            order(
                &(seq % 50).to_string(),
                "update",
                json!({"seq": seq}),
                Value::Null,
            )
            .to_string()
        })
        .collect();
    producer.send_many(&topic, &events).await;

    let readers: Vec<_> = honest
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let mut seen = Vec::with_capacity(EVENTS);
                let deadline = Instant::now() + Duration::from_secs(90);
                while seen.len() < EVENTS && Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_secs(30), client.ws.next()).await {
                        Ok(Some(Ok(Message::Text(text)))) => {
                            let message: Value = serde_json::from_str(&text).unwrap();
                            if message["type"] == "data" {
                                seen.push(message["payload"]["data"]["seq"].as_u64().unwrap());
                            }
                        }
                        Ok(Some(Ok(_))) => {}
                        other => panic!("an honest client's stream ended: {other:?}"),
                    }
                }
                seen
            })
        })
        .collect();
    for reader in readers {
        let seen = reader.await.unwrap();
        assert_eq!(
            seen,
            (0..EVENTS as u64).collect::<Vec<_>>(),
            "an honest client missed, repeated or reordered events"
        );
    }
    // The hostile sockets are gone by their timeouts; the honest ones remain.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let active = gateway.metric("cdc_gateway_connections_active").await;
        if active <= HONEST as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{active} connections still open, {HONEST} of them honest"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
    for attacker in attackers {
        attacker.abort();
    }
}

/// Issue 20.3, as it was found: 4 clients that never read, each re-subscribing to
/// `cdc.order` with `"snapshot": true` within the rate limit, over a snapshot of 20,000 rows,
/// once took the gateway from 50 MiB to 2,862 MiB. Each connection's unread backlogs are
/// bounded by `--max-backlog-rows`; past it a subscribe gets BACKLOG_FULL. A snapshot paged
/// from the table store holds one page (512 rows) at most, and is reserved at that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_resubscribe_with_snapshots_and_never_read_cannot_grow_memory() {
    const ROWS: usize = 20_000;
    const BUDGET: usize = 50_000;
    // What one pending snapshot is reserved at: a page of the table store.
    const SHARE: usize = 512;
    let budget = BUDGET.to_string();
    let (_tansu, gateway, producer, topic) = start_stack(&["--max-backlog-rows", &budget]).await;
    let pad = "p".repeat(100);
    let rows: Vec<String> = (0..ROWS)
        .map(|n| {
            order(
                &n.to_string(),
                "insert",
                json!({"id": n.to_string(), "status": "new", "pad": pad}),
                Value::Null,
            )
            .to_string()
        })
        .collect();
    producer.send_many(&topic, &rows).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway.metric("cdc_gateway_table_rows").await < ROWS as f64 {
        assert!(
            Instant::now() < deadline,
            "the rows never reached the snapshot cache"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let before = gateway.rss_bytes();

    const SUBSCRIBES: usize = 150;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let mut client = Client::connect_small_buffer(&gateway).await;
        clients.push(tokio::spawn(async move {
            // 25 a second: within the default rate limit of 50.
            for n in 0..SUBSCRIBES {
                client
                    .send(json!({"action": "subscribe", "topic": "cdc.order", "snapshot": true, "id": n}))
                    .await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            client
        }));
    }
    let mut peak = before;
    let mut held_rows = 0.0_f64;
    while clients.iter().any(|c| !c.is_finished()) {
        peak = peak.max(gateway.rss_bytes());
        held_rows = held_rows.max(gateway.metric("cdc_gateway_backlog_rows").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut idle = Vec::new();
    for client in clients {
        idle.push(client.await.unwrap());
    }
    // Every subscribe was answered before the count is read.
    let refused_series = r#"cdc_gateway_error_replies_total{code="BACKLOG_FULL"}"#;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut refused = 0.0;
    while Instant::now() < deadline {
        refused = gateway.metric(refused_series).await;
        peak = peak.max(gateway.rss_bytes());
        if refused >= (4 * (SUBSCRIBES - BUDGET / SHARE)) as f64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth_mib = (peak.saturating_sub(before)) as f64 / (1 << 20) as f64;
    eprintln!(
        "RSS {:.1} MiB before, peak {:.1} MiB; backlog rows at most {held_rows}; {refused} subscribes refused",
        before as f64 / (1 << 20) as f64,
        peak as f64 / (1 << 20) as f64
    );
    assert_eq!(
        refused,
        (4 * (SUBSCRIBES - BUDGET / SHARE)) as f64,
        "past 97 pending snapshots (a page each), every subscribe of each client is refused"
    );
    assert!(
        held_rows <= (4 * BUDGET) as f64,
        "{held_rows} backlog rows held, at most {BUDGET} per connection"
    );
    assert!(
        growth_mib < 120.0,
        "the gateway grew by {growth_mib:.1} MiB for 4 clients that never read"
    );
    // The connections gone, what they were owed goes too.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.metric("cdc_gateway_backlog_rows").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "backlog rows still held for closed connections"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
