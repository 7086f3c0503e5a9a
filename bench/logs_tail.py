"""Benchmark ``iottymux logs`` against ``cat FILE | wc -l``, ``tail -n 100`` and ``grep``.

Generates a CRI log with the real writer (``LineFramer``: 100-byte lines, one
timestamp per 64 KiB "read", a 40 KiB line split into P pieces every few MB) in a
temporary directory, then times, on the same file in the same run:

* ``iottymux logs --tail 100``        (also on a 16 MB file: the cost must not grow)
* ``iottymux logs --since <the last 256 KiB>``
* ``iottymux logs FILE | wc -l``      (full read, MB/s; goal >= 1 GB/s)
* ``--timestamps``, ``--stream stdout``, ``--exclude`` (drops 1 line in 10) and
  ``--include`` (keeps 1 in 10): the filters, goal >= 400 MB/s; ``grep`` with the
  same pattern is their peer
* ``iottymux logs --output json | wc -l`` (goal >= 200 MB/s)
* ``iottymux logs --prefix | wc -l`` (every line labelled, as when a pod's containers
  are merged), and the full read again with ``IOTTYMUX_PURE_PYTHON=1``: what the C
  accelerator (``iottymux._prefixes``) is worth

each against ``tail -n 100 FILE`` and ``cat FILE | wc -l``.  Every case runs
``--runs`` times; medians are printed with ratios.  The library calls are also
timed in-process, without interpreter start-up, with the bytes they read.
``--results FILE`` also writes the table as a marked section of a markdown file
(``bench/RESULTS.md``), replacing the section of an earlier run.

    .venv/bin/python bench/logs_tail.py [--size-mb 1024] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._results import update  # noqa: E402
from iottymux.logblocks import ACCELERATED  # noqa: E402
from iottymux.logfiles import ReadStats  # noqa: E402
from iottymux.logformat import LineFramer, format_timestamp  # noqa: E402
from iottymux.logreader import ReadOptions, read_lines  # noqa: E402
from iottymux.logsegments import LogSource  # noqa: E402

T0 = 1_700_000_000_000_000_000
READ_SIZE = 64 * 1024
LINE = 100


def generate(path: Path, size_mb: int) -> tuple[int, int]:
    """Write about ``size_mb`` MiB; returns (records, time of the last 256 KiB)."""
    framer = LineFramer(b"stdout")
    placeholder = format_timestamp(0)
    text = b"".join(b"%08d %s\n" % (i, b"x" * (LINE - 10)) for i in range(READ_SIZE // LINE))
    read_chunk, count = framer.feed(text, placeholder)
    long_chunk, long_count = framer.feed(b"L" * 40_000 + b"\n", placeholder)
    target = size_mb << 20
    written = lines = 0
    t = T0
    late_time = 0
    batch: list[bytes] = []
    with open(path, "wb", buffering=0) as f:
        i = 0
        while written < target:
            t = T0 + i * 1_000_000
            if i % 64 == 63:
                chunk, n = long_chunk, long_count
            else:
                chunk, n = read_chunk, count
            batch.append(chunk.replace(placeholder, format_timestamp(t)))
            written += len(chunk)
            lines += n
            if written >= target - (256 << 10) and not late_time:
                late_time = t
            if len(batch) == 256:
                f.write(b"".join(batch))
                batch = []
            i += 1
        f.write(b"".join(batch))
    return lines, late_time


ENV = dict(os.environ)


@dataclass
class Timing:
    """One command's runs: wall seconds and CPU seconds (every process of it) of each."""

    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    out: bytes = b""

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpus)


def time_once(cmd: str, timing: Timing) -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(cmd, shell=True, capture_output=True, check=True, cwd=REPO, env=ENV)
    timing.walls.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    timing.cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    timing.out = result.stdout


def timed(cmd: str, runs: int) -> Timing:
    timing = Timing()
    for _ in range(runs):
        time_once(cmd, timing)
    return timing


def timed_round_robin(cmds: list[str], runs: int) -> list[Timing]:
    """Every command once per round, ``runs`` rounds: a change of load hits them all."""
    timings = [Timing() for _ in cmds]
    for _ in range(runs):
        for cmd, timing in zip(cmds, timings, strict=True):
            time_once(cmd, timing)
    return timings


def in_process(source_path: Path, options: ReadOptions, runs: int) -> tuple[float, int, int]:
    times = []
    stats = ReadStats()
    lines = 0
    for _ in range(runs):
        stats = ReadStats()
        start = time.perf_counter()
        lines = sum(
            1 for _ in read_lines(LogSource.for_file(str(source_path)), options, stats=stats)
        )
        times.append(time.perf_counter() - start)
    return statistics.median(times), stats.bytes_read, lines


SECTION = "logs-tail"  # of bench/RESULTS.md (bench/_results.py)


@dataclass
class Row:
    name: str
    timing: Timing
    nbytes: int
    goal: str

    def cells(self, tail: Timing, cat: Timing) -> list[str]:
        t = self.timing
        mbps = f"{self.nbytes / t.wall / 1e6:.0f}" if self.nbytes else ""
        per_cpu = f"{self.nbytes / t.cpu / 1e6:.0f}" if self.nbytes and t.cpu else ""
        cpu_ratio = f"{t.cpu / cat.cpu:.2f}x" if self.nbytes and cat.cpu else ""
        return [
            f"{t.wall * 1e3:.1f}",
            f"{t.wall / tail.wall:.1f}x",
            f"{t.wall / cat.wall:.2f}x",
            mbps,
            f"{t.cpu:.2f}",
            per_cpu,
            cpu_ratio,
        ]

    def text(self, tail: Timing, cat: Timing) -> str:
        wall, vs_tail, vs_cat, mbps, cpu, per_cpu, cpu_ratio = self.cells(tail, cat)
        return (
            f"{self.name:<42} {wall:>7}ms {vs_tail:>8} {vs_cat:>7} {mbps:>6} {cpu:>6} "
            f"{per_cpu:>8} {cpu_ratio:>10}  {self.goal}"
        )


def write_section(
    path: Path,
    size: int,
    records: int,
    logical: int,
    runs: int,
    load_start: tuple[float, float, float],
    load_after: tuple[float, float, float],
    rows: list[Row],
    tail: Timing,
    cat: Timing,
) -> None:
    lines = [
        "## Reading logs: `iottymux logs` (bench/logs_tail.py)",
        "",
        f"One {size / 1e6:.0f} MB CRI log from the real writer ({records} records, "
        f"{logical} logical lines of 100 B, a 40 KiB line in P pieces every 4 MB), "
        f"page cache warm; {runs} rounds, every case once per round, medians. Each case is "
        "the whole command (interpreter start-up included) with its output piped to "
        "`wc -l`, against `cat FILE | wc -l`, `tail -n 100 FILE` and `grep` from the same "
        "rounds. CPU s is the user+system time of every process of the command (`wc` "
        "too); MB per CPU second is less sensitive to other work on the machine than "
        f"MB/s. Load average {load_start[0]:.2f} at the start, {load_after[0]:.2f} at the "
        "end (2 vCPUs shared with other work). The C accelerator (`iottymux._prefixes`) "
        f"{'in use' if ACCELERATED else 'NOT built'}; the last row turns it off. `iottymux "
        "logs` asks for a 1 MiB pipe on its standard output.",
        "",
        "| case | median ms | vs `tail -n 100` | vs `cat \\| wc -l` | MB/s | CPU s "
        "| MB per CPU s | CPU vs `cat \\| wc -l` | goal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cell = row.name.replace("|", "\\|")
        lines.append(f"| `{cell}` | " + " | ".join(row.cells(tail, cat)) + f" | {row.goal} |")
    update(path, {SECTION: "\n".join(lines)})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", help="where to put the generated files (default: a temp dir)")
    parser.add_argument("--results", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="logs-bench-", dir=args.dir))
    try:
        big = workdir / "0.log"
        small = workdir / "small" / "0.log"
        small.parent.mkdir()
        start = time.perf_counter()
        lines, late = generate(big, args.size_mb)
        _, small_late = generate(small, min(16, args.size_mb))
        size = big.stat().st_size
        print(
            f"generated {size / 1e6:.0f} MB, {lines} records in {time.perf_counter() - start:.1f}s"
            f" ({workdir}); runs per case: {args.runs}; python {sys.version.split()[0]}"
        )
        # Ratios are same-run, but a busy machine slows the Python cases more.
        load_start = os.getloadavg()
        print("load average at start: {:.2f} {:.2f} {:.2f}".format(*load_start))
        print(f"C accelerator in use: {'yes' if ACCELERATED else 'no (not built)'}")
        # Warm the page cache so every contender reads from memory.
        subprocess.run(["cat", str(big), str(small)], stdout=subprocess.DEVNULL, check=True)

        py = f"{sys.executable} -m iottymux logs"
        # Measure an installed tool: bytecode cached (in the temp dir, not the repo),
        # even where the environment says not to write it.
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        ENV["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        timed(f"{py} --tail 1 {small}", 1)
        since = format_timestamp(late).decode()

        # (name, command, bytes it reads for a MB/s figure, or 0, goal MB/s or 0)
        peers = [
            ("tail -n 100 FILE", f"tail -n 100 {big}", 0, 0),
            ("cat FILE | wc -l", f"cat {big} | wc -l", size, 0),
            ("grep -c '5 x' FILE", f"grep -c '5 x' {big}", size, 0),
        ]
        cases = [
            ("iottymux logs --tail 100", f"{py} --tail 100 {big}", 0, 0),
            ("iottymux logs --tail 100 (16 MB file)", f"{py} --tail 100 {small}", 0, 0),
            (
                "iottymux logs --since <last 256 KiB>",
                f"{py} --since {since} {big} > /dev/null",
                0,
                0,
            ),
            ("iottymux logs FILE | wc -l", f"{py} {big} | wc -l", size, 1000),
            ("iottymux logs --timestamps | wc -l", f"{py} --timestamps {big} | wc -l", size, 400),
            (
                "iottymux logs --stream stdout | wc -l",
                f"{py} --stream stdout {big} | wc -l",
                size,
                400,
            ),
            (
                "iottymux logs --exclude '5 x' | wc -l",
                f"{py} --exclude '5 x' {big} | wc -l",
                size,
                400,
            ),
            (
                "iottymux logs --include '5 x' | wc -l",
                f"{py} --include '5 x' {big} | wc -l",
                size,
                400,
            ),
            ("iottymux logs --output json | wc -l", f"{py} --output json {big} | wc -l", size, 200),
            ("iottymux logs --prefix | wc -l", f"{py} --prefix {big} | wc -l", size, 0),
            (
                "iottymux logs FILE | wc -l (pure Python)",
                f"IOTTYMUX_PURE_PYTHON=1 {py} {big} | wc -l",
                size,
                0,
            ),
        ]
        every = peers + cases
        timings = timed_round_robin([cmd for _, cmd, _, _ in every], args.runs)
        tail, cat, grep = timings[:3]
        results = timings[3:]

        # Sanity: every output is what it must be.
        assert int(cat.out) == lines
        expected_tail = b"".join(line.split(b" ", 3)[3] + b"\n" for line in tail.out.splitlines())
        assert results[0].out == expected_tail, "tail output differs"
        logical = int(results[3].out)
        assert int(results[7].out) == int(grep.out), "--include and grep disagree"
        assert int(results[6].out) + int(grep.out) == logical, "--exclude dropped the wrong lines"
        assert int(results[8].out) == logical, "json wrote another number of lines"
        assert int(results[9].out) == logical and int(results[10].out) == logical

        rows: list[Row] = []
        print()
        print(
            f"{'case':<42} {'median':>9} {'vs tail':>8} {'vs cat':>7} {'MB/s':>6} "
            f"{'CPU s':>6} {'MB/CPU s':>8} {'CPU vs cat':>10}  goal"
        )
        for (name, _, nbytes, goal), timing in zip(every, timings, strict=True):
            mbps = nbytes / timing.wall / 1e6 if nbytes else 0.0
            verdict = f"{goal} MB/s: {'met' if mbps >= goal else 'not met'}" if goal else ""
            row = Row(name, timing, nbytes, verdict)
            rows.append(row)
            print(row.text(tail, cat))
        print(f"(full read: {logical} logical lines from {lines} records)")
        load_after = os.getloadavg()
        print("load average after the timed cases: {:.2f} {:.2f} {:.2f}".format(*load_after))
        if args.results is not None:
            write_section(
                args.results,
                size,
                lines,
                logical,
                args.runs,
                load_start,
                load_after,
                rows,
                tail,
                cat,
            )

        print()
        print("in-process (library, no interpreter start-up):")
        for name in ("tail 100", "since <last 256 KiB>"):
            for label, path, last_pct in (("big", big, late), ("16 MB", small, small_late)):
                if name == "tail 100":
                    options = ReadOptions(tail=100)
                else:
                    options = ReadOptions(since_ns=last_pct)
                median, nbytes, count = in_process(path, options, args.runs)
                print(
                    f"  {name:<16} {label:<6} {median * 1e3:>8.2f}ms"
                    f"  read {nbytes / 1024:>6.0f} KiB  ({count} lines)"
                )
        bare = timed(f"{sys.executable} -c pass", args.runs).wall
        cold_env = dict(ENV, PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=str(workdir / "none"))
        start = time.perf_counter()
        subprocess.run(
            f"{py} --tail 100 {small}",
            shell=True,
            env=cold_env,
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=REPO,
        )
        cold = time.perf_counter() - start
        print(
            f"  python start-up alone: {bare * 1e3:.0f}ms; "
            f"--tail 100 without cached bytecode: {cold * 1e3:.0f}ms"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
