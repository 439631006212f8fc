//! The queue of callbacks that are ready to run.
//!
//! asyncio runs, in each iteration, exactly the callbacks that were ready when the
//! iteration started; whatever they schedule runs in the next one, after the loop has
//! polled for I/O again. [`ReadyQueue::begin_pass`] is where that boundary is drawn.

use std::collections::VecDeque;

/// FIFO of ready callbacks with asyncio's per-iteration discipline.
///
/// Items are never dropped by the queue itself except through [`ReadyQueue::clear`] and
/// `Drop`; every other removal hands the item back, so a caller holding a lock (or, in
/// the Python binding, the loop's state) can drop it afterwards, outside.
#[derive(Debug)]
pub struct ReadyQueue<T> {
    items: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> ReadyQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            items: VecDeque::with_capacity(1024),
        }
    }

    /// Schedules `item` after everything already queued.
    #[inline]
    pub fn push(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// Puts `item` back at the front: used when an iteration is interrupted (an
    /// exception escapes the loop) so the callbacks it did not reach keep their order.
    #[inline]
    pub fn push_front(&mut self, item: T) {
        self.items.push_front(item);
    }

    /// Starts an iteration's pass: returns how many callbacks it runs. Callbacks pushed
    /// from now on are beyond that count and wait for the next pass.
    #[inline]
    pub fn begin_pass(&self) -> usize {
        self.items.len()
    }

    /// Takes the oldest ready callback.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    /// Number of queued callbacks.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Removes everything, handing the items to the caller to drop.
    pub fn take_all(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.items)
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pass_runs_only_what_was_ready_at_its_start() {
        let mut q = ReadyQueue::new();
        q.push(1);
        q.push(2);
        let n = q.begin_pass();
        let mut ran = vec![];
        for _ in 0..n {
            let item = q.pop().unwrap();
            ran.push(item);
            q.push(item * 10); // scheduled during the pass
        }
        assert_eq!(ran, vec![1, 2]);
        assert_eq!(q.begin_pass(), 2);
        assert_eq!(q.pop(), Some(10));
        assert_eq!(q.pop(), Some(20));
        assert!(q.is_empty());
    }

    #[test]
    fn push_front_restores_order() {
        let mut q = ReadyQueue::new();
        q.push(2);
        q.push(3);
        q.push_front(1);
        assert_eq!(q.take_all().into_iter().collect::<Vec<_>>(), vec![1, 2, 3]);
    }
}
