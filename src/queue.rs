//! The bounded queue between the dispatcher and one connection's writer. One producer (the
//! dispatcher) and one consumer (the writer): a short mutex over a `VecDeque` touches two
//! cache lines per push where tokio's bounded mpsc touches four or five (semaphore, block
//! index, slot, waker), and at hundreds of thousands of deliveries a second into a thousand
//! queues those cache misses were a quarter of the gateway's CPU (BENCHMARKS.md). Wake-ups
//! are sent only when the other side is actually waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

/// Slots kept once a burst has drained: a queue that grew to its capacity for a burst gives
/// the memory back, so many connections that each saw a burst do not hold it while idle.
const RETAINED_CAPACITY: usize = 64;

/// Why a message could not be queued; `Full` hands it back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError {
    Full(Bytes),
    Closed,
}

/// The receiver is gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

struct State {
    items: VecDeque<Bytes>,
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
}

pub fn bounded(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver_waiting: false,
            sender_waiting: false,
            receiver_gone: false,
            sender_gone: false,
        }),
        capacity: capacity.max(1),
        readable: Notify::new(),
        writable: Notify::new(),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

impl Sender {
    /// Queues `item` unless the queue is full; returns how many items it then holds.
    pub fn try_send(&self, item: Bytes) -> Result<usize, TrySendError> {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return Err(TrySendError::Closed);
        }
        if state.items.len() >= self.shared.capacity {
            return Err(TrySendError::Full(item));
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
    /// Moves up to `limit` items into `buffer`; waits while the queue is empty. Returns 0 only
    /// when the queue is empty and the sender is gone. Cancel-safe: nothing is taken while
    /// waiting.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Bytes>, limit: usize) -> usize {
        loop {
            let notified = self.shared.readable.notified();
            {
                let mut state = self.shared.lock();
                if !state.items.is_empty() {
                    let n = state.items.len().min(limit);
                    buffer.extend(state.items.drain(..n));
                    if state.items.is_empty() && state.items.capacity() > RETAINED_CAPACITY {
                        state.items.shrink_to(RETAINED_CAPACITY);
                    }
                    let wake = std::mem::take(&mut state.sender_waiting);
                    drop(state);
                    if wake {
                        self.shared.writable.notify_one();
                    }
                    return n;
                }
                if state.sender_gone {
                    return 0;
                }
                state.receiver_waiting = true;
            }
            notified.await;
        }
    }

    pub async fn recv(&mut self) -> Option<Bytes> {
        let mut one = Vec::with_capacity(1);
        (self.recv_many(&mut one, 1).await > 0).then(|| one.remove(0))
    }

    pub fn try_recv(&mut self) -> Option<Bytes> {
        let mut state = self.shared.lock();
        let item = state.items.pop_front();
        let wake = item.is_some() && std::mem::take(&mut state.sender_waiting);
        drop(state);
        if wake {
            self.shared.writable.notify_one();
        }
        item
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
        assert_eq!(
            tx.try_send(Bytes::from_static(b"c")),
            Err(TrySendError::Full(Bytes::from_static(b"c")))
        );
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
