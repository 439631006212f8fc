"""The Python package: run, install, EventLoopPolicy, python -m oxio."""

import asyncio
import os
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
    finally:
        asyncio.set_event_loop_policy(old)


def test_unimplemented_methods_raise_not_implemented():
    loop = oxio.new_event_loop()
    try:
        with pytest.raises(NotImplementedError):
            loop.add_signal_handler(2, print)
        coro = loop.create_connection(asyncio.Protocol, "127.0.0.1", 1)
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
