"""add_reader/add_writer/remove_reader/remove_writer: level-triggered, as asyncio."""

import socket

import pytest


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def run_until(loop, predicate, timeout=5.0):
    guard = loop.call_later(timeout, loop.stop)

    def check():
        if predicate():
            loop.stop()
        else:
            loop.call_soon(check)

    loop.call_soon(check)
    loop.run_forever()
    guard.cancel()
    assert predicate(), "condition not reached in time"


def test_reader_is_level_triggered(loop, pair):
    a, b = pair
    got = []

    def on_readable(tag):
        got.append((tag, a.recv(1)))

    loop.add_reader(a, on_readable, "r")
    b.send(b"abc")
    run_until(loop, lambda: len(got) == 3)
    assert got == [("r", b"a"), ("r", b"b"), ("r", b"c")]
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False


def test_reader_by_descriptor_number_and_replacement(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a.fileno(), lambda: got.append("old"))
    loop.add_reader(a.fileno(), lambda: got.append(a.recv(10)))
    b.send(b"x")
    run_until(loop, lambda: got)
    assert got == [b"x"]
    assert loop.remove_reader(a.fileno())


def test_writer_fires_and_is_removed(loop, pair):
    a, _ = pair
    fired = []

    def on_writable():
        fired.append(1)
        assert loop.remove_writer(a) is True

    loop.add_writer(a, on_writable)
    run_until(loop, lambda: fired)
    assert fired == [1]
    assert loop.remove_writer(a) is False


def test_reader_and_writer_on_one_descriptor(loop, pair):
    a, b = pair
    events = []
    loop.add_reader(a, lambda: events.append(("r", a.recv(10))))
    loop.add_writer(a, lambda: (events.append("w"), loop.remove_writer(a)))
    b.send(b"z")
    run_until(loop, lambda: ("r", b"z") in events and "w" in events)
    assert loop.remove_reader(a)
    assert not loop.remove_writer(a)


def test_removed_reader_does_not_run(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, got.append, "never")
    assert loop.remove_reader(a)
    b.send(b"x")
    loop.call_later(0.05, loop.stop)
    loop.run_forever()
    assert got == []


def test_peer_hangup_makes_the_reader_run(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(a, lambda: (got.append(a.recv(10)), loop.remove_reader(a)))
    b.close()
    run_until(loop, lambda: got)
    assert got == [b""]
