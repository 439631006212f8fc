"""The event loops a benchmark run compares, by name."""

from __future__ import annotations

import asyncio
import importlib
from typing import Callable

LOOP_NAMES = ("asyncio", "uvloop", "rloop", "oxio")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop's `new_event_loop`, or None when the loop is not installed."""
    if name == "asyncio":
        return asyncio.SelectorEventLoop
    try:
        module = importlib.import_module(name)
    except ImportError:
        return None
    return module.new_event_loop


def loop_version(name: str) -> str:
    if name == "asyncio":
        import platform

        return "CPython " + platform.python_version()
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"
