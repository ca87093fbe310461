//! A large table scan spread over threads. A store iterator is sequential, and reading one
//! (decompressing blocks, copying rows out) costs as much as judging the rows, so the scan is
//! cut into key ranges, each read and judged by one thread, and their keys are put back in
//! key order. The cuts are guessed from the entity's first and last keys ([`cuts`]); many
//! more ranges than threads even out ranges that hold more rows than others. Helpers are one
//! budget for the whole process: a scan takes them only when no other scan holds them, so
//! many clients taking snapshots at once share the cores instead of multiplying threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Below this many rows a scan stays on its own thread: starting helpers costs more than
/// they save.
const FROM_ROWS: usize = 20_000;

/// Most threads a scan runs on.
const MOST: usize = 4;

/// Ranges per thread. Cuts are even as numbers, and ids use few of the byte values (hex
/// digits leave a gap between `9` and `a`), so many ranges are empty or small; taken one at
/// a time by whichever thread is free, they still even out (an empty range costs one seek).
const RANGES_PER_THREAD: usize = 32;

/// Threads held by the scan running with them, 0 when none is.
static BUSY: AtomicUsize = AtomicUsize::new(0);

/// The threads one scan may run on, given back when dropped.
#[derive(Debug)]
pub struct Helpers {
    n: usize,
    budget: &'static AtomicUsize,
}

impl Helpers {
    /// Threads for a scan of `rows` rows: `None` for a small scan, on a single core, or while
    /// another scan holds them.
    pub fn take(rows: usize) -> Option<Self> {
        Self::take_from(&BUSY, rows)
    }

    fn take_from(budget: &'static AtomicUsize, rows: usize) -> Option<Self> {
        if rows < FROM_ROWS {
            return None;
        }
        let n = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MOST);
        if n < 2 {
            return None;
        }
        budget
            .compare_exchange(0, n, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(Helpers { n, budget })
    }

    /// How many ranges to cut a scan into.
    pub fn ranges(&self) -> usize {
        self.n * RANGES_PER_THREAD
    }

    /// `work(i)` for every `i` below `parts`, on this thread and the helpers, each range
    /// taken by the next free thread; the results in the order of `i`.
    pub fn run<T: Send>(&self, parts: usize, work: impl Fn(usize) -> T + Sync) -> Vec<T> {
        let next = AtomicUsize::new(0);
        let done: Mutex<Vec<(usize, T)>> = Mutex::new(Vec::with_capacity(parts));
        let take = || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= parts {
                return;
            }
            let result = work(i);
            done.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((i, result));
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..self.n).map(|_| scope.spawn(take)).collect();
            take();
            for helper in helpers {
                if let Err(panic) = helper.join() {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        let mut done = done.into_inner().unwrap_or_else(PoisonError::into_inner);
        done.sort_unstable_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, result)| result).collect()
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        self.budget.store(0, Ordering::Release);
    }
}

/// Up to `parts - 1` keys, strictly increasing, above `low` and at most `high`, that cut the
/// keys between them into `parts` ranges about equally wide as numbers (the first eight
/// bytes after the keys' common prefix): even when the keys are, as ids from a sequence or
/// UUIDs are close enough to be.
pub fn cuts(low: &[u8], high: &[u8], parts: usize) -> Vec<Vec<u8>> {
    if parts < 2 || low >= high {
        return Vec::new();
    }
    let common = low.iter().zip(high).take_while(|(a, b)| a == b).count();
    let number = |key: &[u8]| {
        let mut bytes = [0u8; 8];
        for (to, from) in bytes.iter_mut().zip(key.iter().skip(common)) {
            *to = *from;
        }
        u128::from(u64::from_be_bytes(bytes))
    };
    let (a, b) = (number(low), number(high));
    let mut cuts: Vec<Vec<u8>> = Vec::new();
    for i in 1..parts as u128 {
        let point = a + (b.saturating_sub(a)) * i / parts as u128;
        let mut key = high[..common].to_vec();
        key.extend_from_slice(&(point as u64).to_be_bytes());
        if key.as_slice() > low
            && key.as_slice() <= high
            && cuts.last().is_none_or(|last| *last < key)
        {
            cuts.push(key);
        }
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_keep_the_order_and_are_one_budget() {
        static BUDGET: AtomicUsize = AtomicUsize::new(0);
        let Some(helpers) = Helpers::take_from(&BUDGET, 50_000) else {
            // One core: scans stay on their thread, which the tables tests cover.
            assert_eq!(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
                1
            );
            return;
        };
        assert!(
            Helpers::take_from(&BUDGET, 50_000).is_none(),
            "a second scan runs alone"
        );
        let parts = helpers.ranges();
        let done = helpers.run(parts, |i| (i, std::thread::current().id()));
        assert_eq!(
            done.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..parts).collect::<Vec<_>>()
        );
        drop(helpers);
        assert!(
            Helpers::take_from(&BUDGET, 100).is_none(),
            "a small scan stays alone"
        );
        assert!(
            Helpers::take_from(&BUDGET, 1_000_000).is_some(),
            "given back when dropped"
        );
    }

    /// How many of the (sorted) keys fall in each of the ranges cut between the first and last.
    fn spread(keys: &[Vec<u8>], parts: usize) -> Vec<usize> {
        let (low, high) = (keys.first().unwrap(), keys.last().unwrap());
        let cuts = cuts(low, high, parts);
        let mut counts = vec![0; cuts.len() + 1];
        for key in keys {
            counts[cuts
                .iter()
                .filter(|cut| cut.as_slice() <= key.as_slice())
                .count()] += 1;
        }
        assert_eq!(counts.iter().sum::<usize>(), keys.len());
        counts
    }

    #[test]
    fn cuts_spread_uuids_and_sequences() {
        let mut uuids: Vec<Vec<u8>> = (0..10_000u64)
            .map(|i| {
                let x = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                let mut key = b"\x05order".to_vec();
                key.extend_from_slice(format!("{x:016x}-{:08x}", x >> 7).as_bytes());
                key
            })
            .collect();
        uuids.sort();
        let counts = spread(&uuids, 64);
        assert!(counts.iter().all(|&n| n < 10_000 / 8), "{counts:?}");

        let mut sequence: Vec<Vec<u8>> = (0..100_000u64)
            .map(|i| [b"\x05order".as_slice(), i.to_string().as_bytes()].concat())
            .collect();
        sequence.sort();
        let counts = spread(&sequence, 64);
        assert!(counts.iter().all(|&n| n < 100_000 / 8), "{counts:?}");
    }

    #[test]
    fn cuts_of_close_or_equal_keys_are_few_or_none() {
        assert!(cuts(b"a", b"a", 4).is_empty());
        assert!(cuts(b"b", b"a", 4).is_empty());
        let close = cuts(b"a", b"a\x00\x00\x00\x00\x00\x00\x00\x02", 4);
        assert!(close.len() <= 2, "{close:?}");
        assert!(close.windows(2).all(|w| w[0] < w[1]), "{close:?}");
        for cut in cuts(b"k1", b"k9", 4) {
            assert!(cut.as_slice() > b"k1".as_slice() && cut.as_slice() <= b"k9".as_slice());
        }
    }
}
