"""Benchmark ``iottymux logs`` against ``tail -n 100`` and ``cat FILE | wc -l``.

Generates a CRI log with the real writer (``LineFramer``: 100-byte lines, one
timestamp per 64 KiB "read", a 40 KiB line split into P pieces every few MB) in a
temporary directory, then times, on the same file in the same run:

* ``iottymux logs --tail 100``        (also on a 16 MB file: the cost must not grow)
* ``iottymux logs --since <the last 256 KiB>``
* ``iottymux logs FILE | wc -l``      (full read, MB/s)
* ``iottymux logs --output json``     (the per-record decoder path, on a 64 MB file)

each against ``tail -n 100 FILE`` and ``cat FILE | wc -l``.  Every case runs
``--runs`` times; medians are printed with ratios.  The library calls are also
timed in-process, without interpreter start-up, with the bytes they read.

    .venv/bin/python bench/logs_tail.py [--size-mb 1024] [--runs 5] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from iottymux.logformat import LineFramer, format_timestamp  # noqa: E402
from iottymux.logreader import LogSource, ReadOptions, ReadStats, read_lines  # noqa: E402

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


def timed(cmd: str, runs: int) -> tuple[float, bytes]:
    times = []
    out = b""
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(cmd, shell=True, capture_output=True, check=True, cwd=REPO, env=ENV)
        times.append(time.perf_counter() - start)
        out = result.stdout
    return statistics.median(times), out


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", help="where to put the generated files (default: a temp dir)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="logs-bench-", dir=args.dir))
    try:
        big = workdir / "0.log"
        small = workdir / "small" / "0.log"
        sample = workdir / "sample" / "0.log"
        small.parent.mkdir()
        sample.parent.mkdir()
        start = time.perf_counter()
        lines, late = generate(big, args.size_mb)
        _, small_late = generate(small, min(16, args.size_mb))
        generate(sample, min(64, args.size_mb))
        size = big.stat().st_size
        sample_size = sample.stat().st_size
        print(
            f"generated {size / 1e6:.0f} MB, {lines} records in {time.perf_counter() - start:.1f}s"
            f" ({workdir}); runs per case: {args.runs}; python {sys.version.split()[0]}"
        )
        # Ratios are same-run, but a busy machine slows the Python cases more.
        print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
        # Warm the page cache so every contender reads from memory.
        subprocess.run(
            ["cat", str(big), str(small), str(sample)], stdout=subprocess.DEVNULL, check=True
        )

        py = f"{sys.executable} -m iottymux logs"
        # Measure an installed tool: bytecode cached (in the temp dir, not the repo),
        # even where the environment says not to write it.
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        ENV["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
        timed(f"{py} --tail 1 {small}", 1)
        since = format_timestamp(late).decode()
        tail_time, tail_out = timed(f"tail -n 100 {big}", args.runs)
        cat_time, cat_out = timed(f"cat {big} | wc -l", args.runs)
        assert int(cat_out) == lines

        # (name, command, bytes it reads for a MB/s figure, or 0)
        cases = [
            ("iottymux logs --tail 100", f"{py} --tail 100 {big}", 0),
            ("iottymux logs --tail 100 (16 MB file)", f"{py} --tail 100 {small}", 0),
            ("iottymux logs --since <last 256 KiB>", f"{py} --since {since} {big} > /dev/null", 0),
            ("iottymux logs FILE | wc -l", f"{py} {big} | wc -l", size),
            ("iottymux logs --timestamps | wc -l", f"{py} --timestamps {big} | wc -l", size),
            (
                "iottymux logs --output json | wc -l (64MB)",
                f"{py} --output json {sample} | wc -l",
                sample_size,
            ),
        ]
        results = []
        for name, cmd, _ in cases:
            median, out = timed(cmd, args.runs)
            results.append((name, median, out))

        # Sanity: the tail is the same lines tail(1) shows, minus the CRI prefix.
        expected_tail = b"".join(line.split(b" ", 3)[3] + b"\n" for line in tail_out.splitlines())
        assert results[0][2] == expected_tail, "tail output differs"
        logical = int(results[3][2])

        def row(name: str, median: float, note: str = "") -> None:
            print(
                f"{name:<46} {median * 1e3:>8.1f}ms {median / tail_time:>13.1f}x "
                f"{median / cat_time:>12.2f}x  {note}"
            )

        print()
        print(f"{'case':<46} {'median':>10} {'vs tail -n100':>14} {'vs cat|wc -l':>13}  note")
        row("tail -n 100 FILE", tail_time)
        row("cat FILE | wc -l", cat_time, f"{size / cat_time / 1e6:.0f} MB/s")
        for (name, median, _), (_, _, nbytes) in zip(results, cases, strict=True):
            row(name, median, f"{nbytes / median / 1e6:.0f} MB/s" if nbytes else "")
        print(f"(full read: {logical} logical lines from {lines} records)")
        print("load average after the timed cases: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

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
        bare, _ = timed(f"{sys.executable} -c pass", args.runs)
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
