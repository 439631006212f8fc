"""Handle and TimerHandle: cancel, cancelled, when, comparisons, repr, context, _run."""

import contextvars
import functools
import gc
import weakref

import pytest
from conftest import run_briefly

var = contextvars.ContextVar("var", default="unset")


def callback(*args):
    pass


LINE = callback.__code__.co_firstlineno
WHERE = f"at {__file__}:{LINE}"


def test_cancel_and_cancelled(loop):
    for h in (loop.call_soon(print), loop.call_later(10, print), loop.call_at(1, print)):
        assert h.cancelled() is False
        assert h.cancel() is None
        assert h.cancelled() is True
        h.cancel()
        assert h.cancelled() is True


def test_cancel_after_the_callback_ran(loop):
    h = loop.call_soon(callback)
    t = loop.call_later(0, callback)
    run_briefly(loop, 2)
    assert not h.cancelled() and not t.cancelled()
    h.cancel()
    t.cancel()
    assert h.cancelled() and t.cancelled()


def test_cancel_inside_the_callback(loop):
    seen = []
    holder = {}

    def cb():
        holder["h"].cancel()
        seen.append(holder["h"].cancelled())

    holder["h"] = loop.call_later(0, cb)
    run_briefly(loop, 2)
    assert seen == [True]


def test_handle_repr(loop):
    h = loop.call_soon(callback, 1, "a")
    assert repr(h) == f"<Handle callback(1, 'a') {WHERE}>"
    assert repr(loop.call_soon(print)) == "<Handle print()>"
    assert repr(loop.call_soon(functools.partial(callback, 1))) == f"<Handle callback(1)() {WHERE}>"


def test_timer_handle_repr(loop):
    t = loop.call_at(1234.5, callback, 2)
    assert repr(t) == f"<TimerHandle when=1234.5 callback(2) {WHERE}>"


def test_repr_after_the_callback_ran(loop):
    h = loop.call_soon(callback)
    run_briefly(loop)
    assert repr(h) == f"<Handle callback() {WHERE}>"


def test_cancelled_reprs(loop):
    """Outside debug mode asyncio drops the callback on cancel(), so the repr shrinks."""
    h = loop.call_soon(callback, 1)
    t = loop.call_at(1234.5, callback)
    h.cancel()
    t.cancel()
    assert repr(h) == "<Handle cancelled>"
    assert repr(t) == "<TimerHandle cancelled when=1234.5>"


def test_cancelled_reprs_in_debug_mode(loop):
    """In debug mode the repr taken at cancel() time (with the callback) is kept."""
    loop.set_debug(True)
    h = loop.call_soon(callback, 1)
    h.cancel()
    assert repr(h).startswith(f"<Handle cancelled callback(1) {WHERE} created at {__file__}:")


def test_cancel_releases_the_callback_and_its_arguments(loop):
    class Owner:
        def method(self):
            pass

    owner, arg = Owner(), Owner()
    refs = [weakref.ref(owner), weakref.ref(arg)]
    h = loop.call_soon(owner.method)
    t = loop.call_later(3600, callback, arg)
    del owner, arg
    h.cancel()
    t.cancel()
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_timer_handle_when(loop):
    assert loop.call_at(1234.5, print).when() == 1234.5
    t = loop.call_later(5, print)
    assert loop.time() + 4 < t.when() <= loop.time() + 5
    t.cancel()
    assert t.when() == t.when()  # when() survives cancel()


def test_timer_handles_compare_by_time(loop):
    a = loop.call_at(10, callback, 1)
    b = loop.call_at(10, callback, 1)
    c = loop.call_at(11, callback)
    assert a == b and not (a != b) and hash(a) == hash(b)
    assert a < c and a <= b and c > a and c >= a
    assert sorted([c, a])[0] is a
    assert a != c
    assert (a == 10) is False
    with pytest.raises(TypeError):
        a < 10  # noqa: B015
    b.cancel()
    assert a != b


def test_plain_handles_compare_by_identity(loop):
    h1 = loop.call_soon(callback)
    h2 = loop.call_soon(callback)
    assert h1 == h1 and h1 != h2
    assert len({h1, h2}) == 2


def test_get_context(loop):
    """Handle.get_context() is 3.12 API; where the stock loop lacks it the test checks oxio
    alone."""
    ctx = contextvars.copy_context()
    h = loop.call_soon(callback, context=ctx)
    if not hasattr(h, "get_context"):
        assert loop.kind == "asyncio"
        assert h._context is ctx
        return
    assert h.get_context() is ctx
    assert loop.call_later(1, callback, context=ctx).get_context() is ctx
    copied = loop.call_soon(callback).get_context()
    assert isinstance(copied, contextvars.Context)
    assert copied is not contextvars.copy_context()


def test_run_runs_the_callback_in_its_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "given")
    seen = []
    h = loop.call_soon(lambda: seen.append(var.get()), context=ctx)
    h._run()
    h.cancel()
    assert seen == ["given"]


def test_run_reports_errors_to_the_loop_even_when_not_running(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad():
        raise ValueError("from _run")

    h = loop.call_soon(bad)
    h._run()  # asyncio: Handle._run() catches and reports; nothing propagates
    h.cancel()
    [ctx] = contexts
    assert isinstance(ctx["exception"], ValueError)
    assert ctx["handle"] is h


def test_debug_mode_records_where_handles_were_created(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    t = loop.call_later(1, print)
    for handle in (h, t):
        assert handle._source_traceback
        assert handle._source_traceback[-1][0] == __file__
        handle.cancel()
    loop.set_debug(False)
    assert loop.call_soon(print)._source_traceback is None
