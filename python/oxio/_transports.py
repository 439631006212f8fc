"""The transports protocols see: subclasses of asyncio's transport classes (so that
``isinstance(transport, asyncio.Transport)`` holds) whose methods are those of the Rust
engine object behind them.

A Rust class cannot subclass ``asyncio.Transport`` (its ``__slots__`` give it an instance
layout of its own), so each transport is a small Python object in front of a Rust one.
The first use of a method stores the engine's bound method on the instance, so from then
on calling it costs what calling the Rust method directly would, and a connection pays
only for the methods it uses. A stream transport's ``write``, called per message, is a
method of the type instead (see ``_oxio._install_stream_proxy``): CPython specializes
that call, where it cannot specialize one found in the instance's ``__dict__``.
"""

from __future__ import annotations

import asyncio
from asyncio import constants

from . import _oxio

#: The methods a stream transport takes from its engine.
STREAM_METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "abort",
    "close",
    "is_closing",
    "get_extra_info",
    "pause_reading",
    "resume_reading",
    "is_reading",
    "set_write_buffer_limits",
    "get_write_buffer_limits",
    "get_write_buffer_size",
    "set_protocol",
    "get_protocol",
)


class _Forward:
    """A method taken from the engine on first use and cached on the instance (a
    non-data descriptor: once the instance has the attribute, it wins)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        method = getattr(obj._core, self.name)
        obj.__dict__[self.name] = method
        return method


class EngineTransport(asyncio.Transport):
    """An ``asyncio.Transport`` in front of a Rust engine object, ``_core``, whose
    methods named in ``methods`` it takes (see ``__init_subclass__``)."""

    # `_core` a slot at a fixed offset, for methods of the type that read it from Rust;
    # a `__dict__` for the cached methods, and weak references as asyncio's allow.
    __slots__ = ("_core", "__dict__", "__weakref__")

    _start_tls_compatible = True

    def __init__(self, core):
        # asyncio.BaseTransport.__init__ is not called: the engine keeps the extra info.
        self._core = core

    def __init_subclass__(cls, methods=(), **kwargs):
        super().__init_subclass__(**kwargs)
        for name in methods:
            setattr(cls, name, _Forward(name))

    def _force_close(self, exc):
        self._core._force_close(exc)


class SocketTransport(EngineTransport, methods=STREAM_METHODS):
    """A connected TCP or Unix stream socket (asyncio's ``_SelectorSocketTransport``)."""

    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    @property
    def _extra(self):
        return self._core._extra_dict()

    @property
    def _loop(self):
        return self._core._loop()

    @property
    def _protocol_paused(self):
        return self._core._protocol_paused()

    @property
    def _sock(self):
        return self._core._sock()

    @property
    def _sock_fd(self):
        return self._core._fileno()

    def _make_empty_waiter(self):
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self):
        self._core._reset_empty_waiter()

    def __repr__(self):
        return f"<{type(self).__name__} {self._core._repr_info()}>"


_oxio._install_stream_proxy(SocketTransport)
