"""Network benchmark: echo servers on asyncio, uvloop, rloop and oxio against a native
ceiling, driven by the native load generator (benchmarks/loadgen).

For every server kind (see net_servers.py) x message size (1 KiB, 64 KiB, 1 MiB) x loop, plus
the `echo-ceiling` native server, a server process is pinned to one CPU and `oxio-loadgen`
to another; the load generator runs request/response echo on `--conns` connections for a
bounded time. Each row reports requests per second, MiB/s (payload, one direction), p99
latency, and the server's CPU time per round trip (utime+stime from /proc/PID/stat, before
and after, divided by every round trip the load generator made, warm-up included). A
`connrate` row per loop measures connection cycles per second against the `protocol` server
(connect, half-close, wait for the server to close; see benchmarks/loadgen/src/main.rs).

The servers whose rows are compared (every loop's server of one kind, the ceiling beside
`protocol`, `header_body` beside `one_write`) run at once, each idle while another is
driven, and stay up for all rounds. For each size in turn (connrate last), every one of
`--rounds` rounds drives each of them once, in a shuffled order, so the figures a ratio
compares are measured seconds apart: this machine's speed drifts by several per cent over
minutes. Each row reports its best round (highest rps). Ratios are against the best of
uvloop and rloop for the same row, and against the ceiling for the same size. Beside the
best-round ratio, each row gives its rounds paired: per round, its rps over the best of
uvloop's and rloop's in that same round (measured seconds apart), as the median over the
rounds with their range, which one lucky or unlucky round cannot move. A second
table gives, per loop and size, `header_body`'s best rps over `one_write`'s: the same
server work with the reply sent in two writes or in one, so the ratio is what a second
write costs that loop.

TLS rows (`--tls`): the `--tls-kinds` servers (default protocol and streams) serve TLS 1.3
over TCP (`ssl=` an SSLContext, the same for every loop: see tls_certs.py) at the
`--tls-sizes` (default 1 KiB and 64 KiB), and the load generator runs the same echo as a
rustls client (`oxio-loadgen --tls`). The certificate is made for the run in a temporary
directory (ECDSA P-256, with the openssl command line; see tls_certs.py for the fallbacks)
and the load generator verifies it. Every connection's handshake completes before the
warm-up, so rps counts echo round trips only; the server CPU column includes the
handshakes (one per connection). Each TLS server first gets a short, unmeasured TLS echo
(see prime_tls: without it uvloop serves a fresh process's first TLS connections four
times slower than later ones, an effect of glibc's mmap threshold). There is no TLS
ceiling (`vs ceiling` is `-`). A loop that cannot serve TLS is reported as `unsupported`
(rloop 0.5 raises NotImplementedError for `ssl=`).

    python benchmarks/net.py                    # the full run (about 15 minutes)
    python benchmarks/net.py --rounds 1 --duration 2 --loops asyncio,uvloop
    python benchmarks/net.py --tls --kinds protocol,streams --sizes 1024,65536 --no-connrate
    python benchmarks/net.py --tls-only         # TLS rows only (about 3 minutes)
    python benchmarks/net.py --smoke            # every row once, tiny, one TLS row: for CI

A loop that is not installed is skipped with a note; a server that fails to start, or a run
that fails, is reported as FAILED. The exit status is non-zero only when an asyncio row or a
ceiling row failed (or the load generator cannot be built, or no certificate can be made).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from loops import LOOP_NAMES, loop_version  # noqa: E402
from net_servers import KINDS, TLS_KINDS, TLS_UNSUPPORTED  # noqa: E402
from server_process import Server, ServerFailed  # noqa: E402
from tls_certs import certificate_if  # noqa: E402

CEILING = "ceiling"
CONNRATE = "connrate"
SIZES = (1024, 64 * 1024, 1024 * 1024)
TLS_DEFAULT_KINDS = ("protocol", "streams")
TLS_SIZES = (1024, 64 * 1024)
# Table order of the transports: TLS rows right after the plain TCP rows they compare with.
TRANSPORTS = ("tcp", "tls", "unix")
REFERENCE_LOOPS = ("uvloop", "rloop")
CARGO_METADATA_TIMEOUT = 120.0
CARGO_BUILD_TIMEOUT = 1800.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# the native binaries


def cargo_target_dir() -> Path:
    """The workspace's target directory (honours CARGO_TARGET_DIR and .cargo/config)."""
    try:
        out = subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CARGO_METADATA_TIMEOUT,
            check=True,
        ).stdout
        return Path(json.loads(out)["target_directory"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        env = os.environ.get("CARGO_TARGET_DIR")
        return Path(env) if env else ROOT / "target"


def newest_source_mtime() -> float:
    crate = HERE / "loadgen"
    paths = [crate / "Cargo.toml", *crate.joinpath("src").rglob("*.rs")]
    return max((p.stat().st_mtime for p in paths if p.exists()), default=0.0)


def native_binaries(force_build: bool) -> tuple[Path, Path]:
    """Paths of oxio-loadgen and echo-ceiling, building them when missing or stale."""
    release = cargo_target_dir() / "release"
    loadgen, ceiling = release / "oxio-loadgen", release / "echo-ceiling"
    fresh = (
        all(p.exists() for p in (loadgen, ceiling))
        and min(p.stat().st_mtime for p in (loadgen, ceiling)) >= newest_source_mtime()
    )
    if force_build or not fresh:
        if shutil.which("cargo") is None:
            raise SystemExit("net.py: the load generator is not built and cargo is not on PATH")
        log("building the load generator: cargo build --release -p oxio-loadgen")
        try:
            subprocess.run(
                ["cargo", "build", "--release", "-p", "oxio-loadgen"],
                cwd=ROOT,
                timeout=CARGO_BUILD_TIMEOUT,
                check=True,
                stdout=sys.stderr,
            )
        except (OSError, subprocess.SubprocessError) as e:
            raise SystemExit(f"net.py: building the load generator failed: {e}") from e
    for p in (loadgen, ceiling):
        if not p.exists():
            raise SystemExit(f"net.py: {p} missing after the build")
    return loadgen, ceiling


# ---------------------------------------------------------------------------------------
# servers


# ---------------------------------------------------------------------------------------
# measurements


@dataclass
class Row:
    kind: str  # a server kind, or "connrate"
    transport: str  # "tcp", "unix", or "tls" (TLS over TCP)
    size: int  # message size; 0 for connrate
    loop: str  # a loop name, or "ceiling"
    rounds: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.kind, self.transport, self.size, self.loop)

    def best(self) -> dict[str, Any] | None:
        return max(self.rounds, key=lambda r: r["rps"], default=None)

    def unsupported(self) -> bool:
        """No round, and every failure says the loop cannot serve TLS."""
        return (
            not self.rounds
            and bool(self.failures)
            and all(TLS_UNSUPPORTED in why for why in self.failures)
        )

    @property
    def label(self) -> str:
        return self.kind if self.transport == "tcp" else f"{self.kind} ({self.transport})"


@dataclass
class Unit:
    """One server process: a loop (or the ceiling) serving one kind over one transport, for
    all of its rows, every round."""

    loop: str
    kind: str
    transport: str
    jobs: list[Row]
    server: Server | None = None

    @property
    def label(self) -> str:
        return f"{self.loop} {self.kind}/{self.transport}"


@dataclass
class Group:
    """Servers whose rows are compared with each other, all running at once: every loop's
    server of a kind (of `header_body` and `one_write` together), plus the ceiling beside
    `protocol`. Each step (a size, then connrate) runs all its rounds before the next, and
    every round drives each server once, in a shuffled order. The figures a ratio compares
    are so measured seconds apart, not minutes: this machine's speed drifts by several per
    cent over minutes, which made whole-run rounds rank tied loops by when they ran."""

    transport: str
    units: list[Unit] = field(default_factory=list)

    def steps(self) -> list[int]:
        """The sizes in plan order, connrate (size 0) last."""
        sizes = dict.fromkeys(row.size for unit in self.units for row in unit.jobs)
        return sorted(sizes, key=lambda size: size == 0)


def size_label(size: int) -> str:
    if size == 0:
        return "-"
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)} MiB"
    if size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def tls_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--tls", "--server-name", "localhost"]
    if args.cert.verifiable:
        flags += ["--ca", str(args.cert.certfile)]
    return flags


def prime_tls(args: argparse.Namespace, loadgen: Path, port: str) -> None:
    """A short TLS echo on `--conns` connections before a TLS server's measured rows, not
    counted.

    uvloop (0.23) reads TLS data with `SSLObject.read(256 KiB)`: a 256 KiB allocation per
    read, then shrunk to the data's size. In a fresh process glibc's mmap threshold is still
    128 KiB, so every such read costs an mmap, an mremap and a munmap (page faults, TLB
    flushes: 4x the server CPU of a 1 KiB echo); the threshold rises only once a large
    mmapped block is freed whole, as a closed connection's buffers are. Without priming,
    each round's first TLS row measured that start-up state on uvloop (with
    MALLOC_MMAP_THRESHOLD_ at 1 MiB its first connections are as fast as later ones). One
    priming connection was not always enough, hence `--conns`. It does nothing measurable
    to the other loops. A failure here shows in the row after.
    """
    argv = [str(loadgen), "--addr", f"127.0.0.1:{port}", *tls_flags(args)]
    argv += ["--conns", str(args.conns), "--size", "1024", "--duration", "0.2"]
    argv += ["--max-requests", "100"]
    if args.client_cpu is not None:
        argv += ["--cpu", str(args.client_cpu)]
    try:
        subprocess.run(argv, capture_output=True, timeout=20.0)
    except subprocess.TimeoutExpired:
        pass


def run_loadgen(
    args: argparse.Namespace, loadgen: Path, where: str, transport: str, row: Row
) -> dict[str, Any]:
    argv = [str(loadgen), "--unix" if transport == "unix" else "--addr"]
    argv.append(where if transport == "unix" else f"127.0.0.1:{where}")
    if transport == "tls":
        argv += tls_flags(args)
    argv += ["--conns", str(args.conns), "--duration", str(args.duration)]
    argv += ["--warmup", str(args.warmup)]
    if row.kind == CONNRATE:
        argv += ["--mode", "connrate"]
    else:
        argv += ["--size", str(row.size)]
    if args.max_requests:
        argv += ["--max-requests", str(args.max_requests)]
    if args.client_cpu is not None:
        argv += ["--cpu", str(args.client_cpu)]
    timeout = args.warmup + args.duration + 20.0
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"load generator timed out after {timeout:.0f} s") from e
    result: dict[str, Any] = {}
    if done.stdout.strip():
        try:
            result = json.loads(done.stdout.strip().splitlines()[-1])
        except ValueError:
            pass
    if done.returncode != 0 or not result:
        why = done.stderr.strip().splitlines()
        raise RuntimeError(why[-1] if why else f"load generator exited {done.returncode}")
    return result


def server_argv(args: argparse.Namespace, ceiling: Path, unit: Unit, sock: Path) -> list[str]:
    if unit.loop == CEILING:
        argv = [str(ceiling)]
        argv += ["--unix", str(sock)] if unit.transport == "unix" else ["--addr", "127.0.0.1:0"]
    else:
        argv = [args.python, str(HERE / "net_servers.py"), "--loop", unit.loop]
        argv += ["--kind", unit.kind]
        argv += ["--unix", str(sock)] if unit.transport == "unix" else ["--port", "0"]
        if unit.transport == "tls":
            argv += ["--certfile", str(args.cert.certfile), "--keyfile", str(args.cert.keyfile)]
    if args.server_cpu is not None:
        argv += ["--cpu", str(args.server_cpu)]
    return argv


def start_unit(
    args: argparse.Namespace, loadgen: Path, ceiling: Path, unit: Unit, tmp: Path
) -> None:
    """Starts the unit's server (primed, for TLS); a failure is noted on each of its rows."""
    name = f"{unit.loop}-{unit.kind}-{unit.transport}"
    try:
        argv = server_argv(args, ceiling, unit, tmp / f"{name}.sock")
        unit.server = Server(argv, tmp / f"{name}.err", cwd=ROOT)
    except (ServerFailed, OSError) as e:
        note = f"server failed to start: {e}"
        if TLS_UNSUPPORTED in note:
            log(f"  {unit.label}: unsupported: {TLS_UNSUPPORTED} by {unit.loop}")
            note = str(e).split("net_servers: ", 1)[-1]
        else:
            log(f"  {unit.label}: {note}")
        for row in unit.jobs:
            row.failures.append(note)
        return
    if unit.transport == "tls":
        prime_tls(args, loadgen, unit.server.where)


def measure(args: argparse.Namespace, loadgen: Path, unit: Unit, row: Row, round_no: int) -> None:
    """One round of one row on the unit's running server."""
    server = unit.server
    if server is None:
        return  # it did not start: noted on the row already
    what = "connrate" if row.kind == CONNRATE else size_label(row.size)
    if not server.alive():
        row.failures.append(f"server exited: {server.error()}")
        return
    before = server.cpu_ticks()
    try:
        result = run_loadgen(args, loadgen, server.where, unit.transport, row)
    except RuntimeError as e:
        note = str(e) if server.alive() else f"server exited: {server.error()}"
        row.failures.append(note)
        log(f"  round {round_no}: {unit.label} {what}: FAILED: {note}")
        return
    ticks = server.cpu_ticks() - before
    total = max(int(result.get("total_requests", result["requests"])), 1)
    result["server_cpu_us"] = ticks / CLK_TCK * 1e6 / total
    result["round"] = round_no
    row.rounds.append(result)
    log(
        f"  round {round_no}: {unit.label} {what}: {result['rps']:,.0f} rps, "
        f"p99 {result['p99_us']:,.0f} us"
    )


def run_group(
    args: argparse.Namespace,
    loadgen: Path,
    ceiling: Path,
    group: Group,
    tmp: Path,
    rng: random.Random,
) -> None:
    """Every round of every step of the group, its servers started once for all of them."""
    log(f"{', '.join(u.label for u in group.units)}")
    try:
        for unit in group.units:
            start_unit(args, loadgen, ceiling, unit, tmp)
        for step in group.steps():
            for round_no in range(1, args.rounds + 1):
                order = [(u, row) for u in group.units for row in u.jobs if row.size == step]
                rng.shuffle(order)
                for unit, row in order:
                    measure(args, loadgen, unit, row, round_no)
    finally:
        for unit in group.units:
            if unit.server is not None:
                unit.server.stop()
                unit.server = None


# ---------------------------------------------------------------------------------------
# the plan and the report


#: Kinds measured in the group of another kind, whose rows they are compared with.
SAME_GROUP_AS = {"one_write": "header_body", "native": "protocol"}


def plan(args: argparse.Namespace, loops: list[str]) -> tuple[list[Group], list[Row]]:
    groups: dict[tuple[str, str], Group] = {}
    rows: list[Row] = []

    def add(loop: str, kind: str, transport: str, sizes: list[int], connrate: bool) -> None:
        jobs = [Row(kind, transport, size, loop) for size in sizes]
        if connrate:
            jobs.append(Row(CONNRATE, transport, 0, loop))
        family = SAME_GROUP_AS.get(kind, kind)
        if kind == "native" and (family, transport) not in groups:
            # No protocol servers in this run: the ceiling joins the transport's first group.
            family = next((f for f, t in groups if t == transport), family)
        group = groups.setdefault((family, transport), Group(transport))
        group.units.append(Unit(loop, kind, transport, jobs))
        rows.extend(jobs)

    transports = [] if args.tls_only else ["tcp", "unix"] if args.unix else ["tcp"]
    for transport in transports:
        for loop in loops:
            for kind in args.kinds:
                if transport == "unix" and args.smoke and kind != "protocol":
                    continue
                add(loop, kind, transport, args.sizes, args.connrate and kind == "protocol")
        if args.ceiling:
            add(CEILING, "native", transport, args.sizes, args.connrate)
    if args.tls:
        for loop in loops:
            for kind in args.tls_kinds:
                add(loop, kind, "tls", args.tls_sizes, False)
    return list(groups.values()), rows


def ratio(value: float, reference: float | None) -> str:
    if not reference:
        return "-"
    return f"{value / reference:.2f}x"


def paired_ratios(row: Row, by_key: dict[tuple[str, str, int, str], Row]) -> list[float]:
    """Per round, the row's rps over the best reference loop's rps in that same round.

    A round drives every server of a size seconds apart, so these ratios are paired: a
    slow or fast spell of the machine moves both sides of each one. The best-round ratio
    compares rounds that may be minutes apart, and one lucky round decides it."""
    refs = [by_key.get((row.kind, row.transport, row.size, loop)) for loop in REFERENCE_LOOPS]
    per_round: dict[int, float] = {}
    for ref in refs:
        for r in ref.rounds if ref else []:
            per_round[r["round"]] = max(per_round.get(r["round"], 0.0), r["rps"])
    return [r["rps"] / per_round[r["round"]] for r in row.rounds if per_round.get(r["round"])]


def paired_cell(ratios: list[float]) -> str:
    """Median of the paired ratios, with their range."""
    if not ratios:
        return "-"
    ordered = sorted(ratios)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    if len(ordered) == 1:
        return f"{median:.2f}x"
    return f"{median:.2f}x ({ordered[0]:.2f}-{ordered[-1]:.2f})"


def table(rows: list[Row], loops: list[str]) -> str:
    by_key = {row.key: row for row in rows}

    def best_rps(kind: str, transport: str, size: int, loop: str) -> float | None:
        row = by_key.get((kind, transport, size, loop))
        best = row.best() if row else None
        return best["rps"] if best else None

    header = (
        "| kind | size | loop | rps | MiB/s | p99 µs | server CPU µs/req "
        "| vs best of uvloop/rloop | same round vs best of uvloop/rloop, median (range) "
        "| vs ceiling |"
    )
    lines = [header, "|" + "---|" * 10]
    order = {name: i for i, name in enumerate([*loops, CEILING])}
    kind_order = {name: i for i, name in enumerate([*KINDS, "native", CONNRATE])}
    kinds = sorted(
        {(row.kind, row.transport) for row in rows},
        key=lambda kt: (TRANSPORTS.index(kt[1]), kind_order.get(kt[0], 99)),
    )
    for kind, transport in kinds:
        group = [r for r in rows if (r.kind, r.transport) == (kind, transport)]
        group.sort(key=lambda r: (r.size, order.get(r.loop, 99)))
        for row in group:
            cells = [row.label, size_label(row.size), row.loop]
            best = row.best()
            if best is None:
                cells += ["unsupported" if row.unsupported() else "FAILED", "", "", "", "", "", ""]
            else:
                refs = [best_rps(row.kind, transport, row.size, loop) for loop in REFERENCE_LOOPS]
                ref = max((r for r in refs if r), default=None)
                ceiling_kind = CONNRATE if row.kind == CONNRATE else "native"
                ceil = best_rps(ceiling_kind, transport, row.size, CEILING)
                mib = f"{best['mib_per_s']:,.1f}" if row.kind != CONNRATE else "-"
                cells += [
                    f"{best['rps']:,.0f}",
                    mib,
                    f"{best['p99_us']:,.0f}",
                    f"{best['server_cpu_us']:,.1f}",
                    ratio(best["rps"], ref),
                    paired_cell(paired_ratios(row, by_key)),
                    ratio(best["rps"], ceil),
                ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def second_write_table(rows: list[Row], loops: list[str]) -> str:
    """What the second write costs each loop: header_body's best rps over one_write's (the
    same server work with the reply in one write), per transport and size; empty when the
    run lacks either kind."""
    by_key = {row.key: row for row in rows}
    lines: list[str] = []
    for transport in TRANSPORTS:
        sizes = sorted(
            {r.size for r in rows if r.kind == "header_body" and r.transport == transport}
        )
        cells_by_loop = []
        for loop in loops:
            cells = []
            for size in sizes:
                two = by_key.get(("header_body", transport, size, loop))
                one = by_key.get(("one_write", transport, size, loop))
                two_best, one_best = (two.best() if two else None), (one.best() if one else None)
                cells.append(
                    ratio(two_best["rps"], one_best["rps"]) if two_best and one_best else "-"
                )
            cells_by_loop.append((loop, cells))
        if not sizes or all(c == "-" for _, cells in cells_by_loop for c in cells):
            continue
        if not lines:
            lines.append(
                "header + body against one write (header_body rps / one_write rps; "
                "1.00x: the second write is free)"
            )
        lines.append("")
        lines.append(f"| {transport} | " + " | ".join(size_label(s) for s in sizes) + " |")
        lines.append("|" + "---|" * (len(sizes) + 1))
        lines.extend(f"| {loop} | " + " | ".join(cells) + " |" for loop, cells in cells_by_loop)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")
    parser.add_argument("--conns", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=0, help="bound per measurement")
    parser.add_argument("--loops", default=",".join(LOOP_NAMES))
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="bytes, comma list")
    parser.add_argument("--unix", action="store_true", help="also run over Unix sockets")
    parser.add_argument("--tls", action="store_true", help="also run TLS rows (TLS over TCP)")
    parser.add_argument("--tls-only", action="store_true", help="run the TLS rows only")
    parser.add_argument(
        "--tls-kinds", default=",".join(TLS_DEFAULT_KINDS), help="server kinds of the TLS rows"
    )
    parser.add_argument(
        "--tls-sizes", default=",".join(map(str, TLS_SIZES)), help="TLS message sizes, bytes"
    )
    parser.add_argument("--no-ceiling", dest="ceiling", action="store_false")
    parser.add_argument("--no-connrate", dest="connrate", action="store_false")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--python", default=sys.executable, help="interpreter for servers")
    parser.add_argument("--seed", type=int, help="seed for the shuffled order")
    parser.add_argument("--build", action="store_true", help="rebuild the load generator")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every row once, tiny (CI); Unix rows and one TLS row per loop included",
    )
    args = parser.parse_args(argv)
    args.loops = [name for name in args.loops.split(",") if name]
    args.kinds = [name for name in args.kinds.split(",") if name]
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.tls_kinds = [name for name in args.tls_kinds.split(",") if name]
    args.tls_sizes = [int(s) for s in args.tls_sizes.split(",") if s]
    for name in args.loops:
        if name not in LOOP_NAMES:
            parser.error(f"unknown loop {name!r}; choose from {', '.join(LOOP_NAMES)}")
    for name in args.kinds:
        if name not in KINDS:
            parser.error(f"unknown kind {name!r}; choose from {', '.join(KINDS)}")
    for name in args.tls_kinds:
        if name not in TLS_KINDS:
            parser.error(f"--tls-kinds: {name!r} cannot serve TLS; choose from {TLS_KINDS}")
    if any(size <= 0 for size in [*args.sizes, *args.tls_sizes]):
        parser.error("sizes must be positive")
    args.tls = args.tls or args.tls_only
    if args.smoke:
        args.rounds, args.duration, args.warmup = 1, 0.3, 0.0
        args.max_requests = args.max_requests or 50
        args.conns = min(args.conns, 4)
        args.unix = True
        if not args.tls:
            args.tls, args.tls_kinds, args.tls_sizes = True, ["protocol"], [1024]
    if not (1 <= args.rounds <= 100 and 0 < args.duration <= 600 and 0 <= args.warmup <= 60):
        parser.error("--rounds 1..100, --duration 0..600 s, --warmup 0..60 s")
    if not (1 <= args.conns <= 1000):
        parser.error("--conns 1..1000")
    available = os.sched_getaffinity(0)
    if args.no_pin or not {args.server_cpu, args.client_cpu} <= available:
        if not args.no_pin:
            log(f"note: CPUs {args.server_cpu} and {args.client_cpu} not both free: not pinning")
        args.server_cpu = args.client_cpu = None
    return args


def installed(name: str) -> bool:
    if name == "asyncio":
        return True
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    loadgen, ceiling = native_binaries(args.build)
    notes: list[str] = []
    loops = []
    for name in args.loops:
        if installed(name):
            loops.append(name)
        else:
            notes.append(f"{name}: not installed, skipped")
            log(f"note: {name} is not installed, skipping it")
    groups, rows = plan(args, loops)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="oxio-net-") as tmp:
        args.cert = certificate_if(args.tls, Path(tmp), "net.py", log)
        for group in groups:
            run_group(args, loadgen, ceiling, group, Path(tmp), rng)

    report = table(rows, loops)
    print(report)
    second = second_write_table(rows, loops)
    if second:
        print()
        print(second)
    failed: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        if row.best() is None:
            why = row.failures[0] if row.failures else "no result"
            what = row.label
            if row.kind != CONNRATE:
                what += f" {size_label(row.size)}"
            status = "unsupported" if row.unsupported() else "FAILED"
            failed.setdefault((status, row.loop, why), []).append(what)
    for (status, loop, why), what in failed.items():
        notes.append(f"{status} {loop}: {', '.join(what)}: {why}")
    if args.tls:
        suites = sorted({r["tls"] for row in rows for r in row.rounds if r.get("tls")})
        verified = "verified" if args.cert.verifiable else "not verified"
        notes.append(
            f"TLS rows: {', '.join(suites) or 'no handshake completed'}; certificate: "
            f"{args.cert.origin} ({verified} by the load generator); handshakes not timed"
        )
    if notes:
        print()
        for note in notes:
            print(f"- {note}")
    elapsed = time.monotonic() - started
    if args.server_cpu is None:
        pinned = "unpinned"
    else:
        pinned = f"server on CPU {args.server_cpu}, load generator on CPU {args.client_cpu}"
    print(
        f"\n{args.rounds} round(s) x {args.duration:g} s (+{args.warmup:g} s warm-up), "
        f"{args.conns} connections, {pinned}; rounds interleaved per size across the servers "
        f"compared; best round per row; {elapsed:.0f} s in all."
    )

    if args.json:
        meta = {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "versions": {name: loop_version(name) for name in loops},
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "cert")},
            "tls_certificate": args.cert.origin if args.cert else None,
            "notes": notes,
        }
        data = {
            "meta": meta,
            "rows": [
                {
                    "kind": row.kind,
                    "transport": row.transport,
                    "size": row.size,
                    "loop": row.loop,
                    "best": row.best(),
                    "rounds": row.rounds,
                    "failures": row.failures,
                }
                for row in rows
            ],
        }
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")

    fatal = [r for r in rows if r.best() is None and r.loop in ("asyncio", CEILING)]
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
