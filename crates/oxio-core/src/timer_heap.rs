//! Delayed calls, ordered by (when, sequence).
//!
//! Cancelling a timer is O(1): the timer's own flag is set and the heap only counts it.
//! Cancelled entries are dropped lazily when they reach the top, and the whole heap is
//! compacted when more than half of it is cancelled, so a program that schedules and
//! cancels timeouts in a tight loop keeps the heap, and the memory behind it, small.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// An item the heap can ask whether it was cancelled.
pub trait Cancellable {
    /// True once the item has been cancelled; must never go back to false.
    fn is_cancelled(&self) -> bool;
}

/// Below this many entries the heap is never compacted: scanning a small heap costs more
/// than it saves (asyncio uses the same threshold).
const MIN_COMPACT_LEN: usize = 100;

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // BinaryHeap is a max-heap: reverse so the earliest (when, seq) is on top.
    // total_cmp keeps the order total even if a NaN slipped in.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .when
            .total_cmp(&self.when)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// A min-heap of timers keyed by (when, insertion sequence).
///
/// Guarantees: timers come out in `when` order, and timers with equal `when` come out
/// in the order they were pushed. Removed items are always handed back to the caller,
/// never dropped inside a method, so dropping them can run arbitrary code safely.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: usize,
}

impl<T: Cancellable> Default for TimerHeap<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Cancellable> TimerHeap<T> {
    /// An empty heap.
    pub fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: 0,
        }
    }

    /// Schedules `item` at `when` (seconds on the loop's clock).
    #[inline]
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.heap.push(Entry { when, seq, item });
    }

    /// Records that one scheduled item was cancelled. O(1); the item stays in the heap
    /// until it reaches the top or the heap is compacted.
    #[inline]
    pub fn note_cancelled(&mut self) {
        self.cancelled += 1;
    }

    /// Number of entries, cancelled ones included.
    #[inline]
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no timer is scheduled.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Number of entries noted as cancelled and not yet removed.
    #[inline]
    pub fn cancelled_count(&self) -> usize {
        self.cancelled
    }

    /// True when more than half of a non-trivial heap is cancelled.
    #[inline]
    pub fn wants_compaction(&self) -> bool {
        self.heap.len() > MIN_COMPACT_LEN && self.cancelled * 2 > self.heap.len()
    }

    /// Removes every cancelled entry, appending the removed items to `removed`.
    pub fn compact(&mut self, removed: &mut Vec<T>) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        let mut kept = Vec::with_capacity(entries.len() - self.cancelled.min(entries.len()));
        for entry in entries {
            if entry.item.is_cancelled() {
                removed.push(entry.item);
            } else {
                kept.push(entry);
            }
        }
        self.heap = BinaryHeap::from(kept);
        self.cancelled = 0;
    }

    /// Pops the earliest entry if it is cancelled.
    #[inline]
    pub fn pop_cancelled_head(&mut self) -> Option<T> {
        if self.heap.peek()?.item.is_cancelled() {
            self.cancelled = self.cancelled.saturating_sub(1);
            self.heap.pop().map(|e| e.item)
        } else {
            None
        }
    }

    /// When the earliest entry is due, if any.
    #[inline]
    pub fn next_when(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Pops the earliest entry if it is due before `end` (strictly), cancelled or not.
    #[inline]
    pub fn pop_due(&mut self, end: f64) -> Option<T> {
        if self.heap.peek()?.when >= end {
            return None;
        }
        let item = self.heap.pop()?.item;
        if item.is_cancelled() {
            self.cancelled = self.cancelled.saturating_sub(1);
        }
        Some(item)
    }

    /// Removes everything, handing the items back.
    pub fn take_all(&mut self) -> Vec<T> {
        self.cancelled = 0;
        std::mem::take(&mut self.heap)
            .into_vec()
            .into_iter()
            .map(|e| e.item)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct T(u32, Rc<Cell<bool>>);
    impl Cancellable for T {
        fn is_cancelled(&self) -> bool {
            self.1.get()
        }
    }
    fn t(n: u32) -> T {
        T(n, Rc::new(Cell::new(false)))
    }

    fn drain(h: &mut TimerHeap<T>) -> Vec<u32> {
        let mut out = vec![];
        while let Some(x) = h.pop_due(f64::INFINITY) {
            if !x.is_cancelled() {
                out.push(x.0);
            }
        }
        out
    }

    #[test]
    fn ordered_by_when_then_sequence() {
        let mut h = TimerHeap::new();
        h.push(2.0, t(1));
        h.push(1.0, t(2));
        h.push(2.0, t(3));
        h.push(1.0, t(4));
        h.push(0.5, t(5));
        assert_eq!(drain(&mut h), vec![5, 2, 4, 1, 3]);
    }

    #[test]
    fn equal_when_keeps_push_order_at_scale() {
        let mut h = TimerHeap::new();
        for i in 0..1000 {
            h.push(7.0, t(i));
        }
        assert_eq!(drain(&mut h), (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn pop_due_is_strict() {
        let mut h = TimerHeap::new();
        h.push(1.0, t(1));
        assert!(h.pop_due(1.0).is_none());
        assert_eq!(h.pop_due(1.0001).map(|x| x.0), Some(1));
    }

    #[test]
    fn cancelled_head_is_dropped_and_counted() {
        let mut h = TimerHeap::new();
        let a = t(1);
        h.push(1.0, a.clone());
        h.push(2.0, t(2));
        a.1.set(true);
        h.note_cancelled();
        assert_eq!(h.cancelled_count(), 1);
        assert_eq!(h.pop_cancelled_head().map(|x| x.0), Some(1));
        assert_eq!(h.cancelled_count(), 0);
        assert!(h.pop_cancelled_head().is_none());
        assert_eq!(h.next_when(), Some(2.0));
    }

    #[test]
    fn compacts_when_more_than_half_cancelled() {
        let mut h = TimerHeap::new();
        let items: Vec<T> = (0..1000).map(t).collect();
        for (i, it) in items.iter().enumerate() {
            h.push(i as f64, it.clone());
        }
        for it in items.iter().take(500) {
            it.1.set(true);
            h.note_cancelled();
        }
        assert!(!h.wants_compaction());
        items[500].1.set(true);
        h.note_cancelled();
        assert!(h.wants_compaction());
        let mut removed = vec![];
        h.compact(&mut removed);
        assert_eq!(removed.len(), 501);
        assert_eq!(h.len(), 499);
        assert_eq!(h.cancelled_count(), 0);
        assert_eq!(drain(&mut h), (501..1000).collect::<Vec<_>>());
    }

    #[test]
    fn small_heaps_are_never_compacted() {
        let mut h = TimerHeap::new();
        let items: Vec<T> = (0..50).map(t).collect();
        for it in &items {
            h.push(1.0, it.clone());
            it.1.set(true);
            h.note_cancelled();
        }
        assert!(!h.wants_compaction());
    }

    #[test]
    fn nan_does_not_break_the_order_of_the_rest() {
        let mut h = TimerHeap::new();
        h.push(3.0, t(3));
        h.push(f64::NAN, t(99));
        h.push(1.0, t(1));
        h.push(2.0, t(2));
        let first: Vec<u32> = (0..3).map(|_| h.pop_due(10.0).unwrap().0).collect();
        assert_eq!(first, vec![1, 2, 3]);
    }

    #[test]
    fn pop_due_counts_cancelled_items() {
        let mut h = TimerHeap::new();
        let a = t(1);
        h.push(1.0, a.clone());
        a.1.set(true);
        h.note_cancelled();
        let x = h.pop_due(5.0).unwrap();
        assert!(x.is_cancelled());
        assert_eq!(h.cancelled_count(), 0);
    }
}
