//! Rule 4 of the hot path: once warmed up, moving data through a socket with the
//! engine's primitives (queueing writes, flushing them with one vectored write, reading)
//! makes no heap allocation. A counting allocator checks it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use oxio_core::{socket_io, BatchQueue, Flushed, WriteQueue};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local cell, which needs no allocation of its own.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the pointer and layout the caller got from `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(|c| c.get())
}

#[test]
fn echo_steady_state_allocates_nothing() {
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let header: &'static [u8] = b"HTTP/1.1 200 OK\r\n\r\n";
    let body: &'static [u8] = &[7u8; 1024];
    let mut queue: WriteQueue<&'static [u8]> = WriteQueue::new();
    let mut released: Vec<&'static [u8]> = Vec::with_capacity(64);
    let mut read_buf = vec![0u8; 64 * 1024];
    let mut peer_buf = vec![0u8; 64 * 1024];

    let mut round = |queue: &mut WriteQueue<&'static [u8]>, released: &mut Vec<&'static [u8]>| {
        queue.push(header);
        queue.push(body);
        assert_eq!(
            queue.write_to(a.as_raw_fd(), released).unwrap(),
            Flushed::All
        );
        released.clear();
        let n = b.read(&mut peer_buf).unwrap();
        assert_eq!(n, header.len() + body.len());
        std::io::Write::write_all(&mut b, &peer_buf[..n]).unwrap();
        let got = socket_io::recv(a.as_raw_fd(), &mut read_buf).unwrap();
        assert_eq!(got, n);
    };
    for _ in 0..10 {
        round(&mut queue, &mut released); // warm-up: the queue grows to its size
    }
    let before = allocations();
    for _ in 0..1000 {
        round(&mut queue, &mut released);
    }
    assert_eq!(allocations() - before, 0, "steady state allocated");
}

#[test]
fn end_of_iteration_batches_allocate_nothing() {
    // The loop's flush pass: transports queued during an iteration, taken as a batch,
    // handled (which may queue more), given back; then an empty check before the poll.
    let mut queue: BatchQueue<u32> = BatchQueue::new();
    let iteration = |queue: &mut BatchQueue<u32>| {
        for t in 0..16 {
            queue.push(t);
        }
        loop {
            let batch = queue.take_batch();
            if batch.is_empty() {
                break;
            }
            if batch.len() == 16 {
                queue.push(99); // a flush that queues another
            }
            queue.give_back(batch);
        }
    };
    for _ in 0..10 {
        iteration(&mut queue);
    }
    let before = allocations();
    for _ in 0..1000 {
        iteration(&mut queue);
    }
    assert_eq!(allocations() - before, 0, "steady state allocated");
}
