//! Address literals: `getaddrinfo` answered without libc for numeric hosts.
//!
//! [`resolve_literal`] takes what `getaddrinfo(3)` takes (host, service, hints) and
//! returns the entries glibc's `getaddrinfo` returns for the same input, or `None` when
//! the input is not something this module answers with certainty. `None` never means
//! "error": the caller then asks the real resolver, which answers or raises exactly as
//! it would have. So every path here either matches glibc or declines; when in doubt
//! it declines.
//!
//! What is answered:
//! - hosts that glibc reads as IPv4 numbers (`inet_aton` forms: `127.0.0.1`, `127.1`,
//!   `0x7f.1`, `2130706433`, octal parts) and IPv6 literals (`::1`, `::ffff:1.2.3.4`);
//! - services given as a decimal port (0..=65535), the empty string (port 0, as glibc
//!   reads it), or no service at all;
//! - families `AF_UNSPEC`, `AF_INET`, `AF_INET6`; socket types 0, `SOCK_STREAM`,
//!   `SOCK_DGRAM`, `SOCK_RAW` with protocols 0, TCP, UDP;
//! - flags `AI_PASSIVE` (no effect with a host), `AI_CANONNAME`, `AI_NUMERICHOST`,
//!   `AI_NUMERICSERV`, `AI_V4MAPPED`, `AI_ALL`.
//!
//! What is declined: scope ids (`fe80::1%eth0`, which need the interface table), service
//! names, `AI_ADDRCONFIG` (depends on the host's configured addresses), IPv6 literals
//! asked for as `AF_INET`, and every combination that makes glibc fail.
//!
//! The glibc behaviour is what this module reproduces; on other C libraries
//! [`resolve_literal`] declines everything (the parsers and formatters still work).

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Whether the platform's resolver is glibc's, whose answers [`resolve_literal`] mirrors.
pub const GLIBC_SEMANTICS: bool = cfg!(all(target_os = "linux", target_env = "gnu"));

/// A numeric host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostLiteral {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// Parses `s` as an IPv4 address the way glibc's `getaddrinfo` does for a numeric host
/// (`inet_aton`, with nothing allowed after the number): one to four parts separated by
/// dots, each decimal, octal (leading `0`) or hexadecimal (`0x`); the last part fills the
/// bytes the earlier parts left. `"127.1"` is `127.0.0.1`, `"2130706433"` too.
pub fn parse_ipv4(s: &[u8]) -> Option<Ipv4Addr> {
    if s.is_empty() {
        return None;
    }
    let mut parts = [0u32; 4];
    let mut count = 0;
    for part in s.split(|&b| b == b'.') {
        if count == 4 {
            return None;
        }
        parts[count] = parse_aton_part(part)?;
        count += 1;
    }
    let (last, leading) = (parts[count - 1], &parts[..count - 1]);
    if leading.iter().any(|&p| p > 0xff) {
        return None;
    }
    // The last part holds the bytes that the leading parts did not give.
    let last_bits = 8 * (4 - leading.len() as u32);
    if last_bits < 32 && last >> last_bits != 0 {
        return None;
    }
    let mut value: u32 = 0;
    for (i, &p) in leading.iter().enumerate() {
        value |= p << (24 - 8 * i);
    }
    Some(Ipv4Addr::from(value | last))
}

/// One `inet_aton` part: a non-empty number starting with a digit, in base 16 after
/// `0x`/`0X`, base 8 after a leading `0`, else base 10; at most `0xffffffff`.
fn parse_aton_part(part: &[u8]) -> Option<u32> {
    let (digits, radix) = match part {
        [b'0', b'x' | b'X', rest @ ..] => (rest, 16),
        [b'0', rest @ ..] => (rest, 8),
        [b'1'..=b'9', ..] => (part, 10),
        _ => return None,
    };
    if radix == 16 && digits.is_empty() {
        return None; // "0x" alone: the number ends at the 'x', which is left over
    }
    let mut value: u64 = 0;
    for &b in digits {
        let d = (b as char).to_digit(radix)?;
        value = value * u64::from(radix) + u64::from(d);
        if value > u64::from(u32::MAX) {
            return None;
        }
    }
    Some(value as u32)
}

/// Parses `s` as an IPv6 address as glibc's `inet_pton(AF_INET6)` does: eight groups of
/// one to four hex digits, at most one `::` standing for one or more zero groups, and
/// optionally a dotted-quad IPv4 address (four decimal parts, no leading zeros) as the
/// last 32 bits. A scope id (`%eth0`) is not parsed: the caller declines those.
pub fn parse_ipv6(s: &[u8]) -> Option<Ipv6Addr> {
    let mut groups = [0u16; 8];
    let mut n = 0; // groups written
    let mut gap: Option<usize> = None; // where "::" stands, as an index into `groups`
    let mut rest = s;
    if let Some(tail) = rest.strip_prefix(b"::") {
        gap = Some(0);
        rest = tail;
    } else if rest.first() == Some(&b':') {
        return None;
    }
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == b':').unwrap_or(rest.len());
        let token = &rest[..end];
        if end == rest.len() && token.contains(&b'.') {
            // The IPv4 tail: two groups' worth, and nothing after it.
            if n > 6 {
                return None;
            }
            let v4 = parse_dotted_quad(token)?.octets();
            groups[n] = u16::from_be_bytes([v4[0], v4[1]]);
            groups[n + 1] = u16::from_be_bytes([v4[2], v4[3]]);
            n += 2;
            break;
        }
        if token.is_empty() || token.len() > 4 || n == 8 {
            return None;
        }
        let mut g: u16 = 0;
        for &b in token {
            g = (g << 4) | (b as char).to_digit(16)? as u16;
        }
        groups[n] = g;
        n += 1;
        rest = &rest[end..];
        if rest.is_empty() {
            break;
        }
        // `rest` starts with ':'. "::" marks the gap (once); a lone ':' needs a group after.
        if let Some(tail) = rest.strip_prefix(b"::") {
            if gap.is_some() {
                return None;
            }
            gap = Some(n);
            rest = tail;
        } else {
            rest = &rest[1..];
            if rest.is_empty() {
                return None;
            }
        }
    }
    match gap {
        None if n == 8 => {}
        Some(at) if n < 8 => {
            // Move the groups written after the gap to the end; zeros fill the gap.
            let after = n - at;
            groups.copy_within(at..n, 8 - after);
            groups[at..8 - after].fill(0);
        }
        _ => return None,
    }
    Some(Ipv6Addr::from(groups))
}

/// Strict dotted quad, as `inet_pton(AF_INET)`: exactly four decimal parts 0..=255,
/// one to three digits each, no leading zero except "0" itself.
fn parse_dotted_quad(s: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut count = 0;
    for part in s.split(|&b| b == b'.') {
        if count == 4
            || part.is_empty()
            || part.len() > 3
            || (part.len() > 1 && part[0] == b'0')
            || !part.iter().all(u8::is_ascii_digit)
        {
            return None;
        }
        let v = part.iter().fold(0u32, |v, &b| v * 10 + u32::from(b - b'0'));
        octets[count] = u8::try_from(v).ok()?;
        count += 1;
    }
    (count == 4).then_some(Ipv4Addr::from(octets))
}

/// Parses a numeric host as `getaddrinfo` tries it: IPv4 (`inet_aton` forms) first, then
/// IPv6. `None` for anything else, including scope ids and surrounding whitespace.
pub fn parse_host(s: &[u8]) -> Option<HostLiteral> {
    if let Some(v4) = parse_ipv4(s) {
        return Some(HostLiteral::V4(v4));
    }
    parse_ipv6(s).map(HostLiteral::V6)
}

/// Parses a service string that glibc reads as a port number: one or more decimal digits
/// with a value at most 65535 (leading zeros allowed). Everything else is `None` and the
/// caller declines: names like "http", signs and spaces (which glibc reads in ways of its
/// own), larger values (which it wraps), and the empty string (port 0, except that a
/// `SOCK_RAW` request accepts it as it accepts no service at all).
pub fn parse_port(s: &[u8]) -> Option<u16> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut value: u32 = 0;
    for &b in s {
        value = value * 10 + u32::from(b - b'0');
        if value > u32::from(u16::MAX) {
            return None;
        }
    }
    Some(value as u16)
}

/// Formats an IPv4 address as `inet_ntop` does: dotted decimal.
pub fn format_ipv4(addr: Ipv4Addr) -> String {
    let [a, b, c, d] = addr.octets();
    format!("{a}.{b}.{c}.{d}")
}

/// Formats an IPv6 address as glibc's `inet_ntop` does (and so as Python's
/// `socket.getaddrinfo` reports it). Groups print as lowercase hex without leading
/// zeros; the longest run of two or more zero groups (the first of equally long runs)
/// becomes `::`; and an address whose first six groups are zero (with the seventh
/// non-zero) or whose first five are zero and sixth is `ffff` prints its last 32 bits as
/// a dotted quad (`::1.2.3.4`, `::ffff:1.2.3.4`). Unlike RFC 5952 a single zero group
/// is never shortened.
pub fn format_ipv6(addr: Ipv6Addr) -> String {
    let g = addr.segments();
    // Longest run of zero groups; the first wins a tie.
    let (mut best_at, mut best_len) = (0, 0);
    let mut i = 0;
    while i < 8 {
        if g[i] != 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < 8 && g[i] == 0 {
            i += 1;
        }
        if i - start > best_len {
            (best_at, best_len) = (start, i - start);
        }
    }
    let gap = (best_len >= 2).then_some(best_at..best_at + best_len);
    let embeds_v4 =
        best_len >= 2 && best_at == 0 && (best_len == 6 || (best_len == 5 && g[5] == 0xffff));
    let mut out = String::with_capacity(41);
    let mut i = 0;
    while i < 8 {
        if let Some(gap) = gap.as_ref().filter(|r| r.contains(&i)) {
            out.push_str("::");
            i = gap.end;
            continue;
        }
        if i > 0 && !out.ends_with(':') {
            out.push(':');
        }
        if i == 6 && embeds_v4 {
            let [.., a, b, c, d] = addr.octets();
            let _ = write!(out, "{a}.{b}.{c}.{d}");
            break;
        }
        let _ = write!(out, "{:x}", g[i]);
        i += 1;
    }
    out
}

/// `getaddrinfo` flag bits (glibc's values, which are the platform's on Linux).
pub mod flags {
    pub const AI_PASSIVE: i32 = libc::AI_PASSIVE;
    pub const AI_CANONNAME: i32 = libc::AI_CANONNAME;
    pub const AI_NUMERICHOST: i32 = libc::AI_NUMERICHOST;
    pub const AI_V4MAPPED: i32 = libc::AI_V4MAPPED;
    pub const AI_ALL: i32 = libc::AI_ALL;
    pub const AI_ADDRCONFIG: i32 = libc::AI_ADDRCONFIG;
    pub const AI_NUMERICSERV: i32 = libc::AI_NUMERICSERV;
}
use flags::*;

/// The flags [`resolve_literal`] knows the effect of on a numeric host. Any other bit
/// (`AI_ADDRCONFIG`, `AI_IDN`, unknown bits that glibc rejects) makes it decline.
const HANDLED_FLAGS: i32 =
    AI_PASSIVE | AI_CANONNAME | AI_NUMERICHOST | AI_V4MAPPED | AI_ALL | AI_NUMERICSERV;

/// The `hints` argument of `getaddrinfo`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub family: i32,
    pub socktype: i32,
    pub protocol: i32,
    pub flags: i32,
}

/// The socket address of an entry; IPv6 ones have flowinfo and scope id 0 (scope ids
/// are declined, so never set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SockAddr {
    V4(Ipv4Addr, u16),
    V6(Ipv6Addr, u16),
}

impl SockAddr {
    /// The host as `socket.getaddrinfo` reports it (`inet_ntop`'s text).
    pub fn host_text(&self) -> String {
        match *self {
            SockAddr::V4(a, _) => format_ipv4(a),
            SockAddr::V6(a, _) => format_ipv6(a),
        }
    }

    pub fn port(&self) -> u16 {
        match *self {
            SockAddr::V4(_, p) | SockAddr::V6(_, p) => p,
        }
    }
}

/// One `struct addrinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrInfo {
    pub family: i32,
    pub socktype: i32,
    pub protocol: i32,
    /// `ai_canonname`: with `AI_CANONNAME`, the host as given, on the first entry only.
    pub canonname: Option<String>,
    pub addr: SockAddr,
}

/// The (socket type, protocol) pairs glibc returns for the hints' type and protocol, or
/// `None` for the combinations it rejects or that are not handled here. `SOCK_RAW`
/// takes no service; asked for with type 0, it comes last and with the port anyway.
fn socket_kinds(socktype: i32, protocol: i32, has_service: bool) -> Option<Vec<(i32, i32)>> {
    use libc::{IPPROTO_TCP as TCP, IPPROTO_UDP as UDP, SOCK_DGRAM, SOCK_RAW, SOCK_STREAM};
    Some(match (socktype, protocol) {
        (0, 0) => vec![(SOCK_STREAM, TCP), (SOCK_DGRAM, UDP), (SOCK_RAW, 0)],
        (0 | SOCK_STREAM, TCP) | (SOCK_STREAM, 0) => vec![(SOCK_STREAM, TCP)],
        (0 | SOCK_DGRAM, UDP) | (SOCK_DGRAM, 0) => vec![(SOCK_DGRAM, UDP)],
        (SOCK_RAW, 0 | TCP | UDP) if !has_service => vec![(SOCK_RAW, protocol)],
        _ => return None,
    })
}

/// What glibc's `getaddrinfo(host, service, hints)` returns when `host` is a numeric
/// literal, or `None` to decline (not a literal, or an input whose answer is not
/// certain). `port` is the parsed service ([`parse_port`]); `None` means no service
/// (a NULL `service` pointer), which is not the same as port 0 for `SOCK_RAW`.
pub fn resolve_literal(host: &[u8], port: Option<u16>, hints: Hints) -> Option<Vec<AddrInfo>> {
    if !GLIBC_SEMANTICS || hints.flags & !HANDLED_FLAGS != 0 {
        return None;
    }
    let family = hints.family;
    if ![libc::AF_UNSPEC, libc::AF_INET, libc::AF_INET6].contains(&family) {
        return None;
    }
    let kinds = socket_kinds(hints.socktype, hints.protocol, port.is_some())?;
    let p = port.unwrap_or(0);
    let (ai_family, addr) = match parse_host(host)? {
        HostLiteral::V4(a) if family != libc::AF_INET6 => (libc::AF_INET, SockAddr::V4(a, p)),
        HostLiteral::V4(a) if hints.flags & AI_V4MAPPED != 0 => {
            (libc::AF_INET6, SockAddr::V6(a.to_ipv6_mapped(), p))
        }
        HostLiteral::V6(a) if family != libc::AF_INET => (libc::AF_INET6, SockAddr::V6(a, p)),
        // IPv4 for AF_INET6 without AI_V4MAPPED fails; IPv6 for AF_INET fails or is
        // unmapped by glibc. Both are left to it.
        _ => return None,
    };
    let mut canonname = (hints.flags & AI_CANONNAME != 0)
        // The literal is ASCII: it parsed.
        .then(|| String::from_utf8_lossy(host).into_owned());
    Some(
        kinds
            .into_iter()
            .map(|(socktype, protocol)| AddrInfo {
                family: ai_family,
                socktype,
                protocol,
                canonname: canonname.take(),
                addr,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use libc::{AF_INET, AF_INET6, AF_UNSPEC, SOCK_DGRAM, SOCK_RAW, SOCK_STREAM};

    fn v4(s: &str) -> Option<String> {
        parse_ipv4(s.as_bytes()).map(format_ipv4)
    }

    fn v6(s: &str) -> Option<String> {
        parse_ipv6(s.as_bytes()).map(format_ipv6)
    }

    #[test]
    fn ipv4_dotted_quad() {
        assert_eq!(v4("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("0.0.0.0").as_deref(), Some("0.0.0.0"));
        assert_eq!(v4("255.255.255.255").as_deref(), Some("255.255.255.255"));
        assert_eq!(v4("256.0.0.1"), None);
        assert_eq!(v4("1.2.3.256"), None);
    }

    #[test]
    fn ipv4_inet_aton_forms() {
        assert_eq!(v4("127.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("1.2.3").as_deref(), Some("1.2.0.3"));
        assert_eq!(v4("0x7f.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("0X7F.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("2130706433").as_deref(), Some("127.0.0.1"));
        assert_eq!(v4("4294967295").as_deref(), Some("255.255.255.255"));
        assert_eq!(v4("0xFFFFFFFF").as_deref(), Some("255.255.255.255"));
        assert_eq!(
            v4("0377.0377.0377.0377").as_deref(),
            Some("255.255.255.255")
        );
        assert_eq!(v4("010.0.0.1").as_deref(), Some("8.0.0.1"));
        assert_eq!(v4("01.02.03.04").as_deref(), Some("1.2.3.4"));
        assert_eq!(v4("1.2.65535").as_deref(), Some("1.2.255.255"));
        assert_eq!(v4("1.16777215").as_deref(), Some("1.255.255.255"));
        assert_eq!(v4("0").as_deref(), Some("0.0.0.0"));
    }

    #[test]
    fn ipv4_rejects() {
        for s in [
            "",
            ".",
            "1.",
            "1.2.3.",
            ".1",
            "1..2",
            "1.2.3.4.5",
            "4294967296",
            "0x",
            "0x.1",
            "1.0x",
            "08",
            "1.2.3.08",
            "0400.1.1.1",
            "1.2.65536",
            "1.16777216",
            " 127.0.0.1",
            "127.0.0.1 ",
            "127.0.0.1\0",
            "+1",
            "-1",
            "1.-2",
            "a",
            "1e3",
            "١٢٧.0.0.1",
        ] {
            assert_eq!(v4(s), None, "{s:?}");
        }
    }

    #[test]
    fn ipv6_parse_and_canonical_text() {
        let cases = [
            ("::1", "::1"),
            ("::", "::"),
            ("::0:1", "::1"),
            ("0:0:0:0:0:0:0:1", "::1"),
            ("fe80::1", "fe80::1"),
            ("2001:0db8:0000::0001", "2001:db8::1"),
            ("2001:DB8::A", "2001:db8::a"),
            ("::ffff:127.0.0.1", "::ffff:127.0.0.1"),
            ("::FFFF:1.2.3.4", "::ffff:1.2.3.4"),
            ("::ffff:7f00:1", "::ffff:127.0.0.1"),
            ("::127.0.0.1", "::127.0.0.1"),
            ("::0.0.0.1", "::1"),
            ("::0:1.2.3.4", "::1.2.3.4"),
            ("0:0:0:0:0:0:1.2.3.4", "::1.2.3.4"),
            ("::1:2", "::0.1.0.2"),
            ("::ffff:0:0", "::ffff:0.0.0.0"),
            ("::ffff:1:2", "::ffff:0.1.0.2"),
            ("::ffff:0:1.2.3.4", "::ffff:0:102:304"),
            ("64:ff9b::1.2.3.4", "64:ff9b::102:304"),
            ("0:0:0:0:0:1:0:0", "::1:0:0"),
            ("1:0:0:2:0:0:0:3", "1:0:0:2::3"),
            ("1:0:0:0:2:0:0:3", "1::2:0:0:3"),
            ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),
            ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),
            ("::2:3:4:5:6:7:8", "0:2:3:4:5:6:7:8"),
            ("1::", "1::"),
            ("1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:0"),
            ("1:2:3:4:5:6::7", "1:2:3:4:5:6:0:7"),
            ("1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:102:304"),
            ("::1:2:3:4:5:1.2.3.4", "0:1:2:3:4:5:102:304"),
        ];
        for (input, text) in cases {
            assert_eq!(v6(input).as_deref(), Some(text), "{input:?}");
        }
    }

    #[test]
    fn ipv6_rejects() {
        for s in [
            "",
            ":",
            ":::",
            "::1:",
            ":1::",
            "1:",
            "1::2::3",
            "::00001",
            "1:2:3:4::5:6:7:8",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7",
            "1::2:3:4:5:6:1.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "::01.2.3.4",
            "::1.2.3",
            "::1.2.3.4.5",
            "::256.1.1.1",
            "::1.2.3.4:5",
            "1.2.3.4",
            "::g",
            "fe80::1%lo",
            "fe80::1%1",
            "[::1]",
            " ::1",
            "::1 ",
            "::1\0",
        ] {
            assert_eq!(v6(s), None, "{s:?}");
        }
    }

    #[test]
    fn format_ipv6_round_trips_every_zero_pattern() {
        // Every pattern of zero / non-zero groups: the text parses back to the address,
        // and a `::` appears exactly when a run of two or more zero groups exists.
        for mask in 0u32..256 {
            let segs: [u16; 8] = std::array::from_fn(|i| {
                if mask & (1 << i) != 0 {
                    0x1a + i as u16
                } else {
                    0
                }
            });
            let addr = Ipv6Addr::from(segs);
            let text = format_ipv6(addr);
            assert_eq!(parse_ipv6(text.as_bytes()), Some(addr), "{text}");
            let has_run = (0..7).any(|i| segs[i] == 0 && segs[i + 1] == 0);
            assert_eq!(text.contains("::"), has_run, "{text}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_port(b"80"), Some(80));
        assert_eq!(parse_port(b"080"), Some(80));
        assert_eq!(parse_port(b"0000000000080"), Some(80));
        assert_eq!(parse_port(b"65535"), Some(65535));
        for s in [
            "",
            "65536",
            "4294967376",
            "-1",
            "+80",
            " 80",
            "80 ",
            "http",
            "0x50",
            "8\x000",
        ] {
            assert_eq!(parse_port(s.as_bytes()), None, "{s:?}");
        }
    }

    fn hints(family: i32, socktype: i32, protocol: i32, flags: i32) -> Hints {
        Hints {
            family,
            socktype,
            protocol,
            flags,
        }
    }

    /// (family, socktype, protocol, canonname, host text, port)
    type Shape<'a> = (i32, i32, i32, Option<&'a str>, String, u16);

    fn shape(r: &[AddrInfo]) -> Vec<Shape<'_>> {
        r.iter()
            .map(|e| {
                let c = e.canonname.as_deref();
                (
                    e.family,
                    e.socktype,
                    e.protocol,
                    c,
                    e.addr.host_text(),
                    e.addr.port(),
                )
            })
            .collect()
    }

    #[test]
    fn resolve_default_hints_give_three_kinds_in_glibc_order() {
        if !GLIBC_SEMANTICS {
            return;
        }
        let r = resolve_literal(b"127.0.0.1", Some(80), Hints::default()).unwrap();
        let l = "127.0.0.1".to_string();
        assert_eq!(
            shape(&r),
            vec![
                (AF_INET, SOCK_STREAM, libc::IPPROTO_TCP, None, l.clone(), 80),
                (AF_INET, SOCK_DGRAM, libc::IPPROTO_UDP, None, l.clone(), 80),
                (AF_INET, SOCK_RAW, 0, None, l, 80),
            ]
        );
        let r = resolve_literal(b"::0:1", None, Hints::default()).unwrap();
        assert!(r
            .iter()
            .all(|e| e.family == AF_INET6 && e.addr.host_text() == "::1"));
        assert!(r.iter().all(|e| e.addr.port() == 0));
    }

    #[test]
    fn resolve_canonname_on_first_entry_only() {
        if !GLIBC_SEMANTICS {
            return;
        }
        let r = resolve_literal(b"127.1", Some(1), hints(0, 0, 0, AI_CANONNAME)).unwrap();
        let names: Vec<_> = r.iter().map(|e| e.canonname.as_deref()).collect();
        assert_eq!(names, vec![Some("127.1"), None, None]);
        assert_eq!(r[0].addr.host_text(), "127.0.0.1");
    }

    #[test]
    fn resolve_families() {
        if !GLIBC_SEMANTICS {
            return;
        }
        let stream = |family, flags| hints(family, SOCK_STREAM, 0, flags);
        let r = resolve_literal(b"10.0.0.1", Some(5), stream(AF_UNSPEC, 0)).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].family, AF_INET);
        assert!(resolve_literal(b"10.0.0.1", Some(5), stream(AF_INET6, 0)).is_none());
        assert!(resolve_literal(b"10.0.0.1", Some(5), stream(AF_INET6, AI_ALL)).is_none());
        let r = resolve_literal(b"10.0.0.1", Some(5), stream(AF_INET6, AI_V4MAPPED)).unwrap();
        assert_eq!(r[0].family, AF_INET6);
        assert_eq!(r[0].addr.host_text(), "::ffff:10.0.0.1");
        assert!(resolve_literal(b"::1", Some(5), stream(AF_INET, 0)).is_none());
        assert!(resolve_literal(b"::ffff:1.2.3.4", Some(5), stream(AF_INET, 0)).is_none());
        assert!(resolve_literal(b"::1", Some(5), stream(libc::AF_UNIX, 0)).is_none());
        let r = resolve_literal(b"::1", Some(5), stream(AF_INET6, AI_V4MAPPED)).unwrap();
        assert_eq!(r[0].addr, SockAddr::V6(Ipv6Addr::LOCALHOST, 5));
    }

    #[test]
    fn resolve_socket_kinds() {
        if !GLIBC_SEMANTICS {
            return;
        }
        let kinds = |t, p, port| {
            resolve_literal(b"1.2.3.4", port, hints(0, t, p, 0)).map(|r| {
                r.iter()
                    .map(|e| (e.socktype, e.protocol))
                    .collect::<Vec<_>>()
            })
        };
        let (tcp, udp) = (libc::IPPROTO_TCP, libc::IPPROTO_UDP);
        assert_eq!(kinds(0, tcp, Some(1)), Some(vec![(SOCK_STREAM, tcp)]));
        assert_eq!(kinds(0, udp, Some(1)), Some(vec![(SOCK_DGRAM, udp)]));
        assert_eq!(
            kinds(SOCK_STREAM, 0, Some(1)),
            Some(vec![(SOCK_STREAM, tcp)])
        );
        assert_eq!(
            kinds(SOCK_DGRAM, udp, Some(1)),
            Some(vec![(SOCK_DGRAM, udp)])
        );
        assert_eq!(kinds(SOCK_STREAM, udp, Some(1)), None);
        assert_eq!(kinds(SOCK_DGRAM, tcp, Some(1)), None);
        assert_eq!(kinds(SOCK_RAW, 0, Some(1)), None); // raw sockets take no service
        assert_eq!(kinds(SOCK_RAW, 0, Some(0)), None);
        assert_eq!(kinds(SOCK_RAW, tcp, None), Some(vec![(SOCK_RAW, tcp)]));
        assert_eq!(kinds(libc::SOCK_SEQPACKET, 0, Some(1)), None);
        assert_eq!(kinds(0, libc::IPPROTO_SCTP, Some(1)), None);
    }

    #[test]
    fn resolve_declines() {
        if !GLIBC_SEMANTICS {
            return;
        }
        let h = Hints::default();
        for host in ["localhost", "", "fe80::1%lo", " 127.0.0.1", "1.2.3.4.5"] {
            assert!(
                resolve_literal(host.as_bytes(), Some(80), h).is_none(),
                "{host:?}"
            );
        }
        for flags in [AI_ADDRCONFIG, 0x40, 0x80, 0x10000, -1] {
            assert!(resolve_literal(b"127.0.0.1", Some(80), hints(0, 0, 0, flags)).is_none());
        }
        let ok = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
        assert!(resolve_literal(b"127.0.0.1", Some(80), hints(0, 0, 0, ok)).is_some());
    }
}
