//! One benchmark client: a tokio-tungstenite connection (independent of the gateway's own
//! WebSocket code) that subscribes once, then tallies every data message until told to stop.
//! A client knows from its subscription which sequence numbers it should see, so it counts
//! duplicates, strays and out-of-order messages exactly as they arrive; loss is settled at
//! the end against what Kafka acknowledged.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::scan::{self, DataFields};
use crate::workload::Mix;

/// Highest latency the histograms hold, in microseconds; larger values count as this.
pub const LATENCY_MAX_US: u64 = 120_000_000;
/// Latency precision: two significant digits (1%) keeps a client's histogram near 10 KiB.
const LATENCY_DIGITS: u8 = 2;
/// serde_json re-reads every this many data messages a client takes with the fast reader.
const CROSS_CHECK: u64 = 64;
/// How long the closing handshake may take when the bench stops.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Partitions a client tracks offsets for; a higher partition number is not checked.
const MAX_PARTITIONS: usize = 4096;

pub type Ws = WebSocketStream<TcpStream>;

/// What every client of a run shares.
pub struct Settings {
    pub url: String,
    pub addr: SocketAddr,
    /// Loopback source addresses to spread connections over (see `host::source_addresses`).
    pub sources: Option<Vec<IpAddr>>,
    pub ws_config: WebSocketConfig,
    pub connect_timeout: Duration,
    pub mix: Mix,
    pub clients: u32,
    pub run: u32,
    /// Sequence numbers this run may produce; a higher one is a stray.
    pub events: u64,
}

/// Run-wide counters the progress display and the drain wait read while clients work.
#[derive(Default)]
pub struct Counters {
    pub subscribed: AtomicU64,
    pub failed: AtomicU64,
    /// Distinct expected events received, over all clients: the run is drained when this
    /// reaches the expected total.
    pub delivered: AtomicU64,
    /// Connections that ended before the bench stopped them.
    pub ended: AtomicU64,
}

/// How a client's connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It never subscribed: the reason.
    NotConnected(String),
    /// The bench closed it at the end of the run.
    Stopped,
    /// The gateway sent a close frame.
    ServerClosed { code: u16, reason: String },
    /// The connection broke without a close frame.
    Dropped(String),
}

/// Everything one client saw.
pub struct Outcome {
    pub client: u32,
    pub tally: Tally,
    pub ending: Ending,
}

/// Per-client counts. `received = distinct + duplicates + unexpected + stray`.
#[derive(Default)]
pub struct Tally {
    /// Data messages.
    pub received: u64,
    /// Distinct events of this client's subscription.
    pub distinct: u64,
    /// Events of its subscription seen again.
    pub duplicates: u64,
    /// First deliveries whose offset is below one already seen on the same partition.
    pub out_of_order: u64,
    /// This run's events that its subscription excludes (wrong row, filter mismatch).
    pub unexpected: u64,
    /// Data messages that are not this run's events (another run, another producer).
    pub stray: u64,
    /// Error replies and messages that are not the JSON the protocol describes.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Epoch microseconds of the last distinct event received.
    pub last_receive_us: u64,
    /// Receive time minus `sent_us` of each distinct event, microseconds; allocated on the
    /// first event so idle connections cost nothing.
    pub latency: Option<Histogram<u32>>,
    /// Bit `k` set once the client's `k`-th expected event arrived (see `Mix::slot`).
    seen: Vec<u64>,
    /// Highest offset seen per partition (-1: none yet).
    last_offset: Vec<i64>,
}

/// What the serde_json path made of a message.
enum Slow {
    Data(DataFields),
    Ping,
    Other,
}

/// A server message, read only as far as the bench needs.
#[derive(Deserialize)]
struct ServerMessage<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    partition: Option<i32>,
    offset: Option<i64>,
    payload: Option<Payload>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    data: Option<EventData>,
}

/// The fields of `data` the bench itself put there.
#[derive(Deserialize)]
struct EventData {
    seq: Option<u64>,
    run: Option<u32>,
    sent_us: Option<u64>,
    /// Set in probe events only.
    partition: Option<i32>,
}

/// Runs client `client`: connects (at most as many at once as `gate` has permits), subscribes,
/// then tallies until `stop` turns true or the connection ends.
pub async fn run(
    client: u32,
    settings: Arc<Settings>,
    gate: Arc<Semaphore>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let opened = tokio::select! {
        opened = async {
            let _permit = gate.acquire().await?;
            let (topic, filters) = settings.mix.subscription(client);
            tokio::time::timeout(settings.connect_timeout, open(client, &settings, &topic, filters))
                .await
                .map_err(|_| anyhow!("no subscribe ack within {:?}", settings.connect_timeout))?
        } => opened,
        _ = stop.wait_for(|stopped| *stopped) => Err(anyhow!("stopped before subscribing")),
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(error) => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            return Outcome {
                client,
                tally: Tally::default(),
                ending: Ending::NotConnected(format!("{error:#}")),
            };
        }
    };
    counters.subscribed.fetch_add(1, Ordering::Relaxed);

    let mut tally = Tally::default();
    // Registered once, not per message: the loop below runs for every delivery.
    let stopped = stop.wait_for(|stopped| *stopped);
    tokio::pin!(stopped);
    let ending = loop {
        let next = tokio::select! {
            biased;
            _ = &mut stopped => break Ending::Stopped,
            next = ws.next() => next,
        };
        match next {
            Some(Ok(Message::Text(text))) => {
                let now = crate::workload::now_us();
                if tally.record(text.as_str(), now, client, &settings, &counters) {
                    // Answer the gateway's JSON heartbeat as a well-behaved client would.
                    let _ = ws.send(Message::text(r#"{"action":"pong"}"#)).await;
                }
            }
            Some(Ok(Message::Close(frame))) => {
                break frame.map_or(
                    Ending::ServerClosed {
                        code: 1005,
                        reason: String::new(),
                    },
                    |f| Ending::ServerClosed {
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                    },
                );
            }
            Some(Ok(_)) => {}
            Some(Err(error)) => break Ending::Dropped(error.to_string()),
            None => break Ending::Dropped("stream ended without a close frame".into()),
        }
    };
    if ending != Ending::Stopped {
        counters.ended.fetch_add(1, Ordering::Relaxed);
    }
    // Complete the closing handshake: send ours (tungstenite has already queued the echo of
    // a server close), then read until the stream ends.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if ending == Ending::Stopped {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "bench finished".into(),
            };
            let _ = ws.close(Some(frame)).await;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Outcome {
        client,
        tally,
        ending,
    }
}

/// Connects and subscribes; returns once the subscribe ack arrived.
async fn open(
    client: u32,
    settings: &Settings,
    topic: &str,
    filters: Option<serde_json::Value>,
) -> anyhow::Result<Ws> {
    let socket = match settings.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(sources) = &settings.sources {
        socket.bind(SocketAddr::new(sources[client as usize % sources.len()], 0))?;
    }
    socket.set_nodelay(true)?;
    let stream = socket.connect(settings.addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(
        settings.url.as_str(),
        stream,
        Some(settings.ws_config),
    )
    .await?;
    let mut request = serde_json::json!({"action": "subscribe", "id": 1, "topic": topic});
    if let Some(filters) = filters {
        request["filters"] = filters;
    }
    ws.send(Message::text(request.to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let reply: ServerMessage<'_> = serde_json::from_str(text.as_str())?;
                match reply.kind {
                    "ack" => return Ok(ws),
                    "error" => bail!(
                        "subscribe refused: {} {}",
                        reply.code.unwrap_or_default(),
                        reply.message.unwrap_or_default()
                    ),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => bail!(
                "closed before the subscribe ack: {}",
                frame.map_or("no close frame".into(), |f| format!(
                    "{} {}",
                    u16::from(f.code),
                    f.reason
                ))
            ),
            Some(Ok(_)) => {}
            Some(Err(error)) => return Err(error.into()),
            None => bail!("connection ended before the subscribe ack"),
        }
    }
}

impl Tally {
    /// Counts one text message received at `now_us`; true when it was a JSON heartbeat
    /// that wants a pong.
    fn record(
        &mut self,
        text: &str,
        now_us: u64,
        client: u32,
        settings: &Settings,
        counters: &Counters,
    ) -> bool {
        let fast = scan::data_message(text);
        // The fast reader does not check the JSON grammar: serde_json reads the first message
        // and every CROSS_CHECK-th one besides, and any disagreement is an error.
        let checked = fast.is_none() || self.received % CROSS_CHECK == 0;
        let fields = match (fast, checked) {
            (Some(fields), false) => fields,
            _ => match self.read_slowly(text) {
                Slow::Data(fields) => {
                    if fast.is_some_and(|fast| fast != fields) {
                        self.error(format!(
                            "the fast reader read {fast:?} where serde_json read {fields:?}: {text:.200}"
                        ));
                    }
                    fields
                }
                Slow::Ping => return true,
                // read_slowly counted an unreadable message as an error.
                Slow::Other => return false,
            },
        };
        self.received += 1;
        let Some((seq, sent_us)) = (fields.run == Some(settings.run))
            .then(|| Some((fields.seq?, fields.sent_us?)))
            .flatten()
            .filter(|&(seq, _)| seq < settings.events)
        else {
            self.stray += 1;
            return false;
        };
        let Some(slot) = settings.mix.slot(client, settings.clients, seq) else {
            self.unexpected += 1;
            return false;
        };
        let (word, bit) = ((slot / 64) as usize, 1u64 << (slot % 64));
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        self.last_receive_us = now_us;
        if let (Some(partition), Some(offset)) = (fields.partition, fields.offset) {
            let partition = partition.clamp(0, MAX_PARTITIONS as i32) as usize;
            if partition < MAX_PARTITIONS {
                if partition >= self.last_offset.len() {
                    self.last_offset.resize(partition + 1, -1);
                }
                if offset < self.last_offset[partition] {
                    self.out_of_order += 1;
                }
                self.last_offset[partition] = self.last_offset[partition].max(offset);
            }
        }
        let latency = self.latency.get_or_insert_with(|| {
            Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_DIGITS)
                .expect("valid histogram bounds")
        });
        latency.saturating_record(now_us.saturating_sub(sent_us).clamp(1, LATENCY_MAX_US));
        false
    }

    /// Parses a message the fast reader declined, with serde_json.
    fn read_slowly(&mut self, text: &str) -> Slow {
        let message: ServerMessage<'_> = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(error) => {
                self.error(format!("unreadable message ({error}): {text:.200}"));
                return Slow::Other;
            }
        };
        match message.kind {
            "data" => {
                let data = message.payload.and_then(|p| p.data);
                Slow::Data(DataFields {
                    partition: message.partition,
                    offset: message.offset,
                    seq: data.as_ref().and_then(|d| d.seq),
                    run: data.as_ref().and_then(|d| d.run),
                    sent_us: data.as_ref().and_then(|d| d.sent_us),
                })
            }
            "ping" => Slow::Ping,
            "error" => {
                let detail = format!(
                    "error reply: {} {}",
                    message.code.as_deref().unwrap_or_default(),
                    message.message.as_deref().unwrap_or_default()
                );
                self.error(detail);
                Slow::Other
            }
            _ => Slow::Other,
        }
    }

    fn error(&mut self, detail: String) {
        self.errors += 1;
        self.first_error.get_or_insert(detail);
    }

    /// Whether this client got exactly its `expected` events, each once, in order, with
    /// nothing else.
    pub fn exact(&self, expected: u64) -> bool {
        self.distinct == expected
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.unexpected == 0
            && self.stray == 0
            && self.errors == 0
    }
}

/// A connection subscribed to the probe entity: confirms the gateway consumes past a point.
pub struct Probe {
    ws: Ws,
}

impl Probe {
    pub async fn open(settings: &Settings) -> anyhow::Result<Self> {
        let topic = format!("cdc.{}", crate::workload::PROBE_ENTITY);
        let ws = tokio::time::timeout(
            settings.connect_timeout,
            open(u32::MAX, settings, &topic, None),
        )
        .await
        .map_err(|_| anyhow!("probe connection: no subscribe ack"))??;
        Ok(Self { ws })
    }

    /// Waits up to `within` for probe events of `run`, striking their partitions off `missing`;
    /// returns early once none is missing.
    pub async fn wait(
        &mut self,
        run: u32,
        missing: &mut BTreeSet<i32>,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        while !missing.is_empty() {
            let message = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_elapsed) => return Ok(()),
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => bail!("probe connection failed: {error}"),
                Ok(None) => bail!("probe connection ended"),
            };
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(message) = serde_json::from_str::<ServerMessage<'_>>(text.as_str()) else {
                continue;
            };
            if let Some(data) = message.payload.and_then(|p| p.data) {
                if let (Some(partition), Some(true)) = (data.partition, data.run.map(|r| r == run))
                {
                    missing.remove(&partition);
                }
            }
        }
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let _ = self.ws.close(None).await;
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}
