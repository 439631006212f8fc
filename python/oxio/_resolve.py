"""Name resolution: ``getaddrinfo`` and ``getnameinfo`` through the default executor, as
asyncio does, with address literals answered without leaving the loop's thread."""

from __future__ import annotations

import socket
from typing import Any

from ._oxio import getaddrinfo_literal as _getaddrinfo_literal

_HAS_IPV6 = hasattr(socket, "AF_INET6")
_PROTO_FOR_TYPE = {socket.SOCK_STREAM: socket.IPPROTO_TCP, socket.SOCK_DGRAM: socket.IPPROTO_UDP}


def literal_addrinfo(
    host: Any, port: Any, family: int, type: int, proto: int, flowinfo: int = 0, scopeid: int = 0
) -> tuple | None:
    """The one ``getaddrinfo`` entry for a numeric host, or None when the answer needs a
    real lookup (a name, a scope id, an unusual socket type or protocol)."""
    if host is None or proto not in (0, socket.IPPROTO_TCP, socket.IPPROTO_UDP):
        return None
    proto = _PROTO_FOR_TYPE.get(type)
    if proto is None:
        return None
    if port is None or port == b"" or port == "":
        port = 0
    else:
        try:
            port = int(port)
        except (TypeError, ValueError):
            return None
    if isinstance(host, bytes):
        host = host.decode("idna")
    if not isinstance(host, str) or "%" in host:
        return None
    if family == socket.AF_UNSPEC:
        families = (socket.AF_INET, socket.AF_INET6) if _HAS_IPV6 else (socket.AF_INET,)
    else:
        families = (family,)
    for af in families:
        try:
            socket.inet_pton(af, host)
        except (OSError, ValueError):
            continue
        if _HAS_IPV6 and af == socket.AF_INET6:
            return af, type, proto, "", (host, port, flowinfo, scopeid)
        return af, type, proto, "", (host, port)
    return None


def _getaddrinfo_msg(host, port, family, type, proto, flags) -> str:
    """Describes a getaddrinfo call as asyncio's debug log does, and logs its start."""
    from asyncio.log import logger

    msg = [f"{host}:{port!r}"]
    if family:
        msg.append(f"family={family!r}")
    if type:
        msg.append(f"type={type!r}")
    if proto:
        msg.append(f"proto={proto!r}")
    if flags:
        msg.append(f"flags={flags!r}")
    msg = ", ".join(msg)
    logger.debug("Get address info %s", msg)
    return msg


class ResolverMixin:
    """The loop's name-resolution methods."""

    async def getaddrinfo(self, host, port, *, family=0, type=0, proto=0, flags=0):
        # An address literal is answered here, on the loop's thread, with the list
        # socket.getaddrinfo would return; anything else (names, scope ids, service names,
        # arguments socket.getaddrinfo rejects) goes to the executor as in asyncio.
        debug = self.get_debug()
        t0 = self.time() if debug else 0.0
        addrinfo = _getaddrinfo_literal(host, port, family, type, proto, flags)
        if addrinfo is None:
            func = self._getaddrinfo_debug if debug else socket.getaddrinfo
            return await self.run_in_executor(None, func, host, port, family, type, proto, flags)
        if debug:
            msg = _getaddrinfo_msg(host, port, family, type, proto, flags)
            self._log_getaddrinfo(msg, self.time() - t0, addrinfo)
        return addrinfo

    async def getnameinfo(self, sockaddr, flags=0):
        return await self.run_in_executor(None, socket.getnameinfo, sockaddr, flags)

    def _getaddrinfo_debug(self, host, port, family, type, proto, flags):
        msg = _getaddrinfo_msg(host, port, family, type, proto, flags)
        t0 = self.time()
        addrinfo = socket.getaddrinfo(host, port, family, type, proto, flags)
        self._log_getaddrinfo(msg, self.time() - t0, addrinfo)
        return addrinfo

    def _log_getaddrinfo(self, msg, dt, addrinfo):
        """Logs a finished lookup as asyncio's debug mode does: INFO when it was slow."""
        from asyncio.log import logger

        msg = f"Getting address info {msg} took {dt * 1e3:.3f}ms: {addrinfo!r}"
        if dt >= self.slow_callback_duration:
            logger.info(msg)
        else:
            logger.debug(msg)

    async def _ensure_resolved(
        self, address, *, family=0, type=socket.SOCK_STREAM, proto=0, flags=0
    ):
        host, port = address[:2]
        info = literal_addrinfo(host, port, family, type, proto, *address[2:])
        if info is not None:
            return [info]
        return await self.getaddrinfo(
            host, port, family=family, type=type, proto=proto, flags=flags
        )
