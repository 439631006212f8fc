"""TLS: the cold set-up of a connection's TLS layer, and the transport applications see.

The layer itself (handshake, reads, writes, flow control, shutdown) is the Rust
``_oxio.TlsProtocol``; this module checks the arguments as asyncio does, builds the
``ssl.SSLObject`` over two memory BIOs, and puts an ``asyncio.Transport`` in front.
"""

from __future__ import annotations

import warnings
from asyncio import constants

from . import _oxio
from ._transports import STREAM_METHODS, EngineTransport

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without ssl
    ssl = None

#: The methods the application transport takes from the TLS layer: a stream
#: transport's, and the read-side limits TLS adds.
_TLS_METHODS = STREAM_METHODS + (
    "set_read_buffer_limits",
    "get_read_buffer_limits",
    "get_read_buffer_size",
    "_test__append_write_backlog",
)


class SSLTransport(EngineTransport, methods=_TLS_METHODS):
    """The transport of a TLS connection (asyncio's ``_SSLProtocolTransport``)."""

    _sendfile_compatible = constants._SendfileMode.FALLBACK

    @property
    def _ssl_protocol(self):
        return self._core

    @property
    def _closed(self):
        return self._core.is_closing()

    @property
    def _protocol_paused(self):
        # sendfile's fallback waits on this
        return self._core._app_writing_paused()

    @property
    def _loop(self):
        return self._core._loop

    def __repr__(self):
        return f"<{type(self).__name__} state={self._core._state}>"

    def __del__(self, _warn=warnings.warn):
        core = getattr(self, "_core", None)
        if core is not None and not core.is_closing():
            core._mark_closed()
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)


def _default_context(server_side, server_hostname):
    if server_side:
        raise ValueError("Server side SSL needs a valid SSLContext")
    # ssl=True on a client: the default, verifying context.
    context = ssl.create_default_context()
    if not server_hostname:
        context.check_hostname = False
    return context


def _checked_timeout(value, default, what):
    if value is None:
        return default
    if value <= 0:
        raise ValueError(f"{what} should be a positive number, got {value}")
    return value


def make_tls_protocol(
    loop,
    app_protocol,
    sslcontext,
    waiter,
    server_side=False,
    server_hostname=None,
    call_connection_made=True,
    ssl_handshake_timeout=None,
    ssl_shutdown_timeout=None,
):
    """The TLS layer for one connection, with asyncio's ``SSLProtocol`` signature; its
    ``_app_transport`` is what the application gets."""
    if ssl is None:
        raise RuntimeError("stdlib ssl module not available")
    handshake_timeout = _checked_timeout(
        ssl_handshake_timeout, constants.SSL_HANDSHAKE_TIMEOUT, "ssl_handshake_timeout"
    )
    shutdown_timeout = _checked_timeout(
        ssl_shutdown_timeout, constants.SSL_SHUTDOWN_TIMEOUT, "ssl_shutdown_timeout"
    )
    if not sslcontext:
        sslcontext = _default_context(server_side, server_hostname)
    if server_side or not server_hostname:
        server_hostname = None
    incoming = ssl.MemoryBIO()
    outgoing = ssl.MemoryBIO()
    sslobj = sslcontext.wrap_bio(
        incoming, outgoing, server_side=server_side, server_hostname=server_hostname
    )
    core = _oxio.TlsProtocol(
        loop,
        app_protocol,
        sslcontext,
        sslobj,
        incoming,
        outgoing,
        waiter,
        call_connection_made,
        handshake_timeout,
        float(shutdown_timeout),
    )
    core._attach_app_transport(SSLTransport(core))
    return core
