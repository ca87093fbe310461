//! Protocol section 8: `GET /sse`, read by a minimal HTTP/1.1 client written here (request
//! line, headers, chunked transfer decoding, event-stream parsing), independent of the
//! gateway's code.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::*;

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Event {
        event: String,
        id: Option<String>,
        data: String,
    },
    Comment(String),
}

struct SseClient {
    reader: BufReader<TcpStream>,
    status: u16,
    headers: Vec<(String, String)>,
    /// Decoded body text not yet parsed into items.
    text: String,
    ended: bool,
}

impl SseClient {
    async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Self {
        Self::open_on(
            TcpStream::connect(addr).await.unwrap(),
            addr,
            target,
            headers,
        )
        .await
    }

    /// With a 4 KiB receive buffer, so that a client that stops reading fills up quickly.
    async fn open_small_buffer(addr: SocketAddr, target: &str) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        Self::open_on(socket.connect(addr).await.unwrap(), addr, target, &[]).await
    }

    async fn open_on(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Self {
        let mut request =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reader = BufReader::new(stream);
        let head = async {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut headers = Vec::new();
            loop {
                line.clear();
                reader.read_line(&mut line).await.unwrap();
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').unwrap();
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
            (status, headers)
        };
        let (status, headers) = tokio::time::timeout(WAIT, head)
            .await
            .expect("the response head in time");
        SseClient {
            reader,
            status,
            headers,
            text: String::new(),
            ended: false,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The JSON body of a refusal (sent with a Content-Length).
    async fn error_body(mut self) -> Value {
        let length: usize = self.header("content-length").unwrap().parse().unwrap();
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await.unwrap();
        serde_json::from_slice(&body).unwrap()
    }

    /// Reads one chunk of the chunked body into `text`; false at the end of the body.
    async fn read_chunk(&mut self) -> bool {
        let mut size = String::new();
        if self.reader.read_line(&mut size).await.unwrap() == 0 {
            return false;
        }
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        let mut chunk = vec![0; size + 2];
        self.reader.read_exact(&mut chunk).await.unwrap();
        assert_eq!(&chunk[size..], b"\r\n", "chunk framing");
        self.text
            .push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        size > 0
    }

    /// The next item within `within`; `None` when the stream ended.
    async fn next(&mut self, within: Duration) -> Option<Item> {
        tokio::time::timeout(within, async {
            loop {
                if let Some(end) = self.text.find("\n\n") {
                    let block: String = self.text.drain(..end + 2).collect();
                    return Some(parse_item(block.trim_end_matches('\n')));
                }
                if self.ended || !self.read_chunk().await {
                    self.ended = true;
                    return None;
                }
            }
        })
        .await
        .expect("an event-stream item in time")
    }

    /// The next `event:` item within `within`, skipping comments.
    async fn next_event(&mut self, within: Duration) -> Option<(String, Option<String>, Value)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Item::Event { event, id, data } => {
                    return Some((event, id, serde_json::from_str(&data).unwrap()))
                }
                Item::Comment(_) => continue,
            }
        }
    }
}

fn parse_item(block: &str) -> Item {
    if let Some(comment) = block.strip_prefix(':') {
        return Item::Comment(comment.trim().to_owned());
    }
    let (mut event, mut id, mut data) = (String::from("message"), None, String::new());
    for line in block.lines() {
        let (field, value) = line.split_once(": ").unwrap_or((line, ""));
        match field {
            "event" => event = value.to_owned(),
            "id" => id = Some(value.to_owned()),
            "data" => data.push_str(value),
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    Item::Event { event, id, data }
}

fn order(id: &str, status: &str) -> Value {
    json!({"entity_type": "order", "entity_id": id, "operation": "update",
           "data": {"id": id, "status": status}})
}

#[tokio::test]
async fn a_stream_acks_then_carries_data_with_its_position() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut sse = SseClient::open(
        gateway.addr(),
        "/sse?topic=cdc.order&topic=cdc.order.7",
        &[],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("*"),
        "no --allowed-origins: any page may read the stream"
    );
    for expected in ["cdc.order", "cdc.order.7"] {
        let (event, _, ack) = sse.next_event(WAIT).await.unwrap();
        assert_eq!(event, "ack");
        assert_eq!(
            (ack["action"].as_str(), ack["topic"].as_str()),
            (Some("subscribe"), Some(expected))
        );
        assert!(ack["position"].is_object());
    }
    producer.send_json(&topic, None, &order("7", "paid")).await;
    producer.send_json(&topic, None, &order("8", "new")).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let (event, id, data) = sse.next_event(WAIT).await.unwrap();
        assert_eq!(event, "data");
        assert_eq!(data["type"], "data");
        let offset = data["offset"].as_i64().unwrap();
        assert_eq!(
            id.as_deref(),
            Some(format!("{topic}:0:{offset}").as_str()),
            "id is the position"
        );
        seen.push((
            data["topic"].as_str().unwrap().to_owned(),
            data["payload"]["entity_id"].as_str().unwrap().to_owned(),
        ));
    }
    seen.sort();
    assert_eq!(
        seen,
        [("cdc.order", "7"), ("cdc.order", "8"), ("cdc.order.7", "7")]
            .map(|(t, i)| (t.to_owned(), i.to_owned()))
    );
    let health = http_get(gateway.addr(), "/health").await.unwrap().1;
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        (
            health["active_connections"].as_i64(),
            health["subscriptions"].as_i64()
        ),
        (Some(1), Some(2))
    );
    drop(sse);
    // The stream ends with its client: its subscriptions leave the index.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        producer.send_json(&topic, None, &order("7", "again")).await;
        if gateway.metric("cdc_gateway_subscriptions_active").await == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "subscriptions released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn filters_apply_and_bad_requests_are_refused_before_the_stream() {
    let (_tansu, gateway, producer, topic) = start_stack(&[
        "--max-subscriptions",
        "2",
        "--allowed-origins",
        "https://ok.example",
    ])
    .await;
    let filters = "%7B%22data.status%22%3A%22paid%22%7D"; // {"data.status":"paid"}
    let mut sse = SseClient::open(
        gateway.addr(),
        &format!("/sse?topic=cdc.order&filters={filters}"),
        &[("Origin", "https://ok.example")],
    )
    .await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("https://ok.example")
    );
    assert_eq!(sse.next_event(WAIT).await.unwrap().0, "ack");
    producer.send_json(&topic, None, &order("1", "new")).await;
    producer.send_json(&topic, None, &order("2", "paid")).await;
    let (_, _, data) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(
        data["payload"]["entity_id"], "2",
        "the filter held back order 1"
    );

    for (target, headers, status, code) in [
        ("/sse", vec![], 400, "INVALID_MESSAGE"),
        ("/sse?topic=orders", vec![], 400, "INVALID_TOPIC"),
        (
            "/sse?topic=cdc.order&filters=%7Bnope",
            vec![],
            400,
            "INVALID_FILTER",
        ),
        (
            "/sse?topic=cdc.order&filters=%7B%22data.x%22%3A%7B%22near%22%3A1%7D%7D",
            vec![],
            400,
            "INVALID_FILTER",
        ),
        (
            "/sse?topic=cdc.order&since=zero",
            vec![],
            400,
            "INVALID_MESSAGE",
        ),
        (
            "/sse?topic=cdc.order",
            vec![("Last-Event-ID", "0:x")],
            400,
            "INVALID_MESSAGE",
        ),
        (
            "/sse?topic=cdc.a&topic=cdc.b&topic=cdc.c",
            vec![],
            400,
            "TOO_MANY_SUBSCRIPTIONS",
        ),
        (
            "/sse?topic=cdc.order",
            vec![("Origin", "https://evil.example")],
            403,
            "FORBIDDEN",
        ),
    ] {
        let refused = SseClient::open(gateway.addr(), target, &headers).await;
        assert_eq!(refused.status, status, "{target} {headers:?}");
        let body = refused.error_body().await;
        assert_eq!(body["code"], code, "{target}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // The refusals subscribed nothing; the one live stream still has its one topic.
    assert_eq!(
        gateway.metric("cdc_gateway_subscriptions_active").await,
        1.0
    );
}

#[tokio::test]
async fn a_resumed_stream_keeps_its_position_sends_heartbeats_and_ends_at_shutdown() {
    let (_tansu, mut gateway, producer, topic) = start_stack(&["--ping-interval", "1s"]).await;
    let mut sse = SseClient::open(
        gateway.addr(),
        "/sse?topic=cdc.order.5&snapshot=1",
        &[("Last-Event-ID", "0:1000")],
    )
    .await;
    assert_eq!(sse.status, 200);
    let (_, _, ack) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(
        ack["recovered"], false,
        "a snapshot is the reload: nothing is replayed"
    );
    assert_eq!(
        ack["snapshot"],
        json!({"rows": 0, "complete": true}),
        "no event of the row yet"
    );
    let (event, _, synced) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(
        (event.as_str(), synced),
        ("synced", json!({"type": "synced", "topic": "cdc.order.5"}))
    );
    assert_eq!(
        sse.next(Duration::from_secs(5)).await,
        Some(Item::Comment("keep-alive".into())),
        "an idle stream sends a heartbeat comment"
    );
    producer.send_json(&topic, None, &order("5", "paid")).await;
    let (_, id, data) = sse.next_event(WAIT).await.unwrap();
    assert_eq!(data["payload"]["entity_id"], "5");
    assert_eq!(
        id.as_deref(),
        Some(format!("{topic}:0:0").as_str()),
        "after a reload the position is the ack's, raised by each event"
    );
    // A second stream's snapshot holds the row's last event, marked as such.
    let mut second =
        SseClient::open(gateway.addr(), "/sse?topic=cdc.order.5&snapshot=1", &[]).await;
    let (event, _, ack) = second.next_event(WAIT).await.unwrap();
    assert_eq!(
        (event.as_str(), &ack["snapshot"]),
        ("ack", &json!({"rows": 1, "complete": true}))
    );
    let (event, id, row) = second.next_event(WAIT).await.unwrap();
    assert_eq!((event.as_str(), &row["snapshot"]), ("data", &json!(true)));
    assert_eq!(row["payload"]["entity_id"], "5");
    assert!(id.is_some_and(|id| id.starts_with(&format!("{topic}:0:"))));
    let (event, _, _) = second.next_event(WAIT).await.unwrap();
    assert_eq!(event, "synced");
    drop(second);

    gateway.signal("TERM");
    assert_eq!(
        sse.next_event(WAIT).await,
        None,
        "the stream ends at shutdown"
    );
    assert_eq!(gateway.wait_exit(WAIT), Some(0));
}

#[tokio::test]
async fn a_stalled_stream_is_closed_and_holds_nobody_back() {
    let (_tansu, gateway, producer, topic) =
        start_stack(&["--outbound-queue", "8", "--slow-client-grace", "1s"]).await;
    let mut stalled = SseClient::open_small_buffer(gateway.addr(), "/sse?topic=cdc.order").await;
    assert_eq!(stalled.next_event(WAIT).await.unwrap().0, "ack");
    let mut reader = Client::connect(&gateway).await;
    reader.subscribe("cdc.order", json!({})).await;

    const COUNT: usize = 3000;
    let pad = "x".repeat(2048);
    let events: Vec<String> = (0..COUNT)
        .map(|i| {
            json!({"entity_type": "order", "entity_id": (i % 500).to_string(),
                   "operation": "update", "data": {"seq": i, "pad": pad}})
            .to_string()
        })
        .collect();
    producer.send_many(&topic, &events).await;
    for seq in 0..COUNT as u64 {
        assert_eq!(reader.data().await["payload"]["data"]["seq"], seq);
    }
    assert!(
        gateway
            .metric(r#"cdc_gateway_drops_total{reason="slow_consumer_closed"}"#)
            .await
            >= 1.0
    );
    // The stalled stream's subscription goes; the reader's remains.
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.metric("cdc_gateway_subscriptions_active").await != 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream ends"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(stalled);
}

#[tokio::test]
async fn a_reconnecting_event_source_resumes_from_last_event_id() {
    let (_tansu, gateway, producer, topic) = start_stack(&[]).await;
    let mut first = SseClient::open(gateway.addr(), "/sse?topic=cdc.order", &[]).await;
    assert_eq!(first.next_event(WAIT).await.unwrap().0, "ack");
    for n in 0..4 {
        producer
            .send_json(&topic, None, &order(&n.to_string(), "new"))
            .await;
    }
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(first.next_event(WAIT).await.unwrap().1.unwrap());
    }
    drop(first);
    let mut again = SseClient::open(
        gateway.addr(),
        "/sse?topic=cdc.order",
        &[("Last-Event-ID", ids[1].as_str())],
    )
    .await;
    let (event, _, ack) = again.next_event(WAIT).await.unwrap();
    assert_eq!((event.as_str(), &ack["recovered"]), ("ack", &json!(true)));
    for expected in &ids[2..] {
        let (_, id, _) = again.next_event(WAIT).await.unwrap();
        assert_eq!(
            id.as_ref(),
            Some(expected),
            "the missed events, with their ids"
        );
    }
}
