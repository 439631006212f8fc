"""Name resolution: address literals are answered on the loop's thread, with exactly what
`socket.getaddrinfo` returns; everything else goes through the executor as in asyncio.
oxio-only checks (the native fast path) use the `oxloop` fixture."""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import platform
import random
import socket

import pytest
from conftest import run

from oxio import _oxio

#: oxio answers literals itself only over glibc, whose answers it mirrors; with another C
#: library every literal goes to libc, and the tests that compare with socket.getaddrinfo
#: still hold. Only the tests that require the native answer depend on this.
GLIBC = platform.libc_ver()[0] == "glibc"
needs_glibc = pytest.mark.skipif(
    not GLIBC, reason="literals are answered natively only over glibc; libc answers them here"
)

HOSTS = [
    "127.0.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "::ffff:127.0.0.1",
    "2001:db8::1",
    "2001:0db8:0000::0001",
    b"127.0.0.1",
    "127.1",
    "1.2.3",
    " 127.0.0.1",
    "localhost",
    "",
    None,
]
PORTS = [0, 80, "80", b"80", "http", 65535, None, "-1", -1, 65536, "", "080", 80.0, True]
FAMILIES = [0, socket.AF_INET, socket.AF_INET6, socket.AF_UNIX]
TYPES = [0, socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW]
PROTOS = [0, socket.IPPROTO_TCP, socket.IPPROTO_UDP]
FLAGS = [
    0,
    socket.AI_PASSIVE,
    socket.AI_CANONNAME,
    socket.AI_NUMERICHOST,
    socket.AI_NUMERICSERV,
    socket.AI_V4MAPPED | socket.AI_ALL,
    socket.AI_ADDRCONFIG,
]


def reference(host, port, family=0, type=0, proto=0, flags=0):
    """What socket.getaddrinfo returns, or the exception it raises, as comparable data."""
    try:
        return "ok", socket.getaddrinfo(host, port, family, type, proto, flags)
    except Exception as exc:
        return "raised", (type_of(exc), exc.args)


def type_of(exc):
    return exc.__class__


async def oxio_answer(loop, host, port, family, type, proto, flags):
    try:
        infos = await loop.getaddrinfo(
            host, port, family=family, type=type, proto=proto, flags=flags
        )
        return "ok", infos
    except Exception as exc:
        return "raised", (type_of(exc), exc.args)


def assert_same(got, expected, args):
    assert got[0] == expected[0], (args, got, expected)
    if got[0] == "ok":
        # repr() shows the enum members, which == alone would not distinguish from ints.
        assert got[1] == expected[1], args
        assert repr(got[1]) == repr(expected[1]), args
    else:
        assert got[1][0] is expected[1][0], (args, got, expected)


# Names are answered by socket.getaddrinfo itself. The grid leaves out the combinations
# that would send them to DNS (slow and flaky without a network): "localhost" is in
# /etc/hosts for IPv4 only, " 127.0.0.1" is in no file; AI_NUMERICHOST and AF_UNIX fail
# before any lookup.
SLOW_PATH_HOSTS = ("localhost", " 127.0.0.1")


def needs_dns(host, family, flags):
    if host not in SLOW_PATH_HOSTS or flags & socket.AI_NUMERICHOST or family == socket.AF_UNIX:
        return False
    return host == " 127.0.0.1" or family == socket.AF_INET6


def grid(host):
    return [
        (port, family, type_, proto, flags)
        for port, family, type_, proto, flags in itertools.product(
            PORTS, FAMILIES, TYPES, PROTOS, FLAGS
        )
        if not needs_dns(host, family, flags)
    ]


def test_grid_size():
    sizes = {h: len(grid(h)) for h in HOSTS}
    assert sizes.pop("localhost") == 3696 and sizes.pop(" 127.0.0.1") == 1680
    assert set(sizes.values()) == {14 * 4 * 4 * 3 * 7}  # 4704 for each of 14 hosts


@pytest.mark.parametrize("host", HOSTS, ids=repr)
def test_getaddrinfo_grid_matches_socket(oxloop, host):
    combos = grid(host)

    async def main():
        fast = 0
        for port, family, type_, proto, flags in combos:
            args = (host, port, family, type_, proto, flags)
            expected = reference(*args)
            got = await oxio_answer(oxloop, *args)
            assert_same(got, expected, args)
            fast += _oxio.getaddrinfo_literal(*args) is not None
        return fast

    fast = run(oxloop, main(), timeout=25)
    if host in (*SLOW_PATH_HOSTS, "", None) or not GLIBC:
        assert fast == 0
    else:
        assert fast > 0


def _random_ipv6_text(rng: random.Random) -> str:
    groups = [rng.choice([0, 0, 0, 1, 0xFFFF, rng.randrange(0x10000)]) for _ in range(8)]
    if rng.random() < 0.2:
        groups[:6] = [0, 0, 0, 0, 0, rng.choice([0, 0xFFFF])]
    texts = [rng.choice(["{:x}", "{:X}", "{:04x}"]).format(g) for g in groups]
    if rng.random() < 0.3:
        v4 = ".".join(str(b) for b in bytes.fromhex(f"{groups[6]:04x}{groups[7]:04x}"))
        texts[6:] = [v4]
    zero_runs = [i for i, g in enumerate(groups[: len(texts)]) if g == 0]
    if zero_runs and rng.random() < 0.7:
        start = rng.choice(zero_runs)
        end = start
        while end + 1 < len(texts) and groups[end + 1] == 0 and texts[end + 1].count(".") == 0:
            end += 1
        end = rng.randint(start, end)
        head, tail = ":".join(texts[:start]), ":".join(texts[end + 1 :])
        return f"{head}::{tail}"
    return ":".join(texts)


def _random_ipv4_text(rng: random.Random) -> str:
    value = rng.choice([0, 0x7F000001, 0xFFFFFFFF, rng.randrange(1 << 32)])
    nparts = rng.randint(1, 4)
    octets = list(value.to_bytes(4, "big"))
    parts = octets[: nparts - 1] + [int.from_bytes(bytes(octets[nparts - 1 :]), "big")]
    fmts = ["{}", "{}", "0{:o}", "0x{:x}", "0X{:X}", "00{}"]
    return ".".join(rng.choice(fmts).format(p) for p in parts)


def test_random_literals_match_socket():
    """Many spellings of IPv4 (inet_aton forms) and IPv6 addresses: whenever the fast
    path answers, it answers what socket.getaddrinfo does; it answers most of them."""
    rng = random.Random(1234)
    answered = total = 0
    for _ in range(4000):
        host = _random_ipv6_text(rng) if rng.random() < 0.6 else _random_ipv4_text(rng)
        family = rng.choice([0, socket.AF_INET, socket.AF_INET6])
        flags = rng.choice([0, socket.AI_CANONNAME, socket.AI_V4MAPPED, socket.AI_NUMERICHOST])
        type_ = rng.choice([0, socket.SOCK_STREAM])
        args = (host, rng.choice([0, 443, "8080"]), family, type_, 0, flags)
        got = _oxio.getaddrinfo_literal(*args)
        total += 1
        if got is None:
            continue
        answered += 1
        expected = socket.getaddrinfo(*args)
        assert repr(got) == repr(expected), args
    assert answered > total // 2


COMMON = [
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM),
    ("127.0.0.1", 80),
    ("127.0.0.1", "8080", socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP),
    (b"127.0.0.1", b"80", socket.AF_UNSPEC, socket.SOCK_DGRAM),
    ("0.0.0.0", 0, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE),
    ("::1", 443, socket.AF_INET6, socket.SOCK_STREAM),
    ("::", 0, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_PASSIVE),
    ("::ffff:127.0.0.1", 80),
    ("127.0.0.1", None, socket.AF_INET, socket.SOCK_DGRAM),
    ("127.0.0.1", 80, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST | socket.AI_NUMERICSERV),
]

DECLINED = [
    ("localhost", 80),
    ("fe80::1%lo", 80),  # scope id: needs the interface table
    ("127.0.0.1", "http"),  # service name
    ("127.0.0.1", ""),
    ("127.0.0.1", 80, 0, 0, 0, socket.AI_ADDRCONFIG),
    ("127.0.0.1", 80, socket.AF_INET6),  # socket.getaddrinfo raises
    ("::ffff:127.0.0.1", 80, socket.AF_INET),  # glibc unmaps it
    (None, 80),
    ("127.0.0.1", 80, None),  # socket.getaddrinfo raises TypeError
    ("127.0.0.1", 80.0),
    (" 127.0.0.1", 80),
    ("0" * 70 + "1", 80),  # the IDNA codec rejects a label this long
]


@needs_glibc
@pytest.mark.parametrize("args", COMMON, ids=repr)
def test_literal_answered_natively(args):
    got = _oxio.getaddrinfo_literal(*args)
    assert got is not None
    assert repr(got) == repr(socket.getaddrinfo(*args))


@pytest.mark.parametrize("args", DECLINED, ids=repr)
def test_literal_declined(args):
    assert _oxio.getaddrinfo_literal(*args) is None


@needs_glibc
def test_keyword_arguments():
    got = _oxio.getaddrinfo_literal("127.0.0.1", 80, type=socket.SOCK_STREAM, flags=0)
    assert got == socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)


class RefusingExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self):
        super().__init__(max_workers=1)
        self.calls = 0

    def submit(self, *args, **kwargs):
        self.calls += 1
        raise RuntimeError("executor used")


@needs_glibc
@pytest.mark.parametrize("debug", [False, True])
def test_literals_do_not_use_executor(oxloop, debug, caplog):
    executor = RefusingExecutor()
    oxloop.set_default_executor(executor)
    oxloop.set_debug(debug)

    async def main():
        for args in COMMON:
            host, port, *rest = args
            kwargs = dict(zip(["family", "type", "proto", "flags"], rest))
            got = await oxloop.getaddrinfo(host, port, **kwargs)
            assert repr(got) == repr(socket.getaddrinfo(*args))
        assert executor.calls == 0
        with pytest.raises(RuntimeError, match="executor used"):
            await oxloop.getaddrinfo("localhost", 80)
        assert executor.calls == 1

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        run(oxloop, main())
    logged = [r.getMessage() for r in caplog.records if "address info" in r.getMessage()]
    if debug:
        assert any(m.startswith("Getting address info 127.0.0.1:80") for m in logged)
    else:
        assert logged == []
    executor.shutdown()


def test_getnameinfo_matches_socket(oxloop):
    for sockaddr, flags in [
        (("127.0.0.1", 80), 0),
        (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
        (("::1", 443, 0, 0), socket.NI_NUMERICHOST),
    ]:
        got = run(oxloop, oxloop.getnameinfo(sockaddr, flags))
        assert got == socket.getnameinfo(sockaddr, flags)
