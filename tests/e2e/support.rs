//! Real parts for end-to-end tests: a tansu broker on a free loopback port, the gateway binary
//! as a child process, an rdkafka producer, and a tokio-tungstenite WebSocket client (an
//! implementation independent of the server's). Every process is killed when its handle drops.
//! Both test binaries use this file (tests/inprocess takes its clients and producer), so what
//! one of them does not call is not dead code.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn log_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("cdc-gateway-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A tansu broker with in-memory storage.
pub struct Tansu {
    pub port: u16,
    /// The port clients are told to use (a [`Relay`]'s, or `port` itself).
    advertised: u16,
    child: Option<Child>,
}

impl Tansu {
    pub fn binary() -> PathBuf {
        if let Ok(path) = std::env::var("CDC_GATEWAY_TANSU") {
            return PathBuf::from(path);
        }
        let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
        let path = PathBuf::from(home).join(".cache/cdc-gateway/tansu/bin/tansu");
        assert!(
            path.exists(),
            "tansu is not installed: run scripts/install-tansu.sh (or scripts/test.sh)"
        );
        path
    }

    pub fn start() -> Self {
        let port = free_port();
        Self::start_advertising(port, port)
    }

    /// A broker that tells clients to reach it on `advertised` (where a [`Relay`] listens).
    pub fn start_advertising(port: u16, advertised: u16) -> Self {
        let mut tansu = Tansu {
            port,
            advertised,
            child: None,
        };
        tansu.restart();
        tansu
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the broker process: `STOP` hangs it with its
    /// connections open, as an overloaded or frozen broker would.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Starts (again) on the current port. Memory storage starts empty.
    pub fn restart(&mut self) {
        self.stop();
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let log =
            std::fs::File::create(log_dir().join(format!("tansu-{}.log", self.port))).unwrap();
        let child = Command::new(Self::binary())
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &advertised,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu starts");
        self.child = Some(child);
        assert!(
            wait_for_port(self.port, WAIT),
            "tansu did not open port {}",
            self.port
        );
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .expect("create_topics");
        for result in results {
            if let Err((topic, code)) = result {
                assert_eq!(
                    code,
                    rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "creating {topic}"
                );
            }
        }
    }

    pub fn producer(&self) -> Producer {
        Producer::new(&self.brokers())
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP relay in front of a broker that a test can cut (every connection dropped, the port
/// closed) and restore: clients see the broker vanish and come back while the broker keeps
/// its topics and groups. (Restarting tansu itself would lose its memory storage, and it
/// cannot rebind its port while the killed broker's sockets sit in TIME_WAIT.)
pub struct Relay {
    port: u16,
    target: u16,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Relay {
    pub fn start(port: u16, target: u16) -> Self {
        let mut relay = Relay {
            port,
            target,
            task: None,
        };
        relay.restore();
        relay
    }

    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub fn restore(&mut self) {
        self.cut();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(([127, 0, 0, 1], self.port).into()).unwrap();
        let listener = socket.listen(1024).unwrap();
        let target = self.target;
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every relayed connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

pub struct Producer {
    producer: FutureProducer,
}

impl Producer {
    pub fn new(brokers: &str) -> Self {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "5")
            .set("max.in.flight.requests.per.connection", "1")
            .create()
            .unwrap();
        Producer { producer }
    }

    pub async fn send(&self, topic: &str, key: Option<&str>, value: Option<&str>) {
        self.send_to(topic, None, key, value).await
    }

    pub async fn send_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&str>,
        value: Option<&str>,
    ) {
        let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic);
        if let Some(partition) = partition {
            record = record.partition(partition);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(value) = value {
            record = record.payload(value);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    /// Produces many records at once (in order: one partition, no retries) and waits for all.
    pub async fn send_many(&self, topic: &str, values: &[String]) {
        let sends = values.iter().map(|value| {
            let record: FutureRecord<'_, str, str> =
                FutureRecord::to(topic).payload(value.as_str());
            self.producer.send(record, Duration::from_secs(30))
        });
        for result in futures_util::future::join_all(sends).await {
            result.map_err(|(e, _)| e).expect("produce");
        }
    }

    /// Produces many keyed records at once (each key's records in order on its partition)
    /// and waits for all.
    pub async fn send_keyed_many(&self, topic: &str, records: &[(String, String)]) {
        for chunk in records.chunks(2000) {
            let sends = chunk.iter().map(|(key, value)| {
                let record: FutureRecord<'_, str, str> = FutureRecord::to(topic)
                    .key(key.as_str())
                    .payload(value.as_str());
                self.producer.send(record, Duration::from_secs(30))
            });
            for result in futures_util::future::join_all(sends).await {
                result.map_err(|(e, _)| e).expect("produce");
            }
        }
    }

    pub async fn send_json(&self, topic: &str, key: Option<&str>, value: &Value) {
        self.send(topic, key, Some(&value.to_string())).await
    }

    /// An update of order `id` to `data` in the simple envelope, without a `before` image.
    pub async fn update_order(&self, topic: &str, id: &str, data: Value) {
        let value = order(id, "update", data, Value::Null);
        self.send_json(topic, None, &value).await
    }

    pub async fn consume_all(
        &self,
        brokers: &str,
        topic: &str,
        expected: usize,
    ) -> Vec<rdkafka::message::OwnedMessage> {
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::{Offset, TopicPartitionList};
        // Every partition assigned from its start: no group to join, nothing committed.
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("reader-{}", free_port()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("topic metadata");
        let mut partitions = TopicPartitionList::new();
        for partition in metadata.topics()[0].partitions() {
            partitions
                .add_partition_offset(topic, partition.id(), Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&partitions).unwrap();
        let mut out = Vec::new();
        while out.len() < expected {
            let message = tokio::time::timeout(WAIT, consumer.recv())
                .await
                .expect("record within the wait")
                .unwrap();
            out.push(message.detach());
        }
        out
    }
}

/// The gateway binary the tests start: this build's, or `CDC_TEST_GATEWAY_BINARY` (a copy
/// kept aside, where several worktrees share one target directory).
pub fn gateway_binary() -> PathBuf {
    std::env::var_os("CDC_TEST_GATEWAY_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cdc-gateway")))
}

/// The gateway binary, started with the given flags.
pub struct Gateway {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Gateway {
    pub fn spawn(brokers: &str, source_topic: &str, extra: &[&str]) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(gateway_binary());
        if !extra.contains(&"--group-id") {
            command.args(["--group-id", &format!("gw-test-{port}")]);
        }
        if !extra.contains(&"--auto-offset-reset") {
            command.args(["--auto-offset-reset", "earliest"]);
        }
        command
            .args([
                "--brokers",
                brokers,
                "--source-topics",
                source_topic,
                "--listen",
                &listen,
            ])
            .args([
                "--stats-interval",
                "1s",
                "--log-level",
                "info,cdc_gateway=debug",
            ])
            .args(extra);
        Self::launch(command, port)
    }

    /// Spawns the binary configured by `CDC_GATEWAY_*` variables alone, as a container would
    /// run it: no flags, none of the test's own `CDC_GATEWAY_*` variables, and
    /// `CDC_GATEWAY_LISTEN` replaced by a free loopback port.
    pub fn spawn_with_env(vars: &[(String, String)]) -> Self {
        let port = free_port();
        let mut command = Command::new(gateway_binary());
        for (name, _) in std::env::vars() {
            if name.starts_with("CDC_GATEWAY_") {
                command.env_remove(name);
            }
        }
        command
            .envs(vars.iter().map(|(name, value)| (name, value)))
            .env("CDC_GATEWAY_LISTEN", format!("127.0.0.1:{port}"));
        Self::launch(command, port)
    }

    fn launch(mut command: Command, port: u16) -> Self {
        let log = log_dir().join(format!("gateway-{port}.log"));
        let child = command
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("gateway starts");
        Gateway {
            port,
            child: Some(child),
            log,
        }
    }

    /// The process id, e.g. to read its memory in /proc.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Resident memory now (`VmRSS` of /proc/<pid>/status), in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS in /proc/<pid>/status")
            * 1024
    }

    /// Spawns and waits until /readyz answers 200.
    pub async fn start(brokers: &str, source_topic: &str, extra: &[&str]) -> Self {
        let gateway = Self::spawn(brokers, source_topic, extra);
        gateway.wait_ready(true).await;
        gateway
    }

    pub async fn wait_ready(&self, ready: bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let want = if ready { 200 } else { 503 };
        loop {
            if let Ok((status, _)) = http_get(self.addr(), "/readyz").await {
                if status == want {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "readyz never answered {want}; log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        assert!(Command::new("kill")
            .args(["-s", signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit; returns its status code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "gateway did not exit within {within:?}; log:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Endpoint for Gateway {
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if std::thread::panicking() {
                eprintln!(
                    "--- gateway log ({}) ---\n{}",
                    self.log.display(),
                    self.log_tail()
                );
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A gateway a test talks to: a child process here, or one running in the test process (the
/// in-process tier).
#[allow(async_fn_in_trait)]
pub trait Endpoint {
    fn addr(&self) -> SocketAddr;

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr())
    }

    async fn metrics(&self) -> String {
        http_get(self.addr(), "/metrics").await.expect("metrics").1
    }

    /// The value of one series, e.g. `cdc_gateway_drops_total{reason="queue_full"}`; 0 if absent.
    async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

pub fn metric_value(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// A plain HTTP/1.1 GET; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    })
    .await
    .unwrap()
}

pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking the gateway protocol.
pub struct Client {
    pub ws: WsStream,
}

impl Client {
    pub async fn connect(gateway: &impl Endpoint) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(gateway.ws_url())
            .await
            .expect("WebSocket connects");
        Client { ws }
    }

    /// A client with a tiny socket receive buffer: when it stops reading, the gateway's
    /// queue for it fills quickly instead of the kernel buffering megabytes.
    pub async fn connect_small_buffer(gateway: &impl Endpoint) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = socket.connect(gateway.addr()).await.unwrap();
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (ws, _) = tokio_tungstenite::client_async(gateway.ws_url(), stream)
            .await
            .expect("WebSocket connects");
        Client { ws }
    }

    pub async fn send(&mut self, message: Value) {
        self.ws
            .send(Message::text(message.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next JSON message, skipping server heartbeats. Panics on close or timeout.
    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT)
            .await
            .expect("a message within the wait")
    }

    pub async fn recv_within(&mut self, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    let value: Value = serde_json::from_str(&text).expect("server sends JSON");
                    if value["type"] != "ping" {
                        return Some(value);
                    }
                }
                Some(Ok(Message::Close(frame))) => panic!("connection closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("read error: {e}"),
                None => panic!("stream ended"),
            }
        }
    }

    /// The next `data` message (acks and errors in between are not expected).
    pub async fn data(&mut self) -> Value {
        let message = self.recv().await;
        assert_eq!(message["type"], "data", "expected data, got {message}");
        message
    }

    pub async fn subscribe(&mut self, topic: &str, filters: Value) -> Value {
        self.send(serde_json::json!({"action": "subscribe", "topic": topic, "filters": filters}))
            .await;
        let ack = self.recv().await;
        assert_eq!(ack["type"], "ack", "subscribe {topic}: {ack}");
        ack
    }

    /// Asserts nothing but heartbeats arrives for `within`.
    pub async fn expect_silence(&mut self, within: Duration) {
        if let Some(message) = self.recv_within(within).await {
            panic!("expected no message, got {message}");
        }
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("close within the wait")
            {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string())
                }
                Some(Ok(Message::Close(None))) => return (1005, String::new()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }
}

/// What most tests start from: a broker, a gateway reading a fresh topic (ready), a producer
/// and the topic's name.
pub type Stack = (Tansu, Gateway, Producer, String);

/// A fresh broker with a new single-partition source topic, a gateway reading it (ready),
/// and a producer: what most end-to-end tests start from.
pub async fn start_stack(extra: &[&str]) -> Stack {
    let tansu = Tansu::start();
    let topic = unique("cdc-events");
    tansu.create_topic(&topic, 1).await;
    let gateway = Gateway::start(&tansu.brokers(), &topic, extra).await;
    let producer = tansu.producer();
    (tansu, gateway, producer, topic)
}

/// A change of one order in the simple envelope: the event most tests produce.
pub fn order(id: &str, operation: &str, data: Value, before: Value) -> Value {
    serde_json::json!({"entity_type": "order", "entity_id": id, "operation": operation,
                       "data": data, "before": before})
}

/// A unique topic name for one test.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), free_port())
}

#[allow(unused_imports)] // The deploy tests read no event stream.
pub use sse_reader::{Item, SseClient};

/// A Server-Sent Events reader over a raw socket (HTTP/1.1 with a chunked body), independent
/// of the gateway's code and of any SSE library.
mod sse_reader {
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde_json::Value;
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;

    use super::WAIT;

    /// One item of an event stream.
    #[derive(Debug, Clone, PartialEq)]
    pub enum Item {
        Event {
            event: String,
            id: Option<String>,
            data: String,
        },
        Comment(String),
    }

    pub struct SseClient {
        reader: BufReader<TcpStream>,
        pub status: u16,
        headers: Vec<(String, String)>,
        /// Decoded body text not yet parsed into items.
        text: String,
        ended: bool,
    }

    impl SseClient {
        pub async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Self {
            Self::open_on(
                TcpStream::connect(addr).await.unwrap(),
                addr,
                target,
                headers,
            )
            .await
        }

        /// With a 4 KiB receive buffer, so that a client that stops reading fills up quickly.
        pub async fn open_small_buffer(addr: SocketAddr, target: &str) -> Self {
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

        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }

        /// The JSON body of a refusal (sent with a Content-Length).
        pub async fn error_body(mut self) -> Value {
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
        pub async fn next(&mut self, within: Duration) -> Option<Item> {
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
        pub async fn next_event(
            &mut self,
            within: Duration,
        ) -> Option<(String, Option<String>, Value)> {
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
}
