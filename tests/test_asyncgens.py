"""Async generators: the loop's hooks, finalization, shutdown_asyncgens."""

import asyncio
import gc
import sys
import warnings

from conftest import run


def test_shutdown_asyncgens_finalizes_generators(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(asyncio.get_running_loop())

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = loop.run_until_complete(main())
    assert closed == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert closed == [loop]
    del g


def test_hooks_are_installed_only_while_running(loop):
    before = sys.get_asyncgen_hooks()

    async def main():
        return sys.get_asyncgen_hooks()

    firstiter, finalizer = loop.run_until_complete(main())
    assert firstiter is not None and finalizer is not None
    assert firstiter.__self__ is loop and finalizer.__self__ is loop
    assert sys.get_asyncgen_hooks() == before


def test_hooks_are_restored_after_an_exit_exception(loop):
    before = sys.get_asyncgen_hooks()

    def boom():
        raise KeyboardInterrupt

    loop.call_soon(boom)
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    assert sys.get_asyncgen_hooks() == before


def test_a_generator_collected_while_running_is_closed_on_the_loop(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(asyncio.get_running_loop())

    async def main():
        g = agen()
        await g.__anext__()
        del g
        gc.collect()
        for _ in range(10):
            if closed:
                break
            await asyncio.sleep(0)
        return closed

    assert run(loop, main()) == [loop]


def test_errors_while_closing_go_to_the_exception_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ValueError("in finally")

    async def main():
        g = agen()
        await g.__anext__()
        return g

    g = loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    [ctx] = contexts
    assert sorted(ctx) == ["asyncgen", "exception", "message"]
    assert ctx["asyncgen"] is g
    assert ctx["message"].startswith("an error occurred during closing of asynchronous generator")
    assert isinstance(ctx["exception"], ValueError)


def test_generators_first_iterated_after_shutdown_warn(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())

    async def agen():
        yield 1

    async def main():
        g = agen()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            await g.__anext__()
        await g.aclose()
        return [(w.category, str(w.message)) for w in caught]

    [(category, message)] = run(loop, main())
    assert category is ResourceWarning
    assert message.endswith("was scheduled after loop.shutdown_asyncgens() call")


def test_shutdown_asyncgens_with_nothing_to_do(loop):
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None
    assert loop.run_until_complete(loop.shutdown_asyncgens()) is None
