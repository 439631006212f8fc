//! oxio's event-loop engine: everything about running an asyncio-shaped loop that can
//! be reasoned about without Python.
//!
//! The pieces are small and independent, as libuv's are to uvloop:
//! - [`addr`]: address literals, so that `getaddrinfo` of a numeric host needs no libc;
//! - [`clock`]: the loop's monotonic clock (the clock `time.monotonic()` reads);
//! - [`TimerHeap`]: delayed calls ordered by (when, sequence) with O(1) cancellation;
//! - [`ReadyQueue`]: the callbacks that run in the next iteration;
//! - [`BatchQueue`]: what an iteration queues for one pass at its end (the transports
//!   to flush), reusing its storage from pass to pass;
//! - [`Poller`]: readiness of raw file descriptors, over mio;
//! - [`Waker`]: wakes a loop that is blocked in its poller, from any thread;
//! - [`socket_io`]: non-blocking socket calls (`recv`, vectored `send`, `sendfile`);
//! - [`WriteQueue`]: a transport's unwritten bytes, flushed with one vectored write;
//! - [`EventLoop`]: a pure-Rust loop assembled from the above, used by the examples and
//!   the tests, and the reference for how the Python binding drives the same parts.

pub mod addr;
pub mod batch_queue;
pub mod clock;
pub mod event_loop;
pub mod poller;
pub mod ready_queue;
pub mod socket_io;
pub mod timer_heap;
pub mod waker;
pub mod write_queue;

pub use batch_queue::BatchQueue;
pub use event_loop::{CallbackHandle, EventLoop};
pub use poller::{Interest, Poller, Readiness};
pub use ready_queue::ReadyQueue;
pub use timer_heap::{Cancellable, TimerHeap};
pub use waker::Waker;
pub use write_queue::{Flushed, WriteQueue};

/// Longest time the loop blocks in one poll, as asyncio's `MAXIMUM_SELECT_TIMEOUT`:
/// a timer scheduled further away than a day is still found by a later iteration.
pub const MAXIMUM_POLL_TIMEOUT: f64 = 24.0 * 3600.0;
