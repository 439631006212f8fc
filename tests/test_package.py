"""The Python package: run, install, EventLoopPolicy, python -m oxio."""

import asyncio
import os
import re
import subprocess
import sys
import textwrap

import pytest

import oxio


def test_loop_is_an_abstract_event_loop():
    loop = oxio.new_event_loop()
    try:
        assert isinstance(loop, asyncio.AbstractEventLoop)
        assert isinstance(loop, oxio.Loop)
    finally:
        loop.close()


def test_version():
    assert isinstance(oxio.__version__, str) and oxio.__version__
    assert oxio.__version__ == oxio._oxio.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", oxio.__version__)


def test_public_names():
    assert set(oxio.__all__) == {
        "Loop",
        "EventLoopPolicy",
        "new_event_loop",
        "install",
        "run",
        "__version__",
    }
    for name in oxio.__all__:
        assert hasattr(oxio, name)


def test_new_event_loop_makes_a_fresh_loop_each_time():
    a, b = oxio.new_event_loop(), oxio.new_event_loop()
    try:
        assert a is not b
        assert type(a) is oxio.Loop
        assert isinstance(a, oxio._oxio.Loop)
        assert not a.is_running() and not a.is_closed()
    finally:
        a.close()
        b.close()


def test_run_returns_the_result_and_closes_the_loop():
    seen = {}

    async def main():
        seen["loop"] = asyncio.get_running_loop()
        await asyncio.sleep(0)
        return "result"

    assert oxio.run(main()) == "result"
    assert isinstance(seen["loop"], oxio.Loop)
    assert seen["loop"].is_closed()


def test_run_with_debug():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert oxio.run(main(), debug=True) is True
    assert oxio.run(main(), debug=False) is False


def test_run_propagates_the_exception_and_still_closes():
    seen = {}

    async def main():
        seen["loop"] = asyncio.get_running_loop()
        raise LookupError("from main")

    with pytest.raises(LookupError, match="from main"):
        oxio.run(main())
    assert seen["loop"].is_closed()
    assert asyncio._get_running_loop() is None


def test_run_cancels_leftover_tasks_and_finalizes_generators():
    events = []

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            events.append("agen closed")

    async def main():
        asyncio.ensure_future(forever())
        g = agen()
        await g.__anext__()
        main.g = g  # keep it alive until shutdown_asyncgens
        await asyncio.sleep(0)
        return "done"

    assert oxio.run(main()) == "done"
    assert sorted(events) == ["agen closed", "cancelled"]


def test_run_rejects_a_non_coroutine():
    with pytest.raises(ValueError, match="a coroutine was expected, got 1"):
        oxio.run(1)


def test_run_inside_a_running_loop():
    async def inner():
        pass

    async def main():
        coro = inner()
        try:
            with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
                oxio.run(coro)
        finally:
            coro.close()
        return "ok"

    assert oxio.run(main()) == "ok"


def test_install_makes_asyncio_use_oxio():
    old = asyncio.get_event_loop_policy()
    try:
        oxio.install()
        assert isinstance(asyncio.get_event_loop_policy(), oxio.EventLoopPolicy)
        loop = asyncio.new_event_loop()
        assert isinstance(loop, oxio.Loop)
        loop.close()

        async def main():
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is oxio.Loop
        runner_loop = asyncio.Runner().get_loop()
        try:
            assert isinstance(runner_loop, oxio.Loop)
        finally:
            runner_loop.close()
    finally:
        asyncio.set_event_loop_policy(old)
    assert not isinstance(asyncio.get_event_loop_policy(), oxio.EventLoopPolicy)


def test_event_loop_policy():
    policy = oxio.EventLoopPolicy()
    assert isinstance(policy, asyncio.AbstractEventLoopPolicy)
    loop = policy.new_event_loop()
    try:
        assert type(loop) is oxio.Loop
    finally:
        loop.close()
    assert repr(policy) == "<oxio.EventLoopPolicy>"


def test_unimplemented_methods_raise_not_implemented():
    loop = oxio.new_event_loop()
    try:
        with pytest.raises(NotImplementedError):
            loop.add_signal_handler(2, print)
        coro = loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 1))
        with pytest.raises(NotImplementedError):
            loop.run_until_complete(coro)
    finally:
        loop.close()


def test_python_m_oxio_runs_a_script(tmp_path):
    script = tmp_path / "prog.py"
    (tmp_path / "helper.py").write_text("VALUE = 5\n")
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys, helper
            async def main():
                print(type(asyncio.get_running_loop()).__module__, helper.VALUE, sys.argv[1:])
            asyncio.run(main())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "oxio", str(script), "a", "b"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.getcwd(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "oxio 5 ['a', 'b']"


def test_python_m_oxio_runs_a_module(tmp_path):
    (tmp_path / "oxio_probe_mod.py").write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            async def main():
                return type(asyncio.get_running_loop()).__module__
            if __name__ == "__main__":
                print(asyncio.run(main()), sys.argv[1:])
            """
        )
    )
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "oxio", "-m", "oxio_probe_mod", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "oxio ['x']"


def test_python_m_oxio_without_arguments_prints_usage():
    out = subprocess.run([sys.executable, "-m", "oxio"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "usage" in out.stderr
    out = subprocess.run(
        [sys.executable, "-m", "oxio", "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert "usage" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "oxio", "-m"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2
    assert "usage" in out.stderr


def test_python_m_oxio_script_name_and_failure(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            print(__name__, sys.argv[0].endswith("failing.py"))
            async def main():
                raise SystemExit(3)
            asyncio.run(main())
            """
        )
    )
    out = subprocess.run(
        [sys.executable, "-m", "oxio", str(script)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 3, out.stderr
    assert out.stdout.strip() == "__main__ True"
