"""A benchmark server in its own process: started, waited for until it prints
`LISTENING <where>`, measured (CPU time from /proc), and stopped within bounded time.
Shared by net.py and http_bench.py."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

SERVER_START_TIMEOUT = 20.0
SERVER_STOP_TIMEOUT = 5.0


class ServerFailed(Exception):
    pass


def cpu_split(pid: int) -> tuple[int, int]:
    """(utime, stime) of the process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def cpu_ticks(pid: int) -> int:
    """utime + stime of the process (all its threads), in clock ticks."""
    return sum(cpu_split(pid))


class Server:
    """A server process that has printed `LISTENING <where>`."""

    def __init__(self, argv: list[str], stderr_path: Path, cwd: Path | None = None) -> None:
        self.stderr_path = stderr_path
        self.stderr = open(stderr_path, "wb")
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                cwd=cwd,
            )
        except BaseException:
            self.stderr.close()
            raise
        try:
            self.where = self._await_listening()
        except BaseException:
            self.stop()
            raise

    def _await_listening(self) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServerFailed(f"no LISTENING line within {SERVER_START_TIMEOUT:.0f} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
                raise ServerFailed(f"exited with status {self.proc.returncode}: {self.error()}")
            data += chunk
        line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith("LISTENING "):
            raise ServerFailed(f"unexpected first line {line!r}")
        return line.split(" ", 1)[1]

    def error(self) -> str:
        """The last line of the server's stderr, for a failure note."""
        self.stderr.flush()
        try:
            lines = self.stderr_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "?"
        return lines[-1][:200] if lines else "(no output)"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_ticks(self) -> int:
        return cpu_ticks(self.proc.pid)

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=SERVER_STOP_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr.close()
