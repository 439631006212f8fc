//! `oxio-loadgen`: a native, single-threaded (mio) load generator for echo servers.
//!
//! Modes:
//!
//! * `echo` (default): `--conns` connections, each with exactly one message outstanding. A
//!   round trip sends `--size` bytes and waits until exactly `--size` bytes have come back;
//!   its latency runs from the first byte written to the last byte read. The connection then
//!   sends the next message. Reading and writing overlap, so messages larger than the
//!   socket buffers cannot deadlock against a server that echoes as it reads. What comes
//!   back is counted, not checked: over TCP the kernel drops it without copying it out
//!   (`MSG_TRUNC`), which keeps the client ahead of servers that echo 64 KiB and 1 MiB
//!   messages faster than it could copy them.
//! * `connrate`: `--conns` concurrent connection cycles. One cycle (one "request") is: start
//!   a connect; once connected, shut down the write side (the server sees end-of-file);
//!   wait until the server has closed its side (read returns 0); close. A cycle therefore
//!   counts only once the server has accepted the connection, seen its end-of-file and
//!   closed it, so the rate is the server's accept-and-close rate, not the kernel's
//!   backlog. Against an IPv4 loopback address the connections come from source addresses
//!   127.0.0.2..=127.0.0.254 in turn, so that TIME_WAIT sockets from earlier cycles do not
//!   make the client's port search the bottleneck. Latency is the whole cycle. `mib_per_s` is 0. Connects that fail for want of
//!   a local port or a full Unix backlog are retried after 1 ms and counted in `retries`,
//!   not in `errors`; a cycle that fails any other way (reset, refused) counts in `errors`.
//!
//! Output: one JSON line on stdout:
//! `{"requests":..,"seconds":..,"rps":..,"mib_per_s":..,"p50_us":..,"p99_us":..,"errors":..,..}`
//! where `requests` and `seconds` cover the measured period only (after `--warmup`),
//! `mib_per_s` is payload echoed per second in one direction (requests x size / seconds),
//! and `total_requests` also counts the warm-up.
//!
//! Bounds: the measured period ends after `--duration` seconds (at most 3600) or
//! `--max-requests` round trips, whichever comes first; connecting is bounded by 5 s.
//! Exit status: 0 on success; 1 on bad arguments or when connecting fails (no JSON);
//! 3 when connections failed during the run (`errors` > 0) or no request completed in the
//! measured period (JSON printed either way).
//!
//! `--cpu N` pins the process to CPU N (sched_setaffinity) before it connects.
//!
//! TLS (echo mode only): `--tls` makes every connection a TLS 1.3 client session (rustls,
//! ring provider, no session resumption) asking for `--server-name` (default `localhost`).
//! With `--ca PATH` the server's certificate must chain to the PEM certificates in PATH;
//! without it the certificate is not checked (the handshake signature still is). Every
//! handshake completes before the run starts (bounded by 10 s), so none of it counts in
//! the warm-up or the measurement: a round trip is still `--size` bytes of plaintext sent
//! and the same `--size` bytes received back. The JSON line then also has
//! `"tls":"<version> <cipher suite>"`.

use std::io::{self, ErrorKind, Read, Write};
use std::net::Shutdown;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use oxio_loadgen::tls::{self, Connection, TlsStream};
use oxio_loadgen::{pin_to_cpu, Flags, Histogram, Stream, Target};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;

const USAGE: &str = "usage: oxio-loadgen (--addr HOST:PORT | --unix PATH) [--mode echo|connrate] \
[--conns N] [--size BYTES] [--duration SECS] [--warmup SECS] [--max-requests N] [--cpu N] \
[--tls [--ca PATH] [--server-name NAME]]";
const FLAGS: &[&str] = &[
    "addr",
    "unix",
    "mode",
    "conns",
    "size",
    "duration",
    "warmup",
    "max-requests",
    "cpu",
    "ca",
    "server-name",
];
/// Flags that take no value.
const SWITCHES: &[&str] = &["tls"];
const MAX_SECS: f64 = 3600.0;
const MAX_CONNS: usize = 10_000;
const MAX_SIZE: usize = 1 << 30;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// All TLS handshakes together must complete within this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Transient connect failures (port exhaustion, a full Unix backlog) retry after this long.
const RETRY_DELAY: Duration = Duration::from_millis(1);
/// A connrate run gives up after this many failed cycles plus connect retries.
const MAX_CYCLE_ERRORS: u64 = 10_000;
const READ_CHUNK: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Echo,
    ConnRate,
}

struct Config {
    target: Target,
    mode: Mode,
    conns: usize,
    size: usize,
    duration: Duration,
    warmup: Duration,
    max_requests: u64,
    cpu: Option<usize>,
    tls: Option<TlsSettings>,
}

/// What every TLS connection of a run is made with.
struct TlsSettings {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

fn parse_tls(flags: &Flags, mode: Mode) -> Result<Option<TlsSettings>, String> {
    if !flags.is_set("tls") {
        return match ["ca", "server-name"].into_iter().find(|f| flags.is_set(f)) {
            Some(name) => Err(format!("--{name} needs --tls")),
            None => Ok(None),
        };
    }
    if mode != Mode::Echo {
        return Err("--tls works in echo mode only".into());
    }
    Ok(Some(TlsSettings {
        config: tls::client_config(flags.get("ca").map(Path::new))?,
        server_name: tls::server_name(flags.get("server-name").unwrap_or("localhost"))?,
    }))
}

fn parse_config() -> Result<Config, String> {
    let flags = Flags::parse_with_switches(std::env::args().skip(1), FLAGS, SWITCHES)?;
    let target = Target::from_flags(&flags, None)?;
    let mode = match flags.get("mode").unwrap_or("echo") {
        "echo" => Mode::Echo,
        "connrate" => Mode::ConnRate,
        other => return Err(format!("--mode: unknown mode {other:?}")),
    };
    let conns: usize = flags.parsed("conns", 16)?;
    if !(1..=MAX_CONNS).contains(&conns) {
        return Err(format!("--conns must be between 1 and {MAX_CONNS}"));
    }
    let size: usize = flags.parsed("size", 1024)?;
    if !(1..=MAX_SIZE).contains(&size) {
        return Err(format!("--size must be between 1 and {MAX_SIZE}"));
    }
    let duration = Duration::from_secs_f64(flags.seconds("duration", 5.0, MAX_SECS)?);
    let warmup = Duration::from_secs_f64(flags.seconds("warmup", 0.0, MAX_SECS)?);
    let max_requests: u64 = flags.parsed("max-requests", u64::MAX)?;
    if max_requests == 0 {
        return Err("--max-requests must be at least 1".into());
    }
    let cpu = match flags.get("cpu") {
        None => None,
        Some(_) => Some(flags.parsed("cpu", 0usize)?),
    };
    let tls = parse_tls(&flags, mode)?;
    Ok(Config {
        target,
        mode,
        conns,
        size,
        duration,
        warmup,
        max_requests,
        cpu,
        tls,
    })
}

/// Counters and the clock of one run: a warm-up phase, then the measured phase.
struct Meter {
    histogram: Histogram,
    requests: u64,
    total_requests: u64,
    errors: u64,
    retries: u64,
    measuring: bool,
    warm_end: Instant,
    measure_start: Instant,
    end: Instant,
    max_requests: u64,
    /// The negotiated TLS version and cipher suite, in a TLS run.
    tls: Option<String>,
}

impl Meter {
    fn new(cfg: &Config) -> Meter {
        let now = Instant::now();
        let warm_end = now + cfg.warmup;
        Meter {
            histogram: Histogram::new(),
            requests: 0,
            total_requests: 0,
            errors: 0,
            retries: 0,
            measuring: cfg.warmup.is_zero(),
            warm_end,
            measure_start: now,
            end: warm_end + cfg.duration,
            max_requests: cfg.max_requests,
            tls: None,
        }
    }

    /// Moves from warm-up to measuring when its time has come.
    fn tick(&mut self, now: Instant) {
        if !self.measuring && now >= self.warm_end {
            self.measuring = true;
            self.measure_start = now;
            self.requests = 0;
            self.histogram.clear();
        }
    }

    fn done(&self, now: Instant) -> bool {
        now >= self.end || (self.measuring && self.requests >= self.max_requests)
    }

    /// How long the poller may sleep before the next phase change.
    fn timeout(&self, now: Instant) -> Duration {
        let next = if self.measuring {
            self.end
        } else {
            self.warm_end
        };
        next.saturating_duration_since(now)
    }

    fn record(&mut self, started: Instant, now: Instant) {
        self.total_requests += 1;
        self.tick(now);
        if self.measuring {
            self.requests += 1;
            let nanos = now.duration_since(started).as_nanos();
            self.histogram.record(nanos.min(u64::MAX as u128) as u64);
        }
    }

    fn report(&self, cfg: &Config, now: Instant) -> String {
        let seconds = if self.measuring {
            now.duration_since(self.measure_start).as_secs_f64()
        } else {
            0.0
        };
        let rps = if seconds > 0.0 {
            self.requests as f64 / seconds
        } else {
            0.0
        };
        let mib_per_s = match cfg.mode {
            Mode::Echo => rps * cfg.size as f64 / (1024.0 * 1024.0),
            Mode::ConnRate => 0.0,
        };
        let mode = match cfg.mode {
            Mode::Echo => "echo",
            Mode::ConnRate => "connrate",
        };
        let tls = match &self.tls {
            Some(described) => format!(",\"tls\":\"{described}\""),
            None => String::new(),
        };
        format!(
            "{{\"requests\":{},\"seconds\":{:.6},\"rps\":{:.3},\"mib_per_s\":{:.3},\
\"p50_us\":{:.3},\"p99_us\":{:.3},\"errors\":{},\"total_requests\":{},\"retries\":{},\
\"mode\":\"{}\",\"conns\":{},\"size\":{}{}}}",
            self.requests,
            seconds,
            rps,
            mib_per_s,
            self.histogram.quantile(0.50) / 1000.0,
            self.histogram.quantile(0.99) / 1000.0,
            self.errors,
            self.total_requests,
            self.retries,
            mode,
            cfg.conns,
            cfg.size,
            tls,
        )
    }
}

fn poll_once(poll: &mut Poll, events: &mut Events, timeout: Duration) -> io::Result<()> {
    match poll.poll(events, Some(timeout)) {
        Err(e) if e.kind() == ErrorKind::Interrupted => {
            events.clear();
            Ok(())
        }
        other => other,
    }
}

// ---------------------------------------------------------------------------------------
// echo mode

struct EchoConn {
    stream: Connection,
    sent: usize,
    received: usize,
    started: Instant,
    /// False once the connection failed or the run stopped issuing requests on it.
    active: bool,
}

enum Step {
    /// A round trip finished; the caller records it and starts the next one.
    Completed,
    /// Both directions would block: wait for the next event.
    Blocked,
}

impl EchoConn {
    /// Pushes the current round trip as far as the socket allows.
    fn drive(&mut self, message: &[u8], scratch: &mut [u8]) -> io::Result<Step> {
        let size = message.len();
        loop {
            let mut write_blocked = true;
            if self.sent < size {
                match self.stream.write(&message[self.sent..]) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => {
                        self.sent += n;
                        write_blocked = false;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => write_blocked = false,
                    Err(e) => return Err(e),
                }
            }
            let mut read_blocked = true;
            if self.received < size {
                let want = (size - self.received).min(scratch.len());
                match self.stream.discard(&mut scratch[..want]) {
                    Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                    Ok(n) => {
                        self.received += n;
                        read_blocked = false;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => read_blocked = false,
                    Err(e) => return Err(e),
                }
            }
            if self.received == size {
                return Ok(Step::Completed);
            }
            // Once the whole message is out, a read that would block ends the turn: going
            // round again only repeats it (a wasted system call per round trip, a tenth
            // of the client's time at 1 KiB).
            if read_blocked && (write_blocked || self.sent == size) {
                return Ok(Step::Blocked);
            }
        }
    }
}

/// Opens `cfg.conns` connections and waits (bounded) until all are established.
fn connect_all(cfg: &Config, poll: &mut Poll, events: &mut Events) -> Result<Vec<Stream>, String> {
    let mut streams = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let mut stream = cfg
            .target
            .connect()
            .map_err(|e| format!("connect to {:?}: {e}", cfg.target))?;
        poll.registry()
            .register(
                &mut stream,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        streams.push(stream);
    }
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut connected = vec![false; cfg.conns];
    let mut pending = cfg.conns;
    // Connections that completed before the first poll still get their writable edge, so
    // checking on events alone is enough; the first pass checks everything anyway.
    for (i, stream) in streams.iter().enumerate() {
        if stream
            .connect_state()
            .map_err(|e| format!("connect to {:?}: {e}", cfg.target))?
        {
            connected[i] = true;
            pending -= 1;
        }
    }
    while pending > 0 {
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "connect to {:?}: {pending} of {} connections still pending after {:?}",
                cfg.target, cfg.conns, CONNECT_TIMEOUT
            ));
        }
        poll_once(poll, events, deadline - now).map_err(|e| format!("poll: {e}"))?;
        for event in events.iter() {
            let i = event.token().0;
            if connected[i] {
                continue;
            }
            if streams[i]
                .connect_state()
                .map_err(|e| format!("connect to {:?}: {e}", cfg.target))?
            {
                connected[i] = true;
                pending -= 1;
            }
        }
    }
    for stream in &streams {
        stream
            .set_nodelay()
            .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    }
    Ok(streams)
}

/// Starts a TLS session on every stream and waits (bounded) until every handshake is
/// complete; returns the connections and the negotiated version and cipher suite.
fn handshake_all(
    settings: &TlsSettings,
    streams: Vec<Stream>,
    poll: &mut Poll,
    events: &mut Events,
) -> Result<(Vec<Connection>, String), String> {
    let mut sessions = Vec::with_capacity(streams.len());
    for stream in streams {
        let session = TlsStream::new(
            stream,
            settings.config.clone(),
            settings.server_name.clone(),
        )
        .map_err(|e| format!("TLS: {e}"))?;
        sessions.push(session);
    }
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let mut done = vec![false; sessions.len()];
    let mut pending = sessions.len();
    let mut ready: Vec<usize> = (0..sessions.len()).collect();
    loop {
        for &i in &ready {
            if done[i] {
                continue;
            }
            if sessions[i]
                .handshake()
                .map_err(|e| format!("TLS handshake on connection {i}: {e}"))?
            {
                done[i] = true;
                pending -= 1;
            }
        }
        if pending == 0 {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(format!(
                "TLS: {pending} of {} handshakes still pending after {HANDSHAKE_TIMEOUT:?}",
                sessions.len()
            ));
        }
        poll_once(poll, events, deadline - now).map_err(|e| format!("poll: {e}"))?;
        ready.clear();
        ready.extend(events.iter().map(|event| event.token().0));
    }
    let described = sessions[0].describe().unwrap_or_else(|| "?".into());
    let conns = sessions
        .into_iter()
        .map(|session| Connection::Tls(Box::new(session)))
        .collect();
    Ok((conns, described))
}

fn run_echo(cfg: &Config) -> Result<Meter, String> {
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let streams = connect_all(cfg, &mut poll, &mut events)?;
    let (streams, tls) = match &cfg.tls {
        Some(settings) => {
            let (conns, described) = handshake_all(settings, streams, &mut poll, &mut events)?;
            (conns, Some(described))
        }
        None => (streams.into_iter().map(Connection::Plain).collect(), None),
    };
    let message: Vec<u8> = (0..cfg.size).map(|i| (i % 251) as u8).collect();
    let mut scratch = vec![0u8; READ_CHUNK];

    let mut meter = Meter::new(cfg);
    meter.tls = tls;
    let start = Instant::now();
    let mut conns: Vec<EchoConn> = streams
        .into_iter()
        .map(|stream| EchoConn {
            stream,
            sent: 0,
            received: 0,
            started: start,
            active: true,
        })
        .collect();
    let mut alive = conns.len();
    let mut ready: Vec<usize> = (0..conns.len()).collect();
    let registry = poll.registry().try_clone().map_err(|e| e.to_string())?;
    loop {
        for &i in &ready {
            let conn = &mut conns[i];
            if !conn.active {
                continue;
            }
            loop {
                match conn.drive(&message, &mut scratch) {
                    Ok(Step::Blocked) => break,
                    Ok(Step::Completed) => {
                        let now = Instant::now();
                        if meter.done(now) {
                            conn.active = false;
                            break;
                        }
                        meter.record(conn.started, now);
                        if meter.done(now) {
                            conn.active = false;
                            break;
                        }
                        conn.sent = 0;
                        conn.received = 0;
                        conn.started = now;
                    }
                    Err(e) => {
                        if meter.errors == 0 {
                            eprintln!("oxio-loadgen: connection {i}: {e}");
                        }
                        meter.errors += 1;
                        conn.active = false;
                        alive -= 1;
                        let _ = registry.deregister(&mut conn.stream);
                        break;
                    }
                }
            }
        }
        ready.clear();
        let now = Instant::now();
        meter.tick(now);
        if meter.done(now) || alive == 0 {
            return Ok(meter);
        }
        poll_once(&mut poll, &mut events, meter.timeout(now)).map_err(|e| format!("poll: {e}"))?;
        ready.extend(events.iter().map(|event| event.token().0));
    }
}

// ---------------------------------------------------------------------------------------
// connrate mode

enum Phase {
    /// No connection: start one (now, or after a transient failure, at the retry time).
    Idle(Instant),
    Connecting,
    AwaitingEof,
}

struct Cycle {
    stream: Option<Stream>,
    phase: Phase,
    started: Instant,
}

enum CycleStep {
    Waiting,
    Completed,
    Failed(io::Error),
}

impl Cycle {
    /// Once the connect has completed, shuts down the write side (the server then sees
    /// end of file) and awaits the server's: `Ok(true)` then, `Ok(false)` while the
    /// connect is still in progress.
    fn finish_connect(&mut self) -> io::Result<bool> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(false);
        };
        if !stream.connect_state()? {
            return Ok(false);
        }
        stream.shutdown(Shutdown::Write)?;
        self.phase = Phase::AwaitingEof;
        Ok(true)
    }

    /// Moves the cycle on. `readable`: the poll reported the socket readable (or closed
    /// or in error) since the cycle last read it.
    fn advance(&mut self, scratch: &mut [u8], readable: bool) -> CycleStep {
        if let Phase::Connecting = self.phase {
            match self.finish_connect() {
                Ok(false) => return CycleStep::Waiting,
                Ok(true) => {}
                Err(e) => return CycleStep::Failed(e),
            }
            if !readable {
                // The server closes only after it sees this shutdown, so its end-of-file
                // is news to the poll, which will report it: reading now would only
                // find nothing there.
                return CycleStep::Waiting;
            }
        }
        let Some(stream) = self.stream.as_mut() else {
            return CycleStep::Waiting;
        };
        loop {
            match stream.read(scratch) {
                Ok(0) => return CycleStep::Completed,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return CycleStep::Waiting,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return CycleStep::Failed(e),
            }
        }
    }
}

fn transient(e: &io::Error) -> bool {
    e.kind() == ErrorKind::WouldBlock
        || matches!(
            e.raw_os_error(),
            Some(libc::EADDRNOTAVAIL) | Some(libc::EAGAIN) | Some(libc::EINTR)
        )
}

fn run_connrate(cfg: &Config) -> Result<Meter, String> {
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let registry = poll.registry().try_clone().map_err(|e| e.to_string())?;
    let mut scratch = vec![0u8; 4096];
    let mut meter = Meter::new(cfg);
    let start = Instant::now();
    let mut cycles: Vec<Cycle> = (0..cfg.conns)
        .map(|_| Cycle {
            stream: None,
            phase: Phase::Idle(start),
            started: start,
        })
        .collect();
    let mut ready: Vec<(usize, bool)> = Vec::new();
    let mut stopping = false;
    let mut attempts: u64 = 0;
    loop {
        let now = Instant::now();
        // Start cycles on idle slots whose time has come.
        let mut next_retry: Option<Instant> = None;
        for (i, cycle) in cycles.iter_mut().enumerate() {
            let Phase::Idle(at) = cycle.phase else {
                continue;
            };
            if stopping {
                continue;
            }
            if at > now {
                next_retry = Some(next_retry.map_or(at, |r| r.min(at)));
                continue;
            }
            attempts += 1;
            match cfg.target.connect_spread(attempts) {
                Ok(stream) => {
                    cycle.stream = Some(stream);
                    cycle.phase = Phase::Connecting;
                    cycle.started = now;
                    // On loopback the handshake has usually completed by now: shut down
                    // at once and watch for reading only, so that the acknowledgements
                    // of what follows raise no write-space events to wake this client
                    // for nothing. Otherwise (or on any error) watch for the connect too
                    // and let `advance` take it from there. Either way the registration
                    // reports whatever the socket already has.
                    let shut = matches!(cycle.finish_connect(), Ok(true));
                    let interest = if shut {
                        Interest::READABLE
                    } else {
                        Interest::READABLE | Interest::WRITABLE
                    };
                    if let Some(stream) = cycle.stream.as_mut() {
                        registry
                            .register(stream, Token(i), interest)
                            .map_err(|e| format!("register: {e}"))?;
                    }
                    if !shut {
                        ready.push((i, false));
                    }
                }
                Err(e) if transient(&e) => {
                    meter.retries += 1;
                    cycle.phase = Phase::Idle(now + RETRY_DELAY);
                    next_retry = Some(now + RETRY_DELAY);
                }
                Err(e) => return Err(format!("connect to {:?}: {e}", cfg.target)),
            }
        }
        for &(i, readable) in &ready {
            let cycle = &mut cycles[i];
            let step = cycle.advance(&mut scratch, readable);
            let finished_ok = match step {
                CycleStep::Waiting => continue,
                CycleStep::Completed => true,
                CycleStep::Failed(e) => {
                    if meter.errors == 0 || e.kind() == ErrorKind::ConnectionRefused {
                        eprintln!("oxio-loadgen: connection cycle: {e}");
                    }
                    if e.kind() == ErrorKind::ConnectionRefused && meter.total_requests == 0 {
                        return Err(format!("connect to {:?}: {e}", cfg.target));
                    }
                    meter.errors += 1;
                    false
                }
            };
            // Closing the socket (its only descriptor) takes it out of the epoll set
            // (epoll(7)); deregistering first would be one more system call per cycle.
            drop(cycle.stream.take());
            let now = Instant::now();
            if finished_ok && !meter.done(now) {
                meter.record(cycle.started, now);
            }
            cycle.phase = Phase::Idle(now);
            if meter.done(now) {
                stopping = true;
            }
        }
        ready.clear();
        if meter.errors + meter.retries >= MAX_CYCLE_ERRORS {
            eprintln!(
                "oxio-loadgen: giving up after {} failed cycles and {} connect retries",
                meter.errors, meter.retries
            );
            meter.errors = meter.errors.max(1);
            return Ok(meter);
        }
        let now = Instant::now();
        meter.tick(now);
        if stopping || meter.done(now) {
            return Ok(meter);
        }
        let mut timeout = meter.timeout(now);
        if let Some(at) = next_retry {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if cycles
            .iter()
            .any(|c| matches!(c.phase, Phase::Idle(at) if at <= now))
        {
            timeout = Duration::ZERO;
        }
        poll_once(&mut poll, &mut events, timeout).map_err(|e| format!("poll: {e}"))?;
        ready.extend(events.iter().map(|event| {
            let readable = event.is_readable() || event.is_read_closed() || event.is_error();
            (event.token().0, readable)
        }));
    }
}

fn main() -> ExitCode {
    let cfg = match parse_config() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("oxio-loadgen: {e}\n{USAGE}");
            return ExitCode::from(1);
        }
    };
    if let Some(cpu) = cfg.cpu {
        if let Err(e) = pin_to_cpu(cpu) {
            eprintln!("oxio-loadgen: --cpu {cpu}: {e}");
            return ExitCode::from(1);
        }
    }
    let result = match cfg.mode {
        Mode::Echo => run_echo(&cfg),
        Mode::ConnRate => run_connrate(&cfg),
    };
    match result {
        Ok(meter) => {
            println!("{}", meter.report(&cfg, Instant::now()));
            if meter.errors > 0 {
                ExitCode::from(3)
            } else if meter.requests == 0 {
                match cfg.mode {
                    Mode::Echo => eprintln!("oxio-loadgen: no round trip completed"),
                    Mode::ConnRate => eprintln!(
                        "oxio-loadgen: no connection cycle completed (the server never closed \
                         a connection after the client's end-of-file)"
                    ),
                }
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("oxio-loadgen: {e}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream as StdTcpStream};

    /// A connrate run of at most 200 cycles (and 5 s) against a server thread that hands
    /// each accepted connection to `serve`.
    fn connrate_against(serve: fn(StdTcpStream)) -> Meter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(conn) => serve(conn),
                    Err(_) => return,
                }
            }
        });
        let cfg = Config {
            target: Target::Tcp(addr),
            mode: Mode::ConnRate,
            conns: 4,
            size: 0,
            duration: Duration::from_secs(5),
            warmup: Duration::ZERO,
            max_requests: 200,
            cpu: None,
            tls: None,
        };
        run_connrate(&cfg).unwrap()
    }

    #[test]
    fn connrate_cycles_complete_when_the_server_closes_after_the_clients_eof() {
        let meter = connrate_against(|mut conn| {
            let mut buf = [0u8; 64];
            while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
        });
        assert_eq!(meter.errors, 0);
        assert_eq!(meter.requests, 200);
    }

    #[test]
    fn connrate_cycles_complete_when_the_server_closes_before_the_clients_eof() {
        // The end-of-file can arrive before the client shuts down its side (and before
        // the cycle first reads): the cycle must still see it and complete.
        let meter = connrate_against(drop);
        assert_eq!(meter.errors, 0);
        assert_eq!(meter.requests, 200);
    }
}
