//! Shared pieces of oxio's network benchmark tools: command-line flags, CPU pinning,
//! one stream type over TCP and Unix sockets, and a latency histogram.
//!
//! Two binaries use them: `oxio-loadgen` (the load generator, `src/main.rs`) and
//! `echo-ceiling` (a one-thread native echo server, `src/bin/echo-ceiling.rs`). The load
//! generator's TLS client lives in [`tls`].

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};

pub mod tls;

/// Parsed `--name value` / `--name=value` flags, and `--name` switches that take no value.
pub struct Flags {
    values: HashMap<String, String>,
}

impl Flags {
    /// Parses `args` (without the program name), accepting only the flags in `known`, each
    /// with exactly one value.
    pub fn parse<I: IntoIterator<Item = String>>(args: I, known: &[&str]) -> Result<Flags, String> {
        Flags::parse_with_switches(args, known, &[])
    }

    /// Like [`Flags::parse`], also accepting the value-less switches in `switches` (see
    /// [`Flags::is_set`]).
    pub fn parse_with_switches<I: IntoIterator<Item = String>>(
        args: I,
        known: &[&str],
        switches: &[&str],
    ) -> Result<Flags, String> {
        let mut values = HashMap::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            let (name, value) = match body.split_once('=') {
                Some((name, _)) if switches.contains(&name) => {
                    return Err(format!("--{name} takes no value"));
                }
                Some((name, value)) => (name.to_string(), value.to_string()),
                None if switches.contains(&body) => (body.to_string(), String::new()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("--{body} needs a value"))?;
                    (body.to_string(), value)
                }
            };
            if !known.contains(&name.as_str()) && !switches.contains(&name.as_str()) {
                return Err(format!("unknown flag --{name}"));
            }
            if values.insert(name.clone(), value).is_some() {
                return Err(format!("--{name} given twice"));
            }
        }
        Ok(Flags { values })
    }

    /// The flag's value, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Whether the switch (or flag) was given.
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// The flag parsed as `T`, or `default` when absent.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T, String> {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|_| format!("--{name}: cannot parse {text:?}")),
        }
    }

    /// A duration in (possibly fractional) seconds, checked against `0..=max_secs`.
    pub fn seconds(&self, name: &str, default: f64, max_secs: f64) -> Result<f64, String> {
        let secs: f64 = self.parsed(name, default)?;
        if !secs.is_finite() || !(0.0..=max_secs).contains(&secs) {
            return Err(format!("--{name} must be between 0 and {max_secs} seconds"));
        }
        Ok(secs)
    }
}

/// Pins the calling thread (the whole process, when called before any thread starts)
/// to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} out of range"),
        ));
    }
    // SAFETY: `cpu_set_t` is a plain bit array; all zeroes is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu < CPU_SETSIZE` was checked above, so the bit lies inside `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 names the calling thread; the pointer and size describe `set`, a live,
    // initialised `cpu_set_t` that the call only reads.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Where to connect or listen: a TCP address or a Unix socket path.
#[derive(Clone, Debug)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Target {
    /// From `--addr HOST:PORT` or `--unix PATH` (exactly one of them; `default_addr` when
    /// neither is given, if any).
    pub fn from_flags(flags: &Flags, default_addr: Option<&str>) -> Result<Target, String> {
        match (flags.get("addr"), flags.get("unix")) {
            (Some(_), Some(_)) => Err("give --addr or --unix, not both".into()),
            (None, Some(path)) => Ok(Target::Unix(PathBuf::from(path))),
            (addr, None) => {
                let addr = addr
                    .or(default_addr)
                    .ok_or("--addr HOST:PORT or --unix PATH is required")?;
                let resolved = addr
                    .to_socket_addrs()
                    .map_err(|e| format!("--addr {addr}: {e}"))?
                    .next()
                    .ok_or_else(|| format!("--addr {addr}: no address"))?;
                Ok(Target::Tcp(resolved))
            }
        }
    }

    /// Starts a non-blocking connect; completion is seen with [`Stream::connect_state`].
    pub fn connect(&self) -> io::Result<Stream> {
        match self {
            Target::Tcp(addr) => {
                let stream = TcpStream::connect(*addr)?;
                Ok(Stream::Tcp(stream))
            }
            Target::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
        }
    }

    /// Like [`Target::connect`], but for an IPv4 loopback address connects from source
    /// address number `n` of 127.0.0.2..=127.0.0.254 in turn.
    ///
    /// A client that opens and closes connections fast leaves one TIME_WAIT socket per
    /// connection, and with a single source address the kernel's search for a free local
    /// port then dominates the cost of `connect` (most of the client's CPU time, capping the
    /// rate long before the server does). Spreading the source addresses gives every
    /// address its own, nearly empty port space.
    pub fn connect_spread(&self, n: u64) -> io::Result<Stream> {
        match self {
            Target::Tcp(SocketAddr::V4(addr)) if addr.ip().is_loopback() => {
                let source = Ipv4Addr::new(127, 0, 0, 2 + (n % 253) as u8);
                Ok(Stream::Tcp(connect_tcp_from(source, *addr)?))
            }
            _ => self.connect(),
        }
    }
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A non-blocking connect to `dest` from `source`, the local port chosen at connect time
/// (IP_BIND_ADDRESS_NO_PORT) so the whole 4-tuple is considered, not the port alone.
fn connect_tcp_from(source: Ipv4Addr, dest: SocketAddrV4) -> io::Result<TcpStream> {
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: a plain socket(2) call with constant arguments; the result is checked.
    let raw = unsafe { libc::socket(libc::AF_INET, flags, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor owned by nobody else; `OwnedFd` closes it on every
    // early return below.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let one: libc::c_int = 1;
    // SAFETY: `fd` is a live socket; the value pointer and length describe `one`, a c_int
    // that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let local = sockaddr_in(SocketAddrV4::new(source, 0));
    // SAFETY: `local` is an initialised sockaddr_in and the length passed is its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&local as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr_in(dest);
    // SAFETY: `remote` is an initialised sockaddr_in and the length passed is its size.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&remote as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    Ok(TcpStream::from_std(std::net::TcpStream::from(fd)))
}

/// A connected (or connecting) stream socket of either family.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// `Ok(true)` once a non-blocking connect has completed, `Ok(false)` while it is still in
    /// progress, the connect error if it failed.
    pub fn connect_state(&self) -> io::Result<bool> {
        // A connected socket has a peer: one system call in the common case (on loopback
        // the handshake has usually completed by the time connect returns); the pending
        // error is fetched only while there is none.
        let peer = match self {
            Stream::Tcp(s) => s.peer_addr().map(drop),
            Stream::Unix(s) => s.peer_addr().map(drop),
        };
        match peer {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let error = match self {
            Stream::Tcp(s) => s.take_error()?,
            Stream::Unix(s) => s.take_error()?,
        };
        match error {
            Some(error) => Err(error),
            None => Ok(false),
        }
    }

    /// Disables Nagle's algorithm on TCP (no-op on Unix sockets).
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// Reads up to `buf.len()` bytes and drops them; returns how many. TCP drops them in
    /// the kernel (`MSG_TRUNC`, tcp(7)) without copying them into `buf`: an echo client
    /// that only counts what comes back then copies half the bytes it did, so that its
    /// own copying does not cap a fast server. A Unix socket reads them into `buf`.
    pub fn discard(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => {
                // SAFETY: `buf` is writable for its whole length, which is what recv is
                // told; with MSG_TRUNC a TCP socket writes nothing to it at all.
                let n = unsafe {
                    libc::recv(
                        s.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }
            Stream::Unix(s) => s.read(buf),
        }
    }

    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }

    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_vectored(bufs),
            Stream::Unix(s) => s.read_vectored(bufs),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Unix(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(registry, token, interests),
            Stream::Unix(s) => s.register(registry, token, interests),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(registry, token, interests),
            Stream::Unix(s) => s.reregister(registry, token, interests),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Unix(s) => s.deregister(registry),
        }
    }
}

/// A log-linear latency histogram in nanoseconds: exact below 1024 ns, then 1024 buckets per
/// power of two (under 0.1% relative error), up to 2^40 ns (about 18 minutes). Fixed memory,
/// whatever the number of samples.
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BITS: u32 = 10;
const SUB: u64 = 1 << SUB_BITS;
const MAX_BITS: u32 = 40;

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Histogram {
        let buckets = ((MAX_BITS - SUB_BITS + 1) as usize) << SUB_BITS;
        Histogram {
            counts: vec![0; buckets],
            total: 0,
        }
    }

    fn index(value: u64) -> usize {
        let value = value.min((1 << MAX_BITS) - 1);
        if value < SUB {
            return value as usize;
        }
        let top = 63 - value.leading_zeros();
        let shift = top - SUB_BITS;
        ((((shift + 1) as u64) << SUB_BITS) + ((value >> shift) - SUB)) as usize
    }

    /// The midpoint of the values that land in bucket `index`.
    fn value(index: usize) -> f64 {
        let index = index as u64;
        if index < SUB {
            return index as f64;
        }
        let shift = (index >> SUB_BITS) - 1;
        let low = ((index & (SUB - 1)) + SUB) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }

    pub fn record(&mut self, nanos: u64) {
        self.counts[Self::index(nanos)] += 1;
        self.total += 1;
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The `q` quantile (0..=1) in nanoseconds; 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Self::value(index);
            }
        }
        Self::value(self.counts.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_contiguous_and_close() {
        let mut last = 0;
        for value in (0..5_000_000u64).step_by(7) {
            let index = Histogram::index(value);
            assert!(index >= last);
            last = index;
            let back = Histogram::value(index);
            assert!((back - value as f64).abs() <= value as f64 / 1000.0 + 0.5);
        }
    }

    #[test]
    fn histogram_quantiles() {
        let mut h = Histogram::new();
        for v in 1..=100u64 {
            h.record(v * 1000);
        }
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5);
        assert!((p50 - 50_000.0).abs() < 60.0, "{p50}");
        let p99 = h.quantile(0.99);
        assert!((p99 - 99_000.0).abs() < 120.0, "{p99}");
        h.clear();
        assert_eq!(h.quantile(0.5), 0.0);
    }

    #[test]
    fn tcp_discard_counts_bytes_without_copying_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let mut server = Stream::Tcp(TcpStream::from_std(server));
        client.write_all(&[7u8; 100]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut buf = [0u8; 64];
        let mut got = Vec::new();
        loop {
            match server.discard(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.push(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("discard: {e}"),
            }
        }
        assert_eq!(got.iter().sum::<usize>(), 100);
        assert!(got.iter().all(|&n| n <= 64), "{got:?}");
        assert_eq!(buf, [0u8; 64], "MSG_TRUNC copied data");
    }

    #[test]
    fn flags_parse() {
        let args = ["--conns", "4", "--size=10"].map(String::from);
        let flags = Flags::parse(args, &["conns", "size"]).unwrap();
        assert_eq!(flags.parsed("conns", 0usize).unwrap(), 4);
        assert_eq!(flags.parsed("size", 0usize).unwrap(), 10);
        assert_eq!(flags.parsed("other", 7usize).unwrap(), 7);
        assert!(Flags::parse(["--bogus", "1"].map(String::from), &["conns"]).is_err());
        assert!(Flags::parse(["--conns"].map(String::from), &["conns"]).is_err());
    }

    #[test]
    fn flags_switches() {
        let args = ["--tls", "--conns", "4"].map(String::from);
        let flags = Flags::parse_with_switches(args, &["conns"], &["tls"]).unwrap();
        assert!(flags.is_set("tls"));
        assert_eq!(flags.parsed("conns", 0usize).unwrap(), 4);
        let flags =
            Flags::parse_with_switches(["--conns=1"].map(String::from), &["conns"], &["tls"]);
        assert!(!flags.unwrap().is_set("tls"));
        let valued = ["--tls=yes"].map(String::from);
        assert!(Flags::parse_with_switches(valued, &["conns"], &["tls"]).is_err());
        assert!(Flags::parse(["--tls"].map(String::from), &["conns"]).is_err());
    }
}
