//! Items queued during a loop iteration and handled together at its end.
//!
//! The loop flushes every transport written in an iteration with one pass before it
//! polls again. The pass runs Python (a write can fail and call the protocol), which may
//! queue more items, so the batch is taken out of the queue first; the emptied vector is
//! then given back as the next spare. Two vectors trade places and neither gives up its
//! capacity: once warmed up, queueing and draining allocate nothing (rule 4).

/// A queue drained in batches, whose storage is reused from batch to batch.
#[derive(Debug)]
pub struct BatchQueue<T> {
    queued: Vec<T>,
    spare: Vec<T>,
}

impl<T> Default for BatchQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> BatchQueue<T> {
    /// An empty queue; it allocates on first use.
    pub const fn new() -> Self {
        Self {
            queued: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Queues `item` for the next batch.
    #[inline]
    pub fn push(&mut self, item: T) {
        self.queued.push(item);
    }

    /// True when nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Takes everything queued, in order. The queue keeps the spare vector's storage for
    /// what is queued meanwhile; an empty queue hands out an empty vector and keeps its
    /// own storage.
    pub fn take_batch(&mut self) -> Vec<T> {
        if self.queued.is_empty() {
            return Vec::new();
        }
        let spare = std::mem::take(&mut self.spare);
        std::mem::replace(&mut self.queued, spare)
    }

    /// Gives back a batch's vector once its items are handled. Items still in it are
    /// dropped here, so a caller whose items must be dropped elsewhere (outside a
    /// borrow) clears it first. The larger of the two spares is kept.
    pub fn give_back(&mut self, mut batch: Vec<T>) {
        batch.clear();
        if batch.capacity() > self.spare.capacity() {
            self.spare = batch;
        }
    }

    /// Removes and returns everything, queued and spare, leaving an empty queue.
    pub fn take_all(&mut self) -> Vec<T> {
        self.spare = Vec::new();
        std::mem::take(&mut self.queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_out_in_order_and_items_queued_meanwhile_wait_for_the_next() {
        let mut q = BatchQueue::new();
        q.push(1);
        q.push(2);
        let batch = q.take_batch();
        assert_eq!(batch, [1, 2]);
        assert!(q.is_empty());
        q.push(3); // queued while the batch is handled
        q.give_back(batch);
        assert_eq!(q.take_batch(), [3]);
        assert!(q.take_batch().is_empty());
    }

    #[test]
    fn storage_is_reused_from_batch_to_batch() {
        let mut q = BatchQueue::new();
        for i in 0..8 {
            q.push(i);
        }
        let first = q.take_batch();
        let first_ptr = first.as_ptr();
        q.give_back(first);
        for i in 0..8 {
            q.push(i);
        }
        let second = q.take_batch();
        let second_ptr = second.as_ptr();
        q.give_back(second);
        // An empty take hands out nothing and keeps both vectors.
        assert_eq!(q.take_batch().capacity(), 0);
        for i in 0..8 {
            q.push(i);
        }
        let third = q.take_batch();
        // The two vectors alternate: the third batch lives where the first did.
        assert_ne!(first_ptr, second_ptr);
        assert_eq!(third.as_ptr(), first_ptr);
    }

    #[test]
    fn take_all_empties_the_queue() {
        let mut q = BatchQueue::new();
        q.push("a");
        let batch = q.take_batch();
        q.give_back(batch);
        q.push("b");
        assert_eq!(q.take_all(), ["b"]);
        assert!(q.is_empty());
        assert!(q.take_batch().is_empty());
    }
}
