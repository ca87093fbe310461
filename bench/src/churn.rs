//! Connection churn (scenario f): while the steady clients take the events, a driver opens
//! new connections at a target rate. Each one connects, subscribes to `cdc.order` with
//! `"snapshot": true`, reads the ack, the snapshot rows and `synced`, checks that it got
//! exactly the ack's `snapshot.rows` rows, each row once, and closes. The driver is open-loop
//! (connection `k` is due `k / rate` seconds after the start) with at most `concurrency`
//! connections at once: when they are all busy it waits, falls behind, and says how often.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::net::TcpSocket;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{Ws, LATENCY_MAX_US};
use crate::report::{ChurnResult, Latency};
use crate::scan;
use crate::workload::ENTITY;

/// serde_json re-reads the first snapshot row of every connection and every this many after
/// it, and any disagreement with the fast reader fails the connection.
const CROSS_CHECK: u64 = 64;
/// How long the closing handshake may take; not part of any measured latency.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Read buffer of a churn connection: a snapshot arrives as a burst of rows.
const READ_BUFFER: usize = 16 << 10;

/// What every churn connection shares.
pub struct Settings {
    pub url: String,
    pub addr: SocketAddr,
    pub ws_config: WebSocketConfig,
    /// Limit from the start of the connect until `synced`.
    pub timeout: Duration,
    /// Connections per second.
    pub rate: u32,
    pub concurrency: u32,
    /// Rows seeded: row ids are `0..rows`.
    pub rows: u32,
}

impl Settings {
    pub fn new(
        url: String,
        addr: SocketAddr,
        timeout: Duration,
        churn: &crate::cli::Churn,
    ) -> Self {
        Self {
            url,
            addr,
            ws_config: WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER)
                .write_buffer_size(0),
            timeout,
            rate: churn.rate,
            concurrency: churn.concurrency,
            rows: churn.rows,
        }
    }
}

/// Live counts for the progress display.
#[derive(Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
}

/// What a churn connection that got its whole snapshot saw.
#[derive(Debug)]
pub struct Snapshot {
    pub connect_us: u64,
    pub snapshot_us: u64,
    pub total_us: u64,
    /// Rows received, equal to the ack's `snapshot.rows`.
    pub rows: u64,
    /// The ack's `snapshot.complete`.
    pub complete: bool,
}

/// Why a churn connection failed: a fixed reason to count by, and the details.
#[derive(Debug)]
pub struct Failure {
    pub reason: &'static str,
    pub detail: String,
}

fn failure(reason: &'static str, detail: impl std::fmt::Display) -> Failure {
    Failure {
        reason,
        detail: format!("{reason}: {detail}"),
    }
}

/// One churn connection: connect, subscribe with a snapshot, read and check it up to
/// `synced`, close.
pub async fn snapshot_once(settings: &Settings) -> Result<Snapshot, Failure> {
    let started = Instant::now();
    let mut ws = None;
    let outcome = tokio::time::timeout(settings.timeout, read_snapshot(settings, started, &mut ws))
        .await
        .unwrap_or_else(|_| {
            Err(failure(
                "no synced within the timeout",
                format_args!("{:?} (--connect-timeout)", settings.timeout),
            ))
        });
    if let Some(mut ws) = ws {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "churn".into(),
            };
            let _ = ws.close(Some(frame)).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
    }
    outcome
}

async fn read_snapshot(
    settings: &Settings,
    started: Instant,
    slot: &mut Option<Ws>,
) -> Result<Snapshot, Failure> {
    let socket = match settings.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| failure("socket", e))?;
    socket.set_nodelay(true).map_err(|e| failure("socket", e))?;
    let stream = socket
        .connect(settings.addr)
        .await
        .map_err(|e| failure("TCP connect failed", e))?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        settings.url.as_str(),
        stream,
        Some(settings.ws_config),
    )
    .await
    .map_err(|e| failure("WebSocket upgrade failed", e))?;
    let ws = slot.insert(ws);
    let connected = Instant::now();
    let request =
        format!(r#"{{"action":"subscribe","topic":"cdc.{ENTITY}","snapshot":true,"id":1}}"#);
    ws.send(Message::text(request))
        .await
        .map_err(|e| failure("sending the subscribe failed", e))?;

    let mut ack: Option<(u64, bool)> = None;
    let mut seen = vec![0u64; (settings.rows as usize).div_ceil(64)];
    let mut received = 0u64;
    loop {
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                return Err(failure(
                    "closed by the gateway",
                    frame.map_or("no close frame".into(), |f| {
                        format!("{} {}", u16::from(f.code), f.reason)
                    }),
                ))
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => return Err(failure("connection broke", error)),
            None => return Err(failure("connection broke", "ended without a close frame")),
        };
        let text = text.as_str();
        let Some((rows, complete)) = ack else {
            match read_slowly(text)? {
                Reply::Ack { rows, complete } => ack = Some((rows, complete)),
                Reply::Other => {}
                Reply::Row(_) | Reply::Live | Reply::Synced => {
                    return Err(failure("data before the subscribe ack", excerpt(text)))
                }
            }
            continue;
        };
        let fast = scan::snapshot_row(text);
        let id = match fast {
            Some(id) if received % CROSS_CHECK != 0 => id,
            _ => match read_slowly(text)? {
                Reply::Row(id) => {
                    if fast.is_some_and(|fast| fast != id) {
                        return Err(failure(
                            "the fast reader disagreed with serde_json",
                            format_args!("row {fast:?} against {id}: {}", excerpt(text)),
                        ));
                    }
                    id
                }
                Reply::Synced => {
                    if received != rows {
                        return Err(failure(
                            "rows received differ from the ack's snapshot.rows",
                            format_args!("{received} rows, the ack said {rows}"),
                        ));
                    }
                    let now = Instant::now();
                    return Ok(Snapshot {
                        connect_us: micros(connected - started),
                        snapshot_us: micros(now - connected),
                        total_us: micros(now - started),
                        rows,
                        complete,
                    });
                }
                Reply::Live => {
                    return Err(failure("live event before synced", excerpt(text)));
                }
                Reply::Ack { .. } => return Err(failure("a second ack", excerpt(text))),
                Reply::Other => continue,
            },
        };
        let (word, bit) = ((id / 64) as usize, 1u64 << (id % 64));
        let Some(bits) = seen.get_mut(word).filter(|_| id < u64::from(settings.rows)) else {
            return Err(failure(
                "row id outside the seeded ids",
                format_args!("{id} (seeded 0..{})", settings.rows),
            ));
        };
        if *bits & bit != 0 {
            return Err(failure("row sent twice in one snapshot", id));
        }
        *bits |= bit;
        received += 1;
    }
}

fn micros(duration: Duration) -> u64 {
    (duration.as_micros() as u64).clamp(1, LATENCY_MAX_US)
}

fn excerpt(text: &str) -> String {
    text.chars().take(200).collect()
}

/// A server message as the churn connection reads it.
enum Reply {
    Ack {
        rows: u64,
        complete: bool,
    },
    /// A snapshot row, by its row id.
    Row(u64),
    /// A data message without `"snapshot": true`.
    Live,
    Synced,
    /// Pings, pongs and anything else that changes nothing.
    Other,
}

#[derive(Deserialize)]
struct ServerReply {
    #[serde(rename = "type")]
    kind: String,
    action: Option<String>,
    snapshot: Option<serde_json::Value>,
    payload: Option<RowPayload>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct RowPayload {
    entity_id: Option<serde_json::Value>,
}

fn read_slowly(text: &str) -> Result<Reply, Failure> {
    let message: ServerReply = serde_json::from_str(text)
        .map_err(|e| failure("unreadable message", format_args!("{e}: {}", excerpt(text))))?;
    match message.kind.as_str() {
        "ack" if message.action.as_deref() == Some("subscribe") => {
            let snapshot = message.snapshot.unwrap_or_default();
            match (snapshot["rows"].as_u64(), snapshot["complete"].as_bool()) {
                (Some(rows), Some(complete)) => Ok(Reply::Ack { rows, complete }),
                _ => Err(failure("ack without snapshot rows", excerpt(text))),
            }
        }
        "data" if message.snapshot == Some(serde_json::Value::Bool(true)) => {
            let id = message.payload.and_then(|p| p.entity_id);
            match id.as_ref().and_then(|id| id.as_str()?.parse().ok()) {
                Some(id) => Ok(Reply::Row(id)),
                None => Err(failure(
                    "row id outside the seeded ids",
                    format_args!("{id:?}"),
                )),
            }
        }
        "data" => Ok(Reply::Live),
        "synced" => Ok(Reply::Synced),
        "error" => Err(failure(
            "error reply",
            format_args!(
                "{} {}",
                message.code.unwrap_or_default(),
                message.message.unwrap_or_default()
            ),
        )),
        _ => Ok(Reply::Other),
    }
}

/// The figures of a churn, added up as connections finish.
struct Tally {
    result: ChurnResult,
    connect: Histogram<u64>,
    snapshot: Histogram<u64>,
    total: Histogram<u64>,
}

impl Tally {
    fn new(settings: &Settings) -> Self {
        let histogram =
            || Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid histogram bounds");
        Self {
            result: ChurnResult {
                target_per_sec: settings.rate,
                concurrency: settings.concurrency,
                seeded_rows: settings.rows,
                ..ChurnResult::default()
            },
            connect: histogram(),
            snapshot: histogram(),
            total: histogram(),
        }
    }

    fn add(&mut self, outcome: Result<Snapshot, Failure>, seeded: u32) {
        let r = &mut self.result;
        match outcome {
            Ok(s) => {
                r.completed += 1;
                r.rows += s.rows;
                r.rows_min = Some(r.rows_min.map_or(s.rows, |m| m.min(s.rows)));
                r.rows_max = Some(r.rows_max.map_or(s.rows, |m| m.max(s.rows)));
                r.rows_below_seeded += u64::from(s.rows < u64::from(seeded));
                match s.complete {
                    true => r.complete += 1,
                    false => r.incomplete += 1,
                }
                self.connect.saturating_record(s.connect_us);
                self.snapshot.saturating_record(s.snapshot_us);
                self.total.saturating_record(s.total_us);
            }
            Err(f) => {
                r.failed += 1;
                *r.failure_reasons.entry(f.reason.to_owned()).or_insert(0) += 1;
                r.first_error.get_or_insert(f.detail);
            }
        }
    }

    fn finish(mut self, seconds: f64) -> ChurnResult {
        let r = &mut self.result;
        r.seconds = seconds;
        r.connects_per_sec = if seconds > 0.0 {
            r.completed as f64 / seconds
        } else {
            0.0
        };
        r.connect_us = Latency::of(&self.connect);
        r.subscribe_snapshot_us = Latency::of(&self.snapshot);
        r.total_us = Latency::of(&self.total);
        self.result
    }
}

/// Opens churn connections at `settings.rate` until `stop` turns true, then waits for the
/// ones still open (each bounded by its timeout) and adds everything up.
pub async fn drive(
    settings: Arc<Settings>,
    counters: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
) -> ChurnResult {
    let mut tally = Tally::new(&settings);
    let seeded = settings.rows;
    let gate = Arc::new(Semaphore::new(settings.concurrency as usize));
    let mut running = JoinSet::new();
    let started = Instant::now();
    let rate = f64::from(settings.rate.max(1));
    let mut next: u64 = 0;
    while settings.rate > 0 && !*stop.borrow() {
        let due = started + Duration::from_secs_f64(next as f64 / rate);
        tokio::select! {
            biased;
            _ = stop.wait_for(|stopped| *stopped) => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        let permit = match Arc::clone(&gate).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                tally.result.capped += 1;
                tokio::select! {
                    biased;
                    _ = stop.wait_for(|stopped| *stopped) => break,
                    permit = Arc::clone(&gate).acquire_owned() => {
                        permit.expect("the churn gate is never closed")
                    }
                }
            }
        };
        next += 1;
        counters.started.fetch_add(1, Ordering::Relaxed);
        let (settings, counters) = (Arc::clone(&settings), Arc::clone(&counters));
        running.spawn(async move {
            let outcome = snapshot_once(&settings).await;
            drop(permit);
            let counter = match outcome {
                Ok(_) => &counters.completed,
                Err(_) => &counters.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            outcome
        });
        while let Some(done) = running.try_join_next() {
            add_joined(&mut tally, done, seeded);
        }
    }
    while let Some(done) = running.join_next().await {
        add_joined(&mut tally, done, seeded);
    }
    tally.result.attempted = next;
    tally.finish(started.elapsed().as_secs_f64())
}

fn add_joined(
    tally: &mut Tally,
    done: Result<Result<Snapshot, Failure>, tokio::task::JoinError>,
    seeded: u32,
) {
    let outcome = done.unwrap_or_else(|e| Err(failure("churn task failed", e)));
    tally.add(outcome, seeded);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    fn row(id: u64, snapshot: bool) -> String {
        format!(
            r#"{{"type":"data","topic":"cdc.order","payload":{{"entity_type":"order","entity_id":"{id}","operation":"update","data":{{"id":{id},"seq":1,"run":0}},"before":null,"timestamp":"2026-11-23T10:00:00Z"}},"source":"cdc.events","partition":0,"offset":{id},"timestamp":"2026-11-23T10:00:00.001Z"{}}}"#,
            if snapshot { r#","snapshot":true"# } else { "" }
        )
    }

    /// A gateway stand-in that answers one subscribe with `replies`, then waits for the close.
    async fn serve(replies: Vec<String>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
            let request = ws.next().await.unwrap().unwrap();
            let request: serde_json::Value =
                serde_json::from_str(request.to_text().unwrap()).unwrap();
            assert_eq!(request["snapshot"], true);
            assert_eq!(request["topic"], "cdc.order");
            for reply in replies {
                ws.send(Message::text(reply)).await.unwrap();
            }
            while let Some(Ok(_)) = ws.next().await {}
        });
        addr
    }

    async fn churn_once(replies: Vec<String>, rows: u32) -> Result<Snapshot, Failure> {
        let addr = serve(replies).await;
        let churn = crate::cli::Churn {
            rate: 1,
            rows,
            concurrency: 1,
        };
        let settings = Settings::new(
            format!("ws://{addr}/ws"),
            addr,
            Duration::from_secs(5),
            &churn,
        );
        snapshot_once(&settings).await
    }

    fn ack(rows: u64) -> String {
        format!(
            r#"{{"type":"ack","action":"subscribe","topic":"cdc.order","id":1,"position":{{"cdc.events:0":5}},"snapshot":{{"rows":{rows},"complete":true}}}}"#
        )
    }

    const SYNCED: &str = r#"{"type":"synced","topic":"cdc.order"}"#;
    const PING: &str = r#"{"type":"ping","timestamp":1}"#;

    #[tokio::test]
    async fn a_whole_snapshot_passes() {
        let mut replies = vec![PING.to_owned(), ack(70)];
        replies.extend((0..70).map(|id| row(id, true)));
        replies.insert(40, PING.to_owned());
        replies.push(SYNCED.to_owned());
        replies.push(row(3, false));
        let snapshot = churn_once(replies, 100).await.unwrap();
        assert_eq!((snapshot.rows, snapshot.complete), (70, true));
        assert!(snapshot.total_us >= snapshot.snapshot_us);
    }

    #[tokio::test]
    async fn wrong_snapshots_fail_with_their_reason() {
        let cases: [(Vec<String>, &str); 6] = [
            (
                vec![ack(3), row(0, true), row(1, true), SYNCED.into()],
                "rows received differ from the ack's snapshot.rows",
            ),
            (
                vec![ack(2), row(0, true), row(0, true), SYNCED.into()],
                "row sent twice in one snapshot",
            ),
            (
                vec![ack(2), row(0, true), row(1, false), SYNCED.into()],
                "live event before synced",
            ),
            (
                vec![ack(1), row(7, true), SYNCED.into()],
                "row id outside the seeded ids",
            ),
            (vec![row(0, true), ack(1)], "data before the subscribe ack"),
            (
                vec![r#"{"type":"error","code":"INVALID_TOPIC","message":"x"}"#.into()],
                "error reply",
            ),
        ];
        for (replies, reason) in cases {
            let failure = churn_once(replies, 5).await.unwrap_err();
            assert_eq!(failure.reason, reason, "{}", failure.detail);
        }
        // Row 64 is read by the fast path; rows 0 and 64·k by serde_json too.
        let mut replies = vec![ack(130)];
        replies.extend((0..130).map(|id| row(id, true)));
        replies.push(SYNCED.into());
        assert_eq!(churn_once(replies, 130).await.unwrap().rows, 130);
    }
}
