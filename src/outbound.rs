//! One connection's sending end, below the index, fan-out and the transports: its bounded
//! queue of serialized messages, when that queue was first found full (the slow-client grace
//! runs from there), and the switch that closes the connection with a reason. It knows
//! nothing of WebSocket or SSE: a transport reads the queue and maps the close code.

use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::close::CloseCode;
use crate::queue;

/// The sending side of one connection: its bounded queue of serialized messages and the
/// switch the dispatcher uses to close it.
pub struct Outbound {
    id: u64,
    pub(crate) queue: queue::Sender,
    /// Milliseconds since `EPOCH` at which the current stall window began (the queue was found
    /// full); 0 while the queue is not stalled.
    full_since_ms: AtomicI64,
    /// Milliseconds since `EPOCH` at which the current stall began (its first window);
    /// windows renewed within it keep it. 0 while not stalled.
    stall_since_ms: AtomicI64,
    /// The length of the current window when a stall's bound cuts it short; 0: the grace.
    window_ms: AtomicI64,
    /// Messages the writer had taken from the queue when the stall window began: the
    /// client's drain rate is measured from there (snapshot rows and replays included).
    taken_at_window: AtomicU64,
    close: CancellationToken,
    close_code: AtomicU16,
    /// The close frame's reason, when the closer gave one other than the code's own.
    close_reason: OnceLock<String>,
    /// Snapshot rows and missed events its queued backlogs still owe (`--max-backlog-rows`).
    backlog_rows: Arc<AtomicUsize>,
}

/// Reference instant for `full_since_ms`.
static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

pub(crate) fn elapsed_ms() -> i64 {
    // +1 so that 0 keeps meaning "not full" even at the first millisecond.
    EPOCH.elapsed().as_millis() as i64 + 1
}

impl Outbound {
    pub fn new(id: u64, capacity: usize) -> (Arc<Self>, queue::Receiver) {
        Self::under(id, capacity, CancellationToken::new())
    }

    /// An outbound whose close switch is also thrown by `shutdown` (the code is then
    /// `GoingAway`): a connection waits on one switch for both.
    pub fn closed_by(
        id: u64,
        capacity: usize,
        shutdown: &CancellationToken,
    ) -> (Arc<Self>, queue::Receiver) {
        Self::under(id, capacity, shutdown.child_token())
    }

    fn under(id: u64, capacity: usize, close: CancellationToken) -> (Arc<Self>, queue::Receiver) {
        let (queue, receiver) = queue::bounded(capacity);
        let outbound = Outbound {
            id,
            queue,
            full_since_ms: AtomicI64::new(0),
            stall_since_ms: AtomicI64::new(0),
            window_ms: AtomicI64::new(0),
            taken_at_window: AtomicU64::new(0),
            close,
            close_code: AtomicU16::new(0),
            close_reason: OnceLock::new(),
            backlog_rows: Arc::new(AtomicUsize::new(0)),
        };
        (Arc::new(outbound), receiver)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Rows its queued backlogs still owe.
    pub(crate) fn backlog_rows(&self) -> &Arc<AtomicUsize> {
        &self.backlog_rows
    }

    /// Asks the connection to close with `code`; the first request wins. It never waits:
    /// the transport's writer sees it even while a flush to a client that does not read is
    /// pending.
    pub fn close(&self, code: CloseCode) {
        // The reason is kept: two codes share 4001 (invalid token, token expired), so the
        // number alone does not say which.
        self.close_because(code, Some(code.reason().to_owned()));
    }

    /// [`Outbound::close`] with a reason other than the code's own (`invalid token: ...`).
    pub fn close_because(&self, code: CloseCode, reason: Option<String>) {
        if self
            .close_code
            .compare_exchange(0, code.as_u16(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if let Some(reason) = reason {
                let _ = self.close_reason.set(reason);
            }
            self.close.cancel();
        }
    }

    /// The reason to send with the close code.
    pub fn close_reason(&self, code: CloseCode) -> String {
        self.close_reason
            .get()
            .cloned()
            .unwrap_or_else(|| code.reason().to_owned())
    }

    /// Resolves once [`Outbound::close`] was called, or the shutdown it was made under
    /// began; yields the code.
    pub async fn closed(&self) -> CloseCode {
        self.close.cancelled().await;
        match self.close_code.load(Ordering::Acquire) {
            0 => CloseCode::GoingAway,
            code => CloseCode::from_u16(code),
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.close.is_cancelled()
    }

    /// Resolves once a close was requested.
    pub(crate) async fn closing(&self) {
        self.close.cancelled().await
    }

    /// The queue was found full now: returns when the stall window began (milliseconds on
    /// this process's clock), now if none was open.
    pub(crate) fn full_since(&self) -> i64 {
        let now = elapsed_ms();
        match self
            .full_since_ms
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.taken_at_window
                    .store(self.queue.taken(), Ordering::Release);
                self.stall_since_ms.store(now, Ordering::Release);
                self.window_ms.store(0, Ordering::Release);
                now
            }
            Err(earlier) => earlier,
        }
    }

    /// A message was queued and the queue now holds `held` of `capacity`. A stall ends once
    /// the client drained its queue to half.
    pub(crate) fn accepted(&self, held: usize, capacity: usize) {
        if held <= capacity / 2 && self.full_since_ms.load(Ordering::Relaxed) != 0 {
            self.full_since_ms.store(0, Ordering::Release);
            self.stall_since_ms.store(0, Ordering::Release);
        }
    }

    /// When the current stall began (milliseconds on this process's clock); now if none.
    pub(crate) fn stall_since(&self) -> i64 {
        match self.stall_since_ms.load(Ordering::Acquire) {
            0 => elapsed_ms(),
            since => since,
        }
    }

    /// Messages the client took in the current stall window.
    pub(crate) fn accepted_in_window(&self) -> u64 {
        self.queue
            .taken()
            .saturating_sub(self.taken_at_window.load(Ordering::Acquire))
    }

    /// Starts a fresh window of the stall (the last one showed enough progress), ending
    /// `length_ms` from now where a grace period would run longer.
    pub(crate) fn renew_window(&self, length_ms: i64) {
        self.taken_at_window
            .store(self.queue.taken(), Ordering::Release);
        self.full_since_ms.store(elapsed_ms(), Ordering::Release);
        self.window_ms.store(length_ms, Ordering::Release);
    }

    /// How long the current window lasts, when shorter than a grace period (0: a grace
    /// period).
    pub(crate) fn window_ms(&self) -> i64 {
        self.window_ms.load(Ordering::Acquire)
    }
}
