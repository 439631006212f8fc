"""Alternating A/B runs of echo servers: loops, or builds of oxio's extension module.

    python benchmarks/ab.py --kind protocol --size 1048576 --runs 4 oxio rloop old.so

Each entry is a loop name (asyncio, uvloop, rloop, oxio) or the path of a built `_oxio`
extension module (a copy of `target/release/lib_oxio.so`, say), which then runs as oxio
from a private copy of the installed package: the installed one is never touched. A
build whose Python side differs too is given as a directory: a copy of the `oxio`
package (`python/oxio` with its extension module beside it), which runs as it is. The
entries run one after another, `--runs` times round, each run in a fresh server process
under the native load generator (server and load generator pinned to their own CPUs, as in
net.py). Per run it prints requests/s and the server's user and system CPU time per
request, then each entry's median and range.

net.py keeps every server up for all rounds and reports best rounds; this tool is for the
other question, whether one build beats another: a fresh process per run takes a new draw
of what a process carries from its start (its allocator's heap, its connections' TCP
state), and the alternation spreads the machine's drift over every entry alike.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from loops import LOOP_NAMES  # noqa: E402
from net import CLK_TCK, CONNRATE, ROOT, native_binaries, run_loadgen  # noqa: E402
from net_servers import KINDS  # noqa: E402
from server_process import Server, cpu_split  # noqa: E402


def private_package(build: Path, tmp: Path, n: int) -> Path:
    """A private oxio package for `build`: a copy of the installed package with `build`
    as its extension module, or, for a directory, a copy of that package. Returns the
    directory to put first on PYTHONPATH."""
    if build.is_dir():
        source = build
    else:
        spec = importlib.util.find_spec("oxio")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("ab.py: oxio is not installed; a build needs its package around it")
        source = Path(list(spec.submodule_search_locations)[0])
    root = tmp / f"build{n}"
    package = root / "oxio"
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__"))
    modules = list(package.glob("_oxio*.so"))
    if len(modules) != 1:
        raise SystemExit(f"ab.py: expected one _oxio*.so in {source}, found {len(modules)}")
    if not build.is_dir():
        shutil.copyfile(build, modules[0])
    return root


def one_run(args: argparse.Namespace, loadgen: Path, entry: str, path: Path | None, tmp: Path):
    """One fresh server under the load generator: (requests/s, user µs, system µs per
    request)."""
    loop = "oxio" if path is not None else entry
    argv = [sys.executable, str(HERE / "net_servers.py"), "--loop", loop, "--kind", args.kind]
    argv += ["--port", "0", "--cpu", str(args.server_cpu)]
    if path is not None:
        argv = ["env", f"PYTHONPATH={path}"] + argv
    server = Server(argv, tmp / "server.err", cwd=ROOT)
    try:
        before = cpu_split(server.proc.pid)
        row = SimpleNamespace(kind=CONNRATE if args.connrate else args.kind, size=args.size)
        result = run_loadgen(args, loadgen, server.where, "tcp", row)  # type: ignore[arg-type]
        after = cpu_split(server.proc.pid)
    finally:
        server.stop()
    total = max(int(result.get("total_requests", result["requests"])), 1)
    per = [(b - a) / CLK_TCK * 1e6 / total for a, b in zip(before, after)]
    return result["rps"], per[0], per[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "entries",
        nargs="+",
        help="loop names, paths of built _oxio modules, or oxio package directories",
    )
    p.add_argument("--kind", default="protocol", choices=KINDS)
    p.add_argument("--size", type=int, default=1024, help="message size, bytes")
    p.add_argument("--connrate", action="store_true", help="connect + close cycles instead")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--max-requests", type=int, default=0, help="bound per run")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--smoke", action="store_true", help="one short run of each entry")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.duration, args.warmup, args.max_requests = 1, 0.3, 0.1, 2000
    if args.runs < 1 or args.duration <= 0 or args.size < 1:
        p.error("--runs, --duration and --size must be positive")
    if (os.cpu_count() or 1) < 2:
        args.server_cpu = args.client_cpu = 0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    loadgen, _ceiling = native_binaries(False)
    results: dict[str, list[tuple[float, float, float]]] = {e: [] for e in args.entries}
    with tempfile.TemporaryDirectory(prefix="oxio-ab-") as tmp_name:
        tmp = Path(tmp_name)
        paths: dict[str, Path | None] = {}
        for n, entry in enumerate(args.entries):
            if entry in LOOP_NAMES:
                paths[entry] = None
            elif Path(entry).exists():
                paths[entry] = private_package(Path(entry).resolve(), tmp, n)
            else:
                raise SystemExit(f"ab.py: {entry!r} is neither a loop nor a build")
        # A build is shown by its file name unless two builds share one.
        names = [Path(e).name if paths[e] else e for e in args.entries]
        label = {e: n if names.count(n) == 1 else e for e, n in zip(args.entries, names)}
        width = max(len(n) for n in label.values())
        for run in range(1, args.runs + 1):
            for entry in args.entries:
                rps, user, system = one_run(args, loadgen, entry, paths[entry], tmp)
                results[entry].append((rps, user, system))
                print(
                    f"run {run}  {label[entry]:<{width}}  {rps:>11,.0f} requests/s"
                    f"  user {user:6.2f} µs  sys {system:6.2f} µs per request",
                    flush=True,
                )
    print()
    for entry, runs in results.items():
        rates = [r[0] for r in runs]
        cpu = statistics.median(r[1] + r[2] for r in runs)
        print(
            f"{label[entry]:<{width}}  median {statistics.median(rates):>11,.0f} requests/s"
            f"  ({min(rates):,.0f}-{max(rates):,.0f}),  CPU {cpu:.2f} µs per request"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
