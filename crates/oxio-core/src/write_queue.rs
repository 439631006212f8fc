//! The bytes a stream transport has accepted but the kernel has not yet taken.
//!
//! Writes made during one loop iteration pile up here and leave together in one
//! system call before the loop polls again (a vectored write, or for a few small chunks
//! one `send` of them gathered), so a response written as a header and a body costs one
//! system call. Chunks are kept as the caller gave them
//! (the Python binding keeps a reference to an immutable `bytes` instead of copying it);
//! a partial write advances an offset into the first chunk.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// Most chunks handed to one `writev`; Linux's `IOV_MAX` is 1024.
pub const MAX_IOVECS: usize = 64;

/// Room on the stack for one vectored write: [`MAX_IOVECS`] chunks and a tail, left
/// uninitialised until [`WriteQueue`] fills the ones a write uses.
struct IoSlots<'a>([MaybeUninit<IoSlice<'a>>; MAX_IOVECS + 1]);

impl IoSlots<'_> {
    fn new() -> Self {
        Self([const { MaybeUninit::uninit() }; MAX_IOVECS + 1])
    }
}

/// A FIFO of byte chunks with a running total.
///
/// Chunks are never dropped inside a method that writes: [`WriteQueue::write_to`]
/// returns the chunks it finished so the caller can release them where that is safe
/// (for Python objects: with no borrow of the loop's state outstanding).
#[derive(Debug)]
pub struct WriteQueue<B> {
    chunks: VecDeque<B>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Unwritten bytes in the whole queue.
    len: usize,
}

impl<B: AsRef<[u8]>> Default for WriteQueue<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// What one flush achieved.
#[derive(Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The kernel's buffer is full; the rest waits for writability.
    Partial,
}

impl<B: AsRef<[u8]>> WriteQueue<B> {
    /// An empty queue.
    pub fn new() -> Self {
        Self {
            chunks: VecDeque::new(),
            offset: 0,
            len: 0,
        }
    }

    /// Unwritten bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is waiting.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `chunk` after everything else. Empty chunks are not queued (and are
    /// handed back so the caller can release them).
    #[inline]
    pub fn push(&mut self, chunk: B) -> Option<B> {
        let n = chunk.as_ref().len();
        if n == 0 {
            return Some(chunk);
        }
        self.len += n;
        self.chunks.push_back(chunk);
        None
    }

    /// Removes everything unwritten, handing the chunks back.
    pub fn clear(&mut self, released: &mut Vec<B>) {
        released.extend(self.chunks.drain(..));
        self.offset = 0;
        self.len = 0;
    }

    /// Writes as much as the kernel takes, with one `writev` per [`MAX_IOVECS`] chunks,
    /// until the queue is empty or the descriptor would block. Finished chunks are
    /// moved to `released`. `EINTR` is retried; other errors are returned with the queue
    /// left as it was after the last successful write.
    pub fn write_to(&mut self, fd: RawFd, released: &mut Vec<B>) -> io::Result<Flushed> {
        if self.chunks.len() == 1 {
            return self.write_front(fd, released);
        }
        while self.len > 0 {
            let mut slots = IoSlots::new();
            let slices = self.gather(&mut slots, None);
            let asked: usize = slices.iter().map(|s| s.len()).sum();
            let n = match crate::socket_io::write_slices(fd, slices) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partial),
                Err(e) => return Err(e),
            };
            self.consume(n, released);
            if n < asked {
                // A short write on a non-blocking stream: the kernel's buffer is full,
                // and asking again would only return EAGAIN.
                return Ok(if self.len == 0 {
                    Flushed::All
                } else {
                    Flushed::Partial
                });
            }
        }
        Ok(Flushed::All)
    }

    /// [`WriteQueue::write_to`] for a queue of one chunk, the usual flush of a reply:
    /// one `send` of it, with no vector to build and no walk over the chunks written
    /// (about 100 of a 1 KiB echo server's instructions per round trip, callgrind).
    fn write_front(&mut self, fd: RawFd, released: &mut Vec<B>) -> io::Result<Flushed> {
        let unsent = &self.chunks[0].as_ref()[self.offset..];
        let n = match crate::socket_io::send(fd, unsent) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Partial),
            Err(e) => return Err(e),
        };
        self.len -= n;
        if n < unsent.len() {
            self.offset += n;
            return Ok(Flushed::Partial);
        }
        self.offset = 0;
        released.extend(self.chunks.pop_front());
        Ok(Flushed::All)
    }

    /// Writes the queue followed by `tail` (bytes the caller owns only for this call)
    /// with one vectored write, returning how much of `tail` went. What is left of
    /// `tail` is the caller's to queue; a queue left non-empty means the kernel's buffer
    /// is full.
    pub fn write_with_tail(
        &mut self,
        fd: RawFd,
        tail: &[u8],
        released: &mut Vec<B>,
    ) -> io::Result<usize> {
        if self.chunks.len() >= MAX_IOVECS && self.write_to(fd, released)? == Flushed::Partial {
            return Ok(0);
        }
        loop {
            let mut slots = IoSlots::new();
            let slices = self.gather(&mut slots, Some(tail));
            let written = crate::socket_io::write_slices(fd, slices);
            match written {
                Ok(n) => {
                    let queued = self.len;
                    self.consume(n.min(queued), released);
                    return Ok(n.saturating_sub(queued));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) => return Err(e),
            }
        }
    }

    /// The unwritten bytes of the first [`MAX_IOVECS`] chunks, then `tail`, as slices
    /// laid out in `slots`. Only the slots used are written: the common flush is one
    /// chunk, and initialising all 64 cost a 1 KiB echo server 85 instructions per
    /// round trip (3% of its user-space instructions, counted with callgrind).
    fn gather<'a>(
        &'a self,
        slots: &'a mut IoSlots<'a>,
        tail: Option<&'a [u8]>,
    ) -> &'a [IoSlice<'a>] {
        let mut count = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_IOVECS).enumerate() {
            let bytes = chunk.as_ref();
            slots.0[i].write(IoSlice::new(if i == 0 {
                &bytes[self.offset..]
            } else {
                bytes
            }));
            count += 1;
        }
        if let Some(tail) = tail {
            slots.0[count].write(IoSlice::new(tail));
            count += 1;
        }
        // SAFETY: the first `count` slots were initialised just above, and
        // MaybeUninit<IoSlice> has IoSlice's layout.
        unsafe { std::slice::from_raw_parts(slots.0.as_ptr().cast::<IoSlice<'a>>(), count) }
    }

    /// Marks `n` bytes at the front as written.
    pub fn consume(&mut self, mut n: usize, released: &mut Vec<B>) {
        debug_assert!(n <= self.len);
        if n == self.len {
            // Everything went, as it usually does: no per-chunk arithmetic.
            self.len = 0;
            self.offset = 0;
            released.extend(self.chunks.drain(..));
            return;
        }
        self.len -= n;
        while n > 0 {
            let front = self.chunks.front().expect("consumed more than queued");
            let left = front.as_ref().len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            released.extend(self.chunks.pop_front());
        }
    }

    /// The unwritten bytes of the front chunk (what `sendfile`'s fallback or a TLS pump
    /// would take next).
    pub fn front(&self) -> Option<&[u8]> {
        self.chunks.front().map(|c| &c.as_ref()[self.offset..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// Reads `want` bytes from `b`, flushing `q` into `a` again after every read.
    fn read_while_flushing(
        q: &mut WriteQueue<Vec<u8>>,
        a: &UnixStream,
        b: &mut UnixStream,
        released: &mut Vec<Vec<u8>>,
        want: usize,
    ) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        while got.len() < want {
            let n = b.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
            let _ = q.write_to(a.as_raw_fd(), released).unwrap();
        }
        got
    }

    #[test]
    fn header_and_body_leave_in_one_write_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = WriteQueue::new();
        q.push(b"HTTP/1.1 200 OK\r\n\r\n".to_vec());
        q.push(b"hello".to_vec());
        assert_eq!(q.len(), 24);
        let mut released = Vec::new();
        assert_eq!(
            q.write_to(a.as_raw_fd(), &mut released).unwrap(),
            Flushed::All
        );
        assert_eq!(released.len(), 2);
        assert!(q.is_empty());
        let mut buf = [0u8; 64];
        let n = b.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\n\r\nhello");
    }

    #[test]
    fn partial_writes_keep_the_rest_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = WriteQueue::new();
        let total: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
        for piece in total.chunks(100_003) {
            q.push(piece.to_vec());
        }
        let mut released = Vec::new();
        assert_eq!(
            q.write_to(a.as_raw_fd(), &mut released).unwrap(),
            Flushed::Partial
        );
        assert!(!q.is_empty() && q.len() < total.len());
        let got = read_while_flushing(&mut q, &a, &mut b, &mut released, total.len());
        assert!(q.is_empty());
        assert_eq!(got, total);
    }

    #[test]
    fn a_lone_chunk_leaves_in_pieces_and_is_released_once() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = WriteQueue::new();
        let total: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        q.push(total.clone());
        let mut released = Vec::new();
        assert_eq!(
            q.write_to(a.as_raw_fd(), &mut released).unwrap(),
            Flushed::Partial
        );
        assert!(released.is_empty());
        assert_eq!(q.front().unwrap(), &total[total.len() - q.len()..]);
        let got = read_while_flushing(&mut q, &a, &mut b, &mut released, total.len());
        assert!(q.is_empty() && q.front().is_none());
        assert_eq!(released.len(), 1);
        assert_eq!(got, total);
    }

    #[test]
    fn a_borrowed_tail_leaves_with_the_queue() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut q = WriteQueue::new();
        q.push(b"head ".to_vec());
        let mut released = Vec::new();
        assert_eq!(
            q.write_with_tail(a.as_raw_fd(), b"tail", &mut released)
                .unwrap(),
            4
        );
        assert!(q.is_empty());
        let mut buf = [0u8; 16];
        let n = b.read(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"head tail");
    }

    #[test]
    fn empty_chunks_are_handed_back() {
        let mut q: WriteQueue<Vec<u8>> = WriteQueue::new();
        assert!(q.push(Vec::new()).is_some());
        assert!(q.is_empty());
    }

    #[test]
    fn a_closed_peer_is_an_error_and_the_queue_is_kept() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let mut q = WriteQueue::new();
        q.push(b"x".to_vec());
        let mut released = Vec::new();
        let err = q.write_to(a.as_raw_fd(), &mut released).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(q.len(), 1);
    }
}
