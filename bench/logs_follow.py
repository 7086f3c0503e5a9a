"""Benchmark ``iottymux logs -f`` on a node of many containers writing at once, against ``tail -F``.

A temporary log root holds ``--containers`` pods of one container each, in the
kubelet's layout.  Each run starts a follower, waits until it has shown one line of
every container (so it is watching them all), then one writer process appends
``--lines`` numbered 100-byte lines to every container's ``0.log``, round-robin over
the containers, framed by the real CRI writer (``LineFramer``, one timestamp per
write of ``--batch`` lines), as fast as it can.  The run ends when the follower has
printed every line.  Measured per follower, in the same run of this script:

* lines/s: lines printed ÷ the time from the writer's start to the last line;
* CPU: the follower's user+system seconds, and per million lines;
* open files (sampled while running) and peak RSS (VmHWM).

Peer: GNU ``tail -q -n 0 -F FILE…`` on the same files with the same writer (it
prints the raw records: no decoding, no prefixes, no ordering).  ``iottymux logs``
runs with its defaults (prefixes, 100 ms merge window, at most 128 open files, so
with 200 writing containers idle files are closed and reopened).  Medians of
``--runs``; the two followers alternate.

    .venv/bin/python bench/logs_follow.py [--containers 200] [--lines 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._results import update  # noqa: E402
from bench.attach_fanout import cpu_seconds, peak_rss_kib  # noqa: E402
from iottymux.logformat import LineFramer, TimestampCache  # noqa: E402

SECTION = "logs-follow"  # of bench/RESULTS.md (bench/_results.py)


@dataclass
class Result:
    seconds: float
    lines: int
    cpu: float
    max_open: int
    rss_kib: int
    writer_seconds: float

    @property
    def rate(self) -> float:
        return self.lines / self.seconds


def open_files(pid: int, root: str) -> int:
    count = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                # Files only: a directory being listed is not a followed file.
                if target.startswith(root) and not os.path.isdir(target):
                    count += 1
            except OSError:
                pass
    except OSError:
        pass
    return count


def layout(root: Path, containers: int) -> list[Path]:
    paths = []
    for i in range(containers):
        directory = root / f"bench_pod-{i:03d}_uid{i:03d}" / "app"
        directory.mkdir(parents=True)
        path = directory / "0.log"
        path.write_bytes(b"")
        paths.append(path)
    return paths


def write_all(paths: list[Path], lines: int, batch: int, tag: bytes) -> float:
    """Append ``lines`` numbered lines to every file, round-robin; returns the seconds."""
    clock = TimestampCache()
    fds = [os.open(p, os.O_WRONLY | os.O_APPEND) for p in paths]
    framers = [LineFramer(b"stdout") for _ in paths]
    pad = b"x" * 80
    start = time.perf_counter()
    try:
        for first in range(0, lines, batch):
            count = min(batch, lines - first)
            for index, fd in enumerate(fds):
                text = b"".join(
                    b"%s %03d %07d %s\n" % (tag, index, first + i, pad) for i in range(count)
                )
                out, _ = framers[index].feed(text, clock.now())
                os.write(fd, out)
    finally:
        for fd in fds:
            os.close(fd)
    return time.perf_counter() - start


class Counter(threading.Thread):
    """Reads the follower's output and counts lines until told how many to expect."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines = 0
        self.cond = threading.Condition()
        self.last_at = 0.0

    def run(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            with self.cond:
                self.lines += data.count(b"\n")
                self.last_at = time.perf_counter()
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: self.lines >= count or self.proc.poll() is not None, timeout
            )


def one_run(
    name: str, argv: list[str], root: Path, paths: list[Path], lines: int, batch: int
) -> Result:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=REPO)
    counter = Counter(proc)
    counter.start()
    try:
        # Ready when it shows a line of every container: then it watches them all.
        deadline = time.monotonic() + 120
        while not counter.wait_for(len(paths), 0.2):
            write_all(paths, 1, 1, b"ready")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start")
        time.sleep(0.3)
        with counter.cond:
            base = counter.lines
        cpu_before = cpu_seconds(proc.pid)
        max_open = 0
        sampling = True

        def sample() -> None:
            nonlocal max_open
            while sampling:
                max_open = max(max_open, open_files(proc.pid, str(root)))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        start = time.perf_counter()
        writer_seconds = write_all(paths, lines, batch, b"line")
        total = len(paths) * lines
        if not counter.wait_for(base + total, 600):
            raise RuntimeError(f"{name}: {counter.lines - base} of {total} lines")
        with counter.cond:
            end = counter.last_at
            got = counter.lines - base
        sampling = False
        sampler.join()
        cpu = cpu_seconds(proc.pid) - cpu_before
        rss = peak_rss_kib(proc.pid)
        if got != total:
            raise RuntimeError(f"{name}: printed {got} lines, expected {total}")
        return Result(end - start, got, cpu, max_open, rss, writer_seconds)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        counter.join(10)
        if proc.stdout is not None:
            proc.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=200)
    parser.add_argument("--lines", type=int, default=5000, help="lines per container per run")
    parser.add_argument("--batch", type=int, default=10, help="lines per write")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", help="where to put the log root (default: a temp dir)")
    parser.add_argument("--results", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args()
    tail = shutil.which("tail")
    if tail is None:
        print("tail not found", file=sys.stderr)
        return 1
    version = subprocess.run([tail, "--version"], capture_output=True, text=True).stdout
    workdir = Path(tempfile.mkdtemp(prefix="logs-follow-bench-", dir=args.dir))
    try:
        print(
            f"{args.containers} containers x {args.lines} lines of 100 B per run, "
            f"{args.batch} lines per write, {args.runs} runs; python {sys.version.split()[0]}; "
            f"{version.splitlines()[0]}"
        )
        load_start = os.getloadavg()
        print("load average at start: {:.2f} {:.2f} {:.2f}".format(*load_start))
        results: dict[str, list[Result]] = {"iottymux logs -f": [], "tail -F": []}
        for run in range(args.runs):
            for name in list(results) if run % 2 == 0 else list(reversed(results)):
                root = workdir / f"run{run}-{name.split()[0]}"
                paths = layout(root, args.containers)
                if name == "tail -F":
                    argv = [tail, "-q", "-n", "0", "-F", *map(str, paths)]
                else:
                    argv = [
                        sys.executable,
                        "-m",
                        "iottymux",
                        "logs",
                        "-f",
                        "--tail",
                        "0",
                        "--log-root",
                        str(root),
                        "-n",
                        "bench",
                    ]
                results[name].append(one_run(name, argv, root, paths, args.lines, args.batch))
                shutil.rmtree(root)
        load_after = os.getloadavg()
        print("load average after: {:.2f} {:.2f} {:.2f}".format(*load_after))
        peer = statistics.median(r.rate for r in results["tail -F"])
        peer_cpu = statistics.median(r.cpu / r.lines * 1e6 for r in results["tail -F"])
        header = (
            "| follower | lines/s | vs `tail -F` | CPU s | CPU s per M lines | vs `tail -F` "
            "| open files (max) | peak RSS MiB | each run's lines/s |"
        )
        table = [header, "|---|---|---|---|---|---|---|---|---|"]
        print()
        print(
            f"{'follower':<18} {'lines/s':>10} {'vs tail':>8} {'CPU s':>7} {'CPU s/M lines':>14} "
            f"{'vs tail':>8} {'open files':>10} {'peak RSS':>9}  (each run's lines/s)"
        )
        for name, runs in results.items():
            rate = statistics.median(r.rate for r in runs)
            cpu = statistics.median(r.cpu for r in runs)
            per_m = statistics.median(r.cpu / r.lines * 1e6 for r in runs)
            cpu_ratio = per_m / peer_cpu if peer_cpu else float("inf")
            opened = max(r.max_open for r in runs)
            rss = max(r.rss_kib for r in runs) / 1024
            each = ", ".join(f"{r.rate:.0f}" for r in runs)
            print(
                f"{name:<18} {rate:>10.0f} {rate / peer:>7.2f}x {cpu:>7.2f} {per_m:>14.2f} "
                f"{cpu_ratio:>7.2f}x {opened:>10} {rss:>7.1f}MiB  ({each})"
            )
            table.append(
                f"| `{name}` | {rate:.0f} | {rate / peer:.2f}x | {cpu:.2f} | {per_m:.2f} "
                f"| {cpu_ratio:.2f}x | {opened} | {rss:.1f} | {each} |"
            )
        writer = statistics.median(r.writer_seconds for runs in results.values() for r in runs)
        lines = args.containers * args.lines
        print(f"(the writer alone: {lines / writer:.0f} lines/s, median)")
        if args.results is not None:
            text = [
                "## Following a node: `iottymux logs -f` (bench/logs_follow.py)",
                "",
                f"{args.containers} containers (one pod each) in a kubelet log root; one "
                f"writer appends {args.lines} numbered 100-byte lines to every container, "
                f"{args.batch} lines per write through the real CRI framer, round-robin, "
                f"as fast as it can ({lines / writer:.0f} lines/s alone, median); the run "
                "ends when the follower has printed every line. `iottymux logs -f -n bench "
                "--tail 0` with its defaults (prefixes, 100 ms merge window, at most 128 "
                "open files) against GNU `tail -q -n 0 -F` on the same files (raw records: "
                f"no decoding, prefixes or ordering). {args.runs} runs each, alternating, "
                f"medians. Load average {load_start[0]:.2f} at the start, {load_after[0]:.2f} "
                "at the end (2 vCPUs shared with other work).",
                "",
                *table,
            ]
            update(args.results, {SECTION: "\n".join(text)})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
