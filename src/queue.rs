//! The bounded queue between the dispatcher and one connection's writer. One producer (the
//! dispatcher) and one consumer (the writer): a short mutex over a `VecDeque` touches two
//! cache lines per push where tokio's bounded mpsc touches four or five (semaphore, block
//! index, slot, waker), and at hundreds of thousands of deliveries a second into a thousand
//! queues those cache misses were a quarter of the gateway's CPU (BENCHMARKS.md). Wake-ups
//! are sent only when the other side is actually waiting.
//!
//! An item is one message or a [`Backlog`]: the messages a subscribe owes (snapshot rows,
//! missed events), rendered by the receiver as it writes them. A backlog takes one slot, so
//! the consumer task queues a 100,000-row snapshot without waiting for the client to read it,
//! and live messages queued after it still come after every one of its messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

/// Slots kept once a burst has drained: a queue that grew to its capacity for a burst gives
/// the memory back, so many connections that each saw a burst do not hold it while idle.
const RETAINED_CAPACITY: usize = 64;

/// Messages rendered only when the receiver gets to them.
pub type Backlog = Box<dyn Iterator<Item = Bytes> + Send>;

/// What one slot of the queue holds.
pub enum Item {
    Message(Bytes),
    Backlog(Backlog),
}

impl From<Bytes> for Item {
    fn from(message: Bytes) -> Self {
        Item::Message(message)
    }
}

impl std::fmt::Debug for Item {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Item::Message(message) => f.debug_tuple("Message").field(message).finish(),
            Item::Backlog(_) => f.write_str("Backlog"),
        }
    }
}

/// Why an item could not be queued; `Full` hands it back.
#[derive(Debug)]
pub enum TrySendError {
    Full(Item),
    Closed,
}

/// The receiver is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

struct State {
    items: VecDeque<Item>,
    /// When the oldest item still queued was queued (nanoseconds on [`now_ns`]); 0 when
    /// empty. Set as an item enters an empty queue, so it is a bound from above for the
    /// items behind it.
    oldest_at: u64,
    receiver_waiting: bool,
    sender_waiting: bool,
    receiver_gone: bool,
    sender_gone: bool,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
    /// Signals the receiver: an item arrived, or the sender is gone.
    readable: Notify,
    /// Signals the sender: room was made, or the receiver is gone.
    writable: Notify,
    /// Messages the receiver has taken, a backlog's one by one: the client's progress.
    taken: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Sender {
    shared: Arc<Shared>,
}

pub struct Receiver {
    shared: Arc<Shared>,
    /// The backlog being rendered: it comes before anything still in the queue.
    current: Option<Backlog>,
    /// When the oldest message of the last batch taken was queued ([`now_ns`]).
    taken_oldest_at: u64,
}

/// Nanoseconds since the first call: the queue's clock for how long messages waited.
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    EPOCH.elapsed().as_nanos() as u64 + 1
}

pub fn bounded(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            oldest_at: 0,
            receiver_waiting: false,
            sender_waiting: false,
            receiver_gone: false,
            sender_gone: false,
        }),
        capacity: capacity.max(1),
        readable: Notify::new(),
        writable: Notify::new(),
        taken: AtomicU64::new(0),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver {
            shared,
            current: None,
            taken_oldest_at: 0,
        },
    )
}

impl Sender {
    /// Queues `item` unless the queue is full; returns how many items it then holds.
    pub fn try_send(&self, item: impl Into<Item>) -> Result<usize, TrySendError> {
        let item = item.into();
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(TrySendError::Closed);
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
        }
        if state.items.is_empty() {
            state.oldest_at = now_ns();
        }
        state.items.push_back(item);
        let held = state.items.len();
        let wake = std::mem::take(&mut state.receiver_waiting);
        drop(state);
        if wake {
            self.shared.readable.notify_one();
        }
        Ok(held)
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Messages the receiver has taken so far (a backlog's counted one by one).
    pub fn taken(&self) -> u64 {
        self.shared.taken.load(Ordering::Acquire)
    }

    /// Resolves once the queue has room (or the receiver is gone). Cancel-safe.
    pub async fn wait_for_space(&self) -> Result<(), Closed> {
        loop {
            let notified = self.shared.writable.notified();
            {
                let mut state = self.shared.lock();
                if state.receiver_gone {
                    return Err(Closed);
                }
                if state.items.len() < self.shared.capacity {
                    return Ok(());
                }
                state.sender_waiting = true;
            }
            notified.await;
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.shared.lock().sender_gone = true;
        self.shared.readable.notify_one();
    }
}

impl Receiver {
    /// Moves up to `limit` messages into `buffer`, rendering a backlog's as they come; waits
    /// while the queue is empty. Returns 0 only when the queue is empty and the sender is
    /// gone. Cancel-safe: nothing is taken while waiting.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Bytes>, limit: usize) -> usize {
        let limit = limit.max(1);
        loop {
            if let Some(backlog) = &mut self.current {
                let before = buffer.len();
                buffer.extend(backlog.by_ref().take(limit));
                let n = buffer.len() - before;
                if n < limit {
                    self.current = None;
                }
                if n > 0 {
                    self.shared.taken.fetch_add(n as u64, Ordering::AcqRel);
                    return n;
                }
            }
            let notified = self.shared.readable.notified();
            {
                let mut state = self.shared.lock();
                if !state.items.is_empty() {
                    self.taken_oldest_at = state.oldest_at;
                    let mut n = 0;
                    while n < limit {
                        match state.items.pop_front() {
                            Some(Item::Message(message)) => {
                                buffer.push(message);
                                n += 1;
                            }
                            Some(Item::Backlog(backlog)) => {
                                self.current = Some(backlog);
                                break;
                            }
                            None => break,
                        }
                    }
                    if state.items.is_empty() {
                        state.oldest_at = 0;
                        if state.items.capacity() > RETAINED_CAPACITY {
                            state.items.shrink_to(RETAINED_CAPACITY);
                        }
                    }
                    let wake = std::mem::take(&mut state.sender_waiting);
                    drop(state);
                    if wake {
                        self.shared.writable.notify_one();
                    }
                    if n > 0 {
                        self.shared.taken.fetch_add(n as u64, Ordering::AcqRel);
                        return n;
                    }
                    // The front was a backlog: render it.
                    continue;
                }
                if state.sender_gone {
                    return 0;
                }
                state.receiver_waiting = true;
            }
            notified.await;
        }
    }

    /// When the oldest message of the batch last taken was queued ([`now_ns`]): the batch has
    /// waited at most since then.
    pub fn taken_oldest_at(&self) -> u64 {
        self.taken_oldest_at
    }

    pub async fn recv(&mut self) -> Option<Bytes> {
        let mut one = Vec::with_capacity(1);
        (self.recv_many(&mut one, 1).await > 0).then(|| one.remove(0))
    }

    /// The next message if one is ready (a backlog's are always ready).
    pub fn try_recv(&mut self) -> Option<Bytes> {
        loop {
            if let Some(backlog) = &mut self.current {
                match backlog.next() {
                    Some(message) => {
                        self.shared.taken.fetch_add(1, Ordering::AcqRel);
                        return Some(message);
                    }
                    None => self.current = None,
                }
            }
            let mut state = self.shared.lock();
            let item = state.items.pop_front();
            if state.items.is_empty() {
                state.oldest_at = 0;
            }
            let wake = item.is_some() && std::mem::take(&mut state.sender_waiting);
            drop(state);
            if wake {
                self.shared.writable.notify_one();
            }
            match item? {
                Item::Message(message) => {
                    self.shared.taken.fetch_add(1, Ordering::AcqRel);
                    return Some(message);
                }
                Item::Backlog(backlog) => self.current = Some(backlog),
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_gone = true;
        state.items.clear();
        drop(state);
        self.shared.writable.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounded_in_order_and_wakes_both_sides() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        tx.try_send(Bytes::from_static(b"b")).unwrap();
        assert!(matches!(
            tx.try_send(Bytes::from_static(b"c")),
            Err(TrySendError::Full(Item::Message(m))) if m == "c"
        ));
        let waiter = tokio::spawn(async move {
            tx.wait_for_space().await.unwrap();
            tx.try_send(Bytes::from_static(b"c")).unwrap();
            tx
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(rx.recv().await.unwrap(), "a");
        let tx = waiter.await.unwrap();
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 10).await, 2);
        assert_eq!(
            batch,
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"c")]
        );
        let reader = tokio::spawn(async move { rx.recv().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(Bytes::from_static(b"d")).unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), "d");
    }

    #[tokio::test]
    async fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = bounded(4096);
        for _ in 0..4096 {
            tx.try_send(Bytes::from_static(b"x")).unwrap();
        }
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 256).await > 0 && batch.len() < 4096 {}
        assert_eq!(batch.len(), 4096);
        assert!(tx.shared.lock().items.capacity() <= RETAINED_CAPACITY);
    }

    #[tokio::test]
    async fn a_backlog_takes_one_slot_and_is_rendered_in_place() {
        let (tx, mut rx) = bounded(2);
        let rendered = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&rendered);
        let backlog = (0..1000u32).map(move |i| {
            counter.fetch_add(1, Ordering::Relaxed);
            Bytes::from(i.to_string())
        });
        tx.try_send(Bytes::from_static(b"ack")).unwrap();
        tx.try_send(Item::Backlog(Box::new(backlog))).unwrap();
        assert_eq!(
            rendered.load(Ordering::Relaxed),
            0,
            "nothing rendered when queued"
        );
        assert_eq!(rx.recv().await.unwrap(), "ack");
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 300).await, 300);
        assert_eq!(rendered.load(Ordering::Relaxed), 300, "rendered as taken");
        // Taken out of the queue, the backlog no longer holds a slot: live messages queue
        // behind it and come after all of it.
        tx.try_send(Bytes::from_static(b"live-1")).unwrap();
        tx.try_send(Bytes::from_static(b"live-2")).unwrap();
        while batch.len() < 1002 {
            rx.recv_many(&mut batch, 256).await;
        }
        assert_eq!(batch[0], "0");
        assert_eq!(batch[999], "999");
        assert_eq!(&batch[1000..], ["live-1", "live-2"]);
        assert_eq!(tx.taken(), 1003, "the ack, the backlog's 1000, two live");
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_batch_knows_when_its_oldest_message_was_queued() {
        let (tx, mut rx) = bounded(8);
        let before = now_ns();
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        tx.try_send(Bytes::from_static(b"b")).unwrap();
        let mut batch = Vec::new();
        assert_eq!(rx.recv_many(&mut batch, 8).await, 2);
        let oldest = rx.taken_oldest_at();
        assert!(
            oldest >= before && now_ns() - oldest >= 5_000_000,
            "the first message's time"
        );
        // A message into the drained queue starts a new clock.
        tx.try_send(Bytes::from_static(b"c")).unwrap();
        rx.recv_many(&mut batch, 8).await;
        assert!(rx.taken_oldest_at() > oldest);
    }

    #[tokio::test]
    async fn either_side_going_away_is_seen() {
        let (tx, rx) = bounded(1);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        let waiter = tokio::spawn(async move { tx.wait_for_space().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(waiter.await.unwrap(), Err(Closed));

        let (tx, mut rx) = bounded(1);
        tx.try_send(Bytes::from_static(b"a")).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await.unwrap(), "a");
        assert_eq!(rx.recv().await, None);
    }
}
