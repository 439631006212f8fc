//! `echo-ceiling`: a one-thread native (mio) echo server, the ceiling that the Python echo
//! servers in `benchmarks/net_servers.py` are measured against.
//!
//! `echo-ceiling [--addr HOST:PORT | --unix PATH] [--cpu N]` (default `--addr 127.0.0.1:0`)
//! prints `LISTENING <port>` (or `LISTENING <path>`) on stdout once bound, echoes every byte
//! back on every connection, closes a connection when the peer has finished sending (after
//! echoing everything), and exits with status 0 on SIGTERM, SIGINT, or end-of-file on stdin
//! (when stdin is a pipe or socket). `--cpu N` pins the process to CPU N.

use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use mio::net::{TcpListener, UnixListener};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use oxio_loadgen::{pin_to_cpu, Flags, Stream, Target};

const USAGE: &str = "usage: echo-ceiling [--addr HOST:PORT | --unix PATH] [--cpu N]";
const LISTENER: Token = Token(usize::MAX - 1);
const STDIN: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
/// The one read buffer all connections share (so it stays in cache).
const READ_BUFFER: usize = 256 * 1024;
/// Reading continues while less than this is waiting to be written back (as an asyncio
/// transport keeps reading while its write buffer grows), then pauses until it drains.
const HIGH_WATER: usize = 4 * 1024 * 1024;
/// Read/write rounds one connection gets per turn before others are served.
const BUDGET: usize = 64;

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Tcp(l) => {
                let (stream, _) = l.accept()?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Listener::Unix(l, _) => Ok(Stream::Unix(l.accept()?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = fs::remove_file(path);
        }
    }
}

struct Conn {
    stream: Stream,
    /// Bytes read but not yet written back (only when a write came up short).
    pending: Vec<u8>,
    /// How much of `pending` has been written.
    sent: usize,
    /// The peer has finished sending: close once `pending` is written.
    eof: bool,
}

enum Pump {
    /// Both directions would block; wait for the next event.
    Blocked,
    /// The turn's budget ran out with work left; serve the connection again soon.
    Again,
    /// End-of-file (everything echoed) or an error: close the connection.
    Close,
}

impl Conn {
    /// Writes out what is pending and reads more, writing what it reads straight back from
    /// the shared buffer, until both directions block. Only what a write leaves over is
    /// copied (into `pending`).
    fn pump(&mut self, scratch: &mut [u8]) -> Pump {
        for _ in 0..BUDGET {
            let mut progressed = false;
            let mut write_blocked = false;
            while self.sent < self.pending.len() {
                match self.stream.write(&self.pending[self.sent..]) {
                    Ok(0) => return Pump::Close,
                    Ok(n) => {
                        self.sent += n;
                        progressed = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        write_blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Pump::Close,
                }
            }
            if self.sent == self.pending.len() {
                self.pending.clear();
                self.sent = 0;
                if self.eof {
                    return Pump::Close;
                }
            } else if self.sent >= self.pending.len() / 2 {
                self.pending.drain(..self.sent);
                self.sent = 0;
            }
            if !self.eof && self.pending.len() - self.sent < HIGH_WATER {
                match self.stream.read(scratch) {
                    Ok(0) if self.pending.is_empty() => return Pump::Close,
                    Ok(0) => self.eof = true,
                    Ok(n) => {
                        progressed = true;
                        let mut written = 0;
                        while self.pending.is_empty() && !write_blocked && written < n {
                            match self.stream.write(&scratch[written..n]) {
                                Ok(0) => return Pump::Close,
                                Ok(k) => written += k,
                                Err(e) if e.kind() == ErrorKind::WouldBlock => write_blocked = true,
                                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                                Err(_) => return Pump::Close,
                            }
                        }
                        self.pending.extend_from_slice(&scratch[written..n]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => progressed = true,
                    Err(_) => return Pump::Close,
                }
            }
            if !progressed {
                return Pump::Blocked;
            }
        }
        Pump::Again
    }
}

/// Blocks SIGTERM and SIGINT and returns a non-blocking signalfd that reports them.
fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` below initialises it before any use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live `sigset_t` owned by this frame, and the signal numbers are
    // valid constants.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    // SAFETY: `set` is initialised; the old-mask pointer may be null. The process has only
    // this thread, so blocking here makes the signals queue for the signalfd instead of
    // running their default action.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: -1 asks for a new descriptor; `set` is initialised; the flags are valid.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor returned by signalfd and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether stdin is a pipe or socket (whose end-of-file means "stop"), and if so makes it
/// non-blocking so it can be drained from the event loop. A terminal, a file or /dev/null
/// is left alone and not watched.
fn watchable_stdin() -> bool {
    // SAFETY: `stat` is plain data and fully written by a successful fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd 0 may be closed, which fstat reports as an error; `st` is writable.
    if unsafe { libc::fstat(0, &mut st) } != 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return false;
    }
    // SAFETY: F_GETFL/F_SETFL on fd 0, which fstat just showed to be open.
    unsafe {
        let flags = libc::fcntl(0, libc::F_GETFL);
        flags >= 0 && libc::fcntl(0, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    }
}

/// Reads everything available from `fd`; true when it reached end-of-file.
fn drained_to_eof(fd: RawFd) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return true;
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => false,
                _ => true,
            };
        }
    }
}

fn bind(target: &Target) -> io::Result<(Listener, String)> {
    match target {
        Target::Tcp(addr) => {
            let listener = TcpListener::bind(*addr)?;
            let port = listener.local_addr()?.port();
            Ok((Listener::Tcp(listener), port.to_string()))
        }
        Target::Unix(path) => {
            if let Ok(meta) = fs::symlink_metadata(path) {
                if meta.file_type().is_socket() {
                    fs::remove_file(path)?;
                }
            }
            let listener = UnixListener::bind(path)?;
            Ok((
                Listener::Unix(listener, path.clone()),
                path.display().to_string(),
            ))
        }
    }
}

fn serve(target: &Target) -> io::Result<()> {
    let signals = signal_fd()?;
    let mut poll = Poll::new()?;
    let mut events = Events::with_capacity(1024);
    let (mut listener, shown) = bind(target)?;
    match &mut listener {
        Listener::Tcp(l) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
        Listener::Unix(l, _) => poll.registry().register(l, LISTENER, Interest::READABLE)?,
    }
    poll.registry().register(
        &mut SourceFd(&signals.as_raw_fd()),
        SIGNALS,
        Interest::READABLE,
    )?;
    if watchable_stdin() {
        poll.registry()
            .register(&mut SourceFd(&0), STDIN, Interest::READABLE)?;
    }
    {
        let mut out = io::stdout().lock();
        writeln!(out, "LISTENING {shown}")?;
        out.flush()?;
    }

    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut ready: Vec<usize> = Vec::new();
    let mut again: Vec<usize> = Vec::new();
    let mut scratch = vec![0u8; READ_BUFFER];
    loop {
        let timeout = if again.is_empty() {
            None
        } else {
            Some(Duration::ZERO)
        };
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        ready.append(&mut again);
        for event in events.iter() {
            match event.token() {
                SIGNALS => return Ok(()),
                STDIN => {
                    if drained_to_eof(0) {
                        return Ok(());
                    }
                }
                LISTENER => loop {
                    let mut stream = match listener.accept() {
                        Ok(stream) => stream,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(e) if e.kind() == ErrorKind::ConnectionAborted => continue,
                        Err(e) => {
                            eprintln!("echo-ceiling: accept: {e}");
                            break;
                        }
                    };
                    let slot = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    poll.registry().register(
                        &mut stream,
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    conns[slot] = Some(Conn {
                        stream,
                        pending: Vec::new(),
                        sent: 0,
                        eof: false,
                    });
                    ready.push(slot);
                },
                Token(slot) => ready.push(slot),
            }
        }
        for slot in ready.drain(..) {
            let Some(conn) = conns.get_mut(slot).and_then(Option::as_mut) else {
                continue;
            };
            match conn.pump(&mut scratch) {
                Pump::Blocked => {}
                Pump::Again => again.push(slot),
                Pump::Close => {
                    if let Some(mut conn) = conns[slot].take() {
                        let _ = poll.registry().deregister(&mut conn.stream);
                    }
                    again.retain(|&s| s != slot);
                    free.push(slot);
                }
            }
        }
    }
}

fn main() -> ExitCode {
    let parsed = Flags::parse(std::env::args().skip(1), &["addr", "unix", "cpu"]).and_then(|f| {
        let target = Target::from_flags(&f, Some("127.0.0.1:0"))?;
        let cpu = match f.get("cpu") {
            None => None,
            Some(_) => Some(f.parsed("cpu", 0usize)?),
        };
        Ok((target, cpu))
    });
    let (target, cpu) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("echo-ceiling: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(cpu) = cpu {
        if let Err(e) = pin_to_cpu(cpu) {
            eprintln!("echo-ceiling: --cpu {cpu}: {e}");
            return ExitCode::from(2);
        }
    }
    match serve(&target) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-ceiling: {e}");
            ExitCode::from(1)
        }
    }
}
