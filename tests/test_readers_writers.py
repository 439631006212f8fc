"""add_reader/add_writer/remove_reader/remove_writer: level-triggered, as asyncio."""

import contextvars
import socket

import pytest
from conftest import run_for, run_until

var = contextvars.ContextVar("var", default="unset")


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


class FileLike:
    """An object that is not a socket but has fileno()."""

    def __init__(self, sock):
        self.sock = sock

    def fileno(self):
        return self.sock.fileno()


def test_reader_is_level_triggered_and_gets_its_arguments(loop, pair):
    a, b = pair
    got = []

    def on_readable(tag, n):
        got.append((tag, a.recv(n)))

    assert loop.add_reader(a, on_readable, "r", 1) is None
    b.send(b"abc")
    run_until(loop, lambda: len(got) == 3)
    assert got == [("r", b"a"), ("r", b"b"), ("r", b"c")]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


@pytest.mark.parametrize("as_", ["socket", "fileno", "file-like"])
def test_reader_by_any_file_object(loop, pair, as_):
    a, b = pair
    key = {"socket": a, "fileno": a.fileno(), "file-like": FileLike(a)}[as_]
    got = []
    loop.add_reader(key, lambda: got.append(a.recv(10)))
    b.send(b"x")
    run_until(loop, lambda: got)
    assert got == [b"x"]
    # Any spelling of the same descriptor removes it.
    assert loop.remove_reader(a.fileno() if as_ != "fileno" else a) is True


def test_replacing_a_reader(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append("old"))
    loop.add_reader(a.fileno(), lambda: got.append(a.recv(10)))
    b.send(b"x")
    run_until(loop, lambda: got)
    assert got == [b"x"]
    assert loop.remove_reader(a)
    assert not loop.remove_reader(a)


def test_replacing_a_writer(loop, pair):
    a, _ = pair
    got = []
    loop.add_writer(a, got.append, "old")
    loop.add_writer(a, lambda tag: (got.append(tag), loop.remove_writer(a)), "new")
    run_until(loop, lambda: got)
    assert got == ["new"]


def test_writer_is_level_triggered_and_gets_its_arguments(loop, pair):
    a, _ = pair
    fired = []
    loop.add_writer(a, lambda *args: fired.append(args), 1, 2)
    run_until(loop, lambda: len(fired) >= 3)
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False
    assert fired[:3] == [(1, 2)] * 3


def test_writer_removed_by_its_callback(loop, pair):
    a, _ = pair
    fired = []

    def on_writable():
        fired.append(1)
        assert loop.remove_writer(a) is True

    loop.add_writer(a, on_writable)
    run_until(loop, lambda: fired)
    run_for(loop, 0.02)
    assert fired == [1]
    assert loop.remove_writer(a) is False


def test_reader_and_writer_on_one_descriptor(loop, pair):
    a, b = pair
    events = []
    loop.add_reader(a, lambda: events.append(("r", a.recv(10))))
    loop.add_writer(a, lambda: (events.append("w"), loop.remove_writer(a)))
    b.send(b"z")
    run_until(loop, lambda: ("r", b"z") in events and "w" in events)
    assert events.count("w") == 1
    assert loop.remove_reader(a)
    assert not loop.remove_writer(a)


def test_removing_the_writer_keeps_the_reader(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: got.append(a.recv(100)))
    loop.add_writer(a, print)
    assert loop.remove_writer(a) is True
    b.send(b"still reading")
    run_until(loop, lambda: got)
    assert got == [b"still reading"]
    assert loop.remove_reader(a) is True


def test_removed_reader_does_not_run(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, got.append, "never")
    assert loop.remove_reader(a)
    b.send(b"x")
    run_for(loop, 0.05)
    assert got == []


def test_a_reader_removed_by_an_earlier_callback_of_the_same_iteration(loop, pair):
    a, b = pair
    got = []
    b.send(b"x")
    loop.call_soon(loop.remove_reader, a)
    loop.add_reader(a, got.append, "removed before it could run")
    run_for(loop, 0.05)
    assert got == []


def test_peer_hangup_makes_the_reader_run(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: (got.append(a.recv(10)), loop.remove_reader(a)))
    b.close()
    run_until(loop, lambda: got)
    assert got == [b""]


def test_reader_runs_in_the_context_of_add_reader(loop, pair):
    a, b = pair
    seen = []

    def on_readable():
        seen.append(var.get())
        a.recv(10)
        loop.remove_reader(a)

    token = var.set("at-add")
    try:
        loop.add_reader(a, on_readable)
    finally:
        var.reset(token)
    b.send(b"x")
    run_until(loop, lambda: seen)
    assert seen == ["at-add"]


def test_remove_after_the_descriptor_was_closed(loop):
    a, b = socket.socketpair()
    fd = a.fileno()
    loop.add_reader(fd, print)
    a.close()
    b.close()
    assert loop.remove_reader(fd) is True


def test_close_leaves_the_descriptors_open(loop, pair):
    a, b = pair
    loop.add_reader(a, print)
    loop.add_writer(b, print)
    loop.close()
    b.send(b"x")
    assert a.recv(1) == b"x"
    assert loop.remove_reader(a) is False
    assert loop.remove_writer(b) is False


def test_many_descriptors(loop):
    pairs = [socket.socketpair() for _ in range(50)]
    try:
        got = set()
        for i, (a, _) in enumerate(pairs):
            loop.add_reader(a, lambda i=i, a=a: (got.add(i), loop.remove_reader(a), a.recv(1)))
        for _, b in pairs:
            b.send(b"x")
        run_until(loop, lambda: len(got) == 50)
    finally:
        for a, b in pairs:
            a.close()
            b.close()
