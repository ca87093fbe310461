//! The checker's clients: WebSocket (tokio-tungstenite) and SSE (our raw reader) sessions
//! that subscribe at random moments, drop their connection, and resume with the position they
//! kept on whichever replica is alive. They check nothing themselves: each records every
//! subscription period (what it asked, the ack, every message) for the verdict afterwards.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::sse::SseStream;

/// `"<source topic>:<partition>"` -> offset, as on the wire.
pub type Position = BTreeMap<String, i64>;

/// How long a client keeps reading in the final phase after the last message before it
/// decides that the gateway has nothing more for it.
const DRAIN_IDLE: Duration = Duration::from_secs(3);
/// The longest the final phase reads.
const DRAIN_CAP: Duration = Duration::from_secs(25);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
}

/// A gateway replica clients may connect to.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub label: String,
    pub addr: SocketAddr,
}

/// What the clients share with the controller: the replicas that are up, and the signal that
/// the run is over (every client then resumes once more and reads until the stream is idle).
#[derive(Clone)]
pub struct Stage {
    pub replicas: Arc<Mutex<Vec<Endpoint>>>,
    pub finale: CancellationToken,
}

impl Stage {
    fn pick(&self, rng: &mut StdRng) -> Option<Endpoint> {
        self.replicas.lock().unwrap().choose(rng).cloned()
    }
}

/// A message carrying a source record, as received.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub source: String,
    pub partition: i64,
    pub offset: i64,
    pub payload: Value,
    pub snapshot: bool,
    pub leave: bool,
    /// The SSE `id:` of the entry.
    pub sse_id: Option<String>,
}

impl Delivery {
    pub fn key(&self) -> String {
        format!("{}:{}", self.source, self.partition)
    }
}

/// One subscribe request and everything that arrived for it until the connection ended.
#[derive(Debug, Default)]
pub struct Period {
    pub gateway: String,
    /// The position the client resumed from.
    pub since: Option<Position>,
    pub snapshot: bool,
    pub ack: Option<Value>,
    pub deliveries: Vec<Delivery>,
    /// How many deliveries preceded the `synced` message.
    pub synced_at: Option<usize>,
    /// Protocol irregularities seen while reading (error replies, data before the ack, ...).
    pub anomalies: Vec<String>,
    /// The client read until the gateway had been silent for a while, with nothing left to
    /// produce: everything up to the ack's position has arrived.
    pub drained: bool,
    /// How the connection ended.
    pub end: String,
    /// How long the connection lasted.
    pub lasted: Duration,
}

/// Every period of one subscription (one topic of one client).
#[derive(Debug)]
pub struct SubLog {
    pub client: usize,
    pub transport: Transport,
    pub topic: String,
    pub filters: Option<Value>,
    pub periods: Vec<Period>,
}

impl SubLog {
    pub fn describe(&self) -> String {
        let filters = self
            .filters
            .as_ref()
            .map_or(String::new(), |f| format!(" filters {f}"));
        format!(
            "client {} ({:?}) {}{filters}",
            self.client, self.transport, self.topic
        )
    }
}

pub struct ClientPlan {
    pub id: usize,
    pub transport: Transport,
    /// Topics with their filters (an SSE stream applies one filter to all its topics).
    pub subs: Vec<(String, Option<Value>)>,
    /// When the client first connects, from the start of the live phase.
    pub start: Duration,
    pub rng: StdRng,
}

/// Runs one client until the final phase is over; returns what each subscription saw.
pub async fn run(mut plan: ClientPlan, stage: Stage) -> Vec<SubLog> {
    let mut logs: Vec<SubLog> = plan
        .subs
        .iter()
        .map(|(topic, filters)| SubLog {
            client: plan.id,
            transport: plan.transport,
            topic: topic.clone(),
            filters: filters.clone(),
            periods: Vec::new(),
        })
        .collect();
    tokio::select! {
        _ = tokio::time::sleep(plan.start) => {}
        _ = stage.finale.cancelled() => {}
    }
    let mut kept = Kept::new(logs.len());
    let mut final_attempts = 0;
    loop {
        let finale = stage.finale.is_cancelled();
        let Some(endpoint) = stage.pick(&mut plan.rng) else {
            if finale {
                final_attempts += 1;
                if final_attempts > 20 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let session = Session {
            endpoint,
            // In the final phase too, now and then: a snapshot of the last state is checked
            // against the whole log.
            snapshot: plan.rng.gen_bool(if finale { 0.15 } else { 0.2 }),
            hold: (!finale).then(|| Duration::from_millis(plan.rng.gen_range(700..5000))),
            graceful: plan.rng.gen_bool(0.5),
            finale: stage.finale.clone(),
        };
        let connected = match plan.transport {
            Transport::Ws => session.ws(&mut logs, &mut kept).await,
            Transport::Sse => session.sse(&mut logs, &mut kept).await,
        };
        if finale {
            final_attempts += 1;
            if connected || final_attempts > 20 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let pause = Duration::from_millis(plan.rng.gen_range(0..700));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stage.finale.cancelled() => {}
        }
    }
    logs
}

/// The position a client resumes from. A WebSocket client keeps one per subscription; an SSE
/// stream keeps one for the whole stream, as the last `id:` it saw or, before it saw any, the
/// position of its ack (sent as `since=`).
struct Kept {
    per_sub: Vec<Option<Position>>,
    stream: Option<Position>,
    /// The stream's last `id:`, resent verbatim as `Last-Event-ID`.
    last_event_id: Option<String>,
}

impl Kept {
    fn new(subs: usize) -> Self {
        Kept {
            per_sub: vec![None; subs],
            stream: None,
            last_event_id: None,
        }
    }
}

/// The ack's position, its malformed entries skipped (the verdict reports them).
pub fn ack_position(ack: &Value) -> Position {
    ack["position"]
        .as_object()
        .map(|object| {
            object
                .iter()
                .filter_map(|(key, offset)| Some((key.clone(), offset.as_i64()?)))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads an SSE `id` (`topic:partition:offset,...`) into a position.
pub fn parse_event_id(id: &str) -> Option<Position> {
    id.split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (key, offset) = entry.rsplit_once(':')?;
            Some((key.to_owned(), offset.parse().ok()?))
        })
        .collect()
}

pub fn format_event_id(position: &Position) -> String {
    position
        .iter()
        .map(|(key, offset)| format!("{key}:{offset}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A data message's delivery, or why it is malformed.
fn delivery(message: &Value, sse_id: Option<String>) -> Result<Delivery, String> {
    let source = message["source"]
        .as_str()
        .ok_or_else(|| format!("data message without a source topic: {message}"))?;
    let partition = message["partition"]
        .as_i64()
        .ok_or_else(|| format!("data message without a partition: {message}"))?;
    let offset = message["offset"]
        .as_i64()
        .ok_or_else(|| format!("data message without an offset: {message}"))?;
    Ok(Delivery {
        source: source.to_owned(),
        partition,
        offset,
        payload: message["payload"].clone(),
        snapshot: message["snapshot"] == true,
        leave: message["leave"] == true,
        sse_id,
    })
}

/// The key a client raises its position under: `source:partition`, or the bare partition
/// when a (pre-v1) gateway names no source.
fn raise_key(message: &Value) -> Option<(String, i64)> {
    let partition = message["partition"].as_i64()?;
    let offset = message["offset"].as_i64()?;
    let key = match message["source"].as_str() {
        Some(source) => format!("{source}:{partition}"),
        None => partition.to_string(),
    };
    Some((key, offset))
}

fn raise(position: &mut Position, key: String, offset: i64) {
    let entry = position.entry(key).or_insert(offset);
    *entry = (*entry).max(offset);
}

/// One connection of one client.
struct Session {
    endpoint: Endpoint,
    snapshot: bool,
    /// How long to stay connected; `None` in the final phase (read until idle).
    hold: Option<Duration>,
    /// Close with a close frame (else just drop the socket).
    graceful: bool,
    finale: CancellationToken,
}

/// Why a read loop stopped.
enum Stop {
    /// The hold time passed, or the final phase began.
    Done,
    /// Final phase: the gateway was silent for [`DRAIN_IDLE`].
    Idle,
    /// The connection ended or failed.
    Ended(String),
}

impl Session {
    fn deadline(&self) -> Instant {
        Instant::now() + self.hold.unwrap_or(DRAIN_CAP)
    }

    /// Waits for the next item, the end of the hold time or idleness, or the final phase.
    async fn wait<T>(
        &self,
        deadline: Instant,
        idle_since: Instant,
        next: impl std::future::Future<Output = T>,
    ) -> Result<T, Stop> {
        let wake = match self.hold {
            Some(_) => deadline,
            None => deadline.min(idle_since + DRAIN_IDLE),
        };
        let draining = self.hold.is_none();
        tokio::select! {
            _ = self.finale.cancelled(), if !draining => Err(Stop::Done),
            item = tokio::time::timeout_at(wake, next) => match item {
                Ok(item) => Ok(item),
                Err(_) if draining && Instant::now() < deadline => Err(Stop::Idle),
                Err(_) => Err(Stop::Done),
            },
        }
    }

    fn finish(periods: &mut [&mut Period], stop: &Stop, began: Instant) {
        for period in periods.iter_mut() {
            period.lasted = began.elapsed();
            period.drained = matches!(stop, Stop::Idle);
            period.end = match stop {
                Stop::Done => "client closed".into(),
                Stop::Idle => "client closed after draining".into(),
                Stop::Ended(why) => why.clone(),
            };
        }
    }

    /// A WebSocket connection carrying every subscription of the client. False if it never
    /// connected.
    async fn ws(&self, logs: &mut [SubLog], kept: &mut Kept) -> bool {
        let url = format!("ws://{}/ws", self.endpoint.addr);
        let connect = tokio_tungstenite::connect_async(url);
        let Ok(Ok((mut ws, _))) = tokio::time::timeout(CONNECT_TIMEOUT, connect).await else {
            return false;
        };
        let began = Instant::now();
        let mut periods: Vec<Period> = Vec::new();
        for (index, log) in logs.iter().enumerate() {
            let since = kept.per_sub[index].clone();
            let mut request = Map::new();
            request.insert("action".into(), "subscribe".into());
            request.insert("topic".into(), log.topic.clone().into());
            request.insert("id".into(), (index + 1).into());
            if let Some(filters) = &log.filters {
                request.insert("filters".into(), filters.clone());
            }
            if let Some(since) = &since {
                request.insert("since".into(), json!(since));
            }
            if self.snapshot {
                request.insert("snapshot".into(), true.into());
            }
            periods.push(Period {
                gateway: self.endpoint.label.clone(),
                since,
                snapshot: self.snapshot,
                ..Period::default()
            });
            let text = Value::Object(request).to_string();
            if ws.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let deadline = self.deadline();
        let mut idle_since = Instant::now();
        let stop = loop {
            let message = match self.wait(deadline, idle_since, ws.next()).await {
                Ok(message) => message,
                Err(stop) => break stop,
            };
            idle_since = Instant::now();
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    break Stop::Ended(format!(
                        "server closed: {}",
                        frame.map_or("no frame".into(), |f| format!("{} {}", f.code, f.reason))
                    ))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => break Stop::Ended(format!("read error: {e}")),
                None => break Stop::Ended("connection ended".into()),
            };
            let message: Value = match serde_json::from_str(&text) {
                Ok(message) => message,
                Err(e) => {
                    periods[0].anomalies.push(format!("not JSON ({e}): {text}"));
                    continue;
                }
            };
            let by_topic = logs.iter().position(|log| message["topic"] == log.topic);
            match message["type"].as_str() {
                Some("ping") => {
                    let pong = json!({"action": "pong"}).to_string();
                    let _ = ws.send(Message::text(pong)).await;
                }
                Some("pong") => {}
                Some("ack") if message["action"] == "subscribe" => {
                    let index = message["id"].as_u64().map(|id| id as usize);
                    match index.filter(|index| (1..=periods.len()).contains(index)) {
                        Some(index) => {
                            let index = index - 1;
                            let period = &mut periods[index];
                            if period.ack.is_some() {
                                period.anomalies.push(format!("a second ack: {message}"));
                                continue;
                            }
                            let recovered = message["recovered"] == true;
                            let resumed = period.since.is_some() && recovered && !self.snapshot;
                            let position = ack_position(&message);
                            let kept = &mut kept.per_sub[index];
                            match kept.as_mut().filter(|_| resumed) {
                                // Keep the position resumed from: the replay may still be
                                // under way; the ack only adds partitions it lacked.
                                Some(kept) => {
                                    for (key, offset) in position {
                                        kept.entry(key).or_insert(offset);
                                    }
                                }
                                None => *kept = Some(position),
                            }
                            period.ack = Some(message);
                        }
                        None => periods[0]
                            .anomalies
                            .push(format!("an ack for no request: {message}")),
                    }
                }
                Some("data") => {
                    let Some(index) = by_topic else {
                        periods[0]
                            .anomalies
                            .push(format!("data for a topic not subscribed: {message}"));
                        continue;
                    };
                    let period = &mut periods[index];
                    if period.ack.is_none() {
                        period
                            .anomalies
                            .push(format!("data before the ack: {message}"));
                    }
                    if let Some((key, offset)) = raise_key(&message) {
                        raise(
                            kept.per_sub[index].get_or_insert_with(Position::new),
                            key,
                            offset,
                        );
                    }
                    match delivery(&message, None) {
                        Ok(delivery) => period.deliveries.push(delivery),
                        Err(why) => period.anomalies.push(why),
                    }
                }
                Some("synced") => match by_topic {
                    Some(index) => {
                        let period = &mut periods[index];
                        if period.synced_at.is_some() {
                            period.anomalies.push(format!("a second synced: {message}"));
                        }
                        period.synced_at = Some(period.deliveries.len());
                    }
                    None => periods[0]
                        .anomalies
                        .push(format!("synced for a topic not subscribed: {message}")),
                },
                _ => {
                    let index = message["id"]
                        .as_u64()
                        .map(|id| id as usize)
                        .filter(|id| (1..=periods.len()).contains(id))
                        .map_or(0, |id| id - 1);
                    periods[index]
                        .anomalies
                        .push(format!("unexpected message: {message}"));
                }
            }
        };
        if self.graceful {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        drop(ws);
        let mut refs: Vec<&mut Period> = periods.iter_mut().collect();
        Self::finish(&mut refs, &stop, began);
        for (log, period) in logs.iter_mut().zip(periods) {
            log.periods.push(period);
        }
        true
    }

    /// An SSE stream over every topic of the client. False if it never connected.
    async fn sse(&self, logs: &mut [SubLog], kept: &mut Kept) -> bool {
        let mut target = String::from("/sse?");
        for log in logs.iter() {
            target.push_str(&format!("topic={}&", log.topic));
        }
        if let Some(filters) = &logs[0].filters {
            let encoded: String =
                form_urlencoded::byte_serialize(filters.to_string().as_bytes()).collect();
            target.push_str(&format!("filters={encoded}&"));
        }
        if self.snapshot {
            target.push_str("snapshot=1&");
        }
        let mut headers = Vec::new();
        let since = match (&kept.last_event_id, &kept.stream) {
            (Some(id), _) => {
                headers.push(("Last-Event-ID", id.as_str()));
                parse_event_id(id)
            }
            (None, Some(position)) => {
                target.push_str(&format!("since={}&", format_event_id(position)));
                Some(position.clone())
            }
            (None, None) => None,
        };
        let target = target.trim_end_matches('&').to_owned();
        let open = SseStream::open(self.endpoint.addr, &target, &headers);
        let Ok(Ok(mut stream)) = tokio::time::timeout(CONNECT_TIMEOUT, open).await else {
            return false;
        };
        let began = Instant::now();
        let mut periods: Vec<Period> = logs
            .iter()
            .map(|_| Period {
                gateway: self.endpoint.label.clone(),
                since: since.clone(),
                snapshot: self.snapshot,
                ..Period::default()
            })
            .collect();
        let stop = if stream.status != 200 {
            Stop::Ended(format!("HTTP {}", stream.status))
        } else {
            self.sse_read(&mut stream, logs, kept, &mut periods).await
        };
        if let Stop::Ended(why) = &stop {
            if stream.status != 200 {
                periods[0]
                    .anomalies
                    .push(format!("the stream was refused: {why}"));
            }
        }
        drop(stream);
        let mut refs: Vec<&mut Period> = periods.iter_mut().collect();
        Self::finish(&mut refs, &stop, began);
        for (log, period) in logs.iter_mut().zip(periods) {
            log.periods.push(period);
        }
        true
    }

    async fn sse_read(
        &self,
        stream: &mut SseStream,
        logs: &[SubLog],
        kept: &mut Kept,
        periods: &mut [Period],
    ) -> Stop {
        let deadline = self.deadline();
        let mut idle_since = Instant::now();
        let mut saw_id = false;
        let mut acked = false;
        loop {
            let event = match self.wait(deadline, idle_since, stream.next_event()).await {
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => return Stop::Ended("stream ended".into()),
                Ok(Err(e)) => return Stop::Ended(format!("read error: {e}")),
                Err(stop) => return stop,
            };
            idle_since = Instant::now();
            let message = event.data;
            let index = logs.iter().position(|log| message["topic"] == log.topic);
            let Some(index) = index else {
                periods[0].anomalies.push(format!(
                    "event {} for no topic of the stream: {message}",
                    event.event
                ));
                continue;
            };
            let period = &mut periods[index];
            match event.event.as_str() {
                "ack" => {
                    if period.ack.is_some() {
                        period.anomalies.push(format!("a second ack: {message}"));
                        continue;
                    }
                    let resumed =
                        period.since.is_some() && message["recovered"] == true && !self.snapshot;
                    if !resumed && !saw_id {
                        // One stream position for all its topics: where the acks differ,
                        // the lower offset loses nothing.
                        let position = ack_position(&message);
                        match kept.stream.as_mut().filter(|_| acked) {
                            Some(kept) => {
                                for (key, offset) in position {
                                    let entry = kept.entry(key).or_insert(offset);
                                    *entry = (*entry).min(offset);
                                }
                            }
                            None => kept.stream = Some(position),
                        }
                        kept.last_event_id = None;
                    }
                    acked = true;
                    period.ack = Some(message);
                }
                "data" => {
                    if period.ack.is_none() {
                        period
                            .anomalies
                            .push(format!("data before the ack: {message}"));
                    }
                    match &event.id {
                        Some(id) => {
                            saw_id = true;
                            kept.last_event_id = Some(id.clone());
                        }
                        // Snapshot rows carry no id until every topic's `synced` (protocol
                        // 7.4): a stream dropped mid-snapshot then snapshots again.
                        None if message["snapshot"] == true && period.synced_at.is_none() => {}
                        None => period
                            .anomalies
                            .push(format!("an event: data without id: {message}")),
                    }
                    match delivery(&message, event.id) {
                        Ok(delivery) => period.deliveries.push(delivery),
                        Err(why) => period.anomalies.push(why),
                    }
                }
                "synced" => {
                    if period.synced_at.is_some() {
                        period.anomalies.push(format!("a second synced: {message}"));
                    }
                    // The last topic's `synced` carries the stream's position.
                    if let Some(id) = &event.id {
                        saw_id = true;
                        kept.last_event_id = Some(id.clone());
                    }
                    period.synced_at = Some(period.deliveries.len());
                }
                other => period
                    .anomalies
                    .push(format!("unexpected event {other}: {message}")),
            }
        }
    }
}
