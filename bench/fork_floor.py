"""Where a forked monitor's private pages go: the floor under issue 14 §1.

A monitor forked by the fork server shares the fork server's heap until it writes
to it; what it writes is its own (private dirty).  This measures, in one run, the
private dirty pages of:

- **floor**: a child forked from a fresh interpreter (``python -S``, the monitor's
  environment) that has imported the monitor's modules, collected and
  ``gc.freeze()``d exactly as the fork server does, and then does nothing but
  ``pause()`` — the cost of being a forked CPython at all;
- **idle monitor**: a monitor forked by a real :class:`~iottymux.forkserver.ForkServer`
  for a pod with no app yet, once it is ready and quiet;

each split by mapping (pymalloc's arenas and other anonymous memory, libpython's
data, the C heap, the rest), medians over ``--samples`` children, and the floor's
share of the idle monitor's.  ``bench/monitor_memory.py`` has the monitors of pods
whose app logged, beside conmon and containerd's shim.  ``--results FILE`` also
writes the table into a marked section of a markdown file.

    .venv/bin/python bench/fork_floor.py [--samples 5] [--results bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import os
import pickle
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._results import update
from iottymux.forkserver import ForkServer
from iottymux.monitor_cmd import monitor_environment

SECTION = "fork-floor"
QUIET_SECONDS = 1.0
PAGE = os.sysconf("SC_PAGE_SIZE")
KINDS = ("anonymous (pymalloc arenas, mmaps)", "libpython data", "C heap", "other")


def private_dirty_by_mapping(pid: int) -> dict[str, int]:
    """Private dirty KiB of ``pid``, by the kinds of :data:`KINDS`."""
    out: collections.Counter[str] = collections.Counter()
    kind = "other"
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            parts = line.split()
            if not parts[0].endswith(":"):  # a mapping's header line
                path = parts[5] if len(parts) > 5 else ""
                if not path:
                    kind = KINDS[0]
                elif "libpython" in path:
                    kind = KINDS[1]
                elif path == "[heap]":
                    kind = KINDS[2]
                else:
                    kind = KINDS[3]
            elif parts[0] == "Private_Dirty:":
                out[kind] += int(parts[1])
    return {k: out[k] for k in KINDS}


#: A fresh interpreter made ready as :func:`iottymux.forkserver.serve` makes itself,
#: which forks a child that only pauses, prints the child's pid, and kills it when its
#: standard input closes.
FLOOR_PROGRAM = """
import gc, os, signal, sys
from iottymux import monitor, monitor_cmd
monitor_cmd.tune_malloc(monitor_cmd.load_libc())
del monitor
gc.collect()
gc.freeze()
pid = os.fork()
if pid == 0:
    signal.pause()
    os._exit(0)
print(pid, flush=True)
sys.stdin.read()
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"""


#: The same preparation, but the child is a monitor (as the fork server's child
#: runs it), and before freezing, the address range and kind of every object the
#: collector tracks, every function's code objects and every name and dict key
#: are written to ``argv[1]`` (pickled), so the monitor's private pages can be
#: told apart by what they hold.
MONITOR_PROGRAM = """
import gc, os, pickle, signal, sys, types
from iottymux import monitor, monitor_cmd
libc = monitor_cmd.load_libc()
monitor_cmd.tune_malloc(libc)
del monitor
gc.collect()
ranges, seen = [], set()
def add(obj, kind):
    if id(obj) not in seen:
        seen.add(id(obj))
        ranges.append((id(obj), id(obj) + sys.getsizeof(obj), kind))
for obj in gc.get_objects():
    add(obj, type(obj).__name__)
    if isinstance(obj, types.FunctionType):
        codes = [obj.__code__]
        while codes:
            code = codes.pop()
            add(code, "code")
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            for name in code.co_names:
                add(name, "str")
    elif isinstance(obj, dict):
        for key in obj:
            if isinstance(key, str):
                add(key, "str")
with open(sys.argv[1], "wb") as out:
    pickle.dump(sorted(ranges), out)
del ranges, seen
gc.collect()
gc.freeze()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    os.setsid()
    os._exit(monitor_cmd.serve_monitor(sys.argv[2], w, detached=True, libc=libc, protect=False))
os.close(w)
print(os.read(r, 100).split()[1].decode(), flush=True)
sys.stdin.read()
os.kill(pid, signal.SIGKILL)
os.waitpid(pid, 0)
"""

#: What a private page of the monitor holds, by the first of these that it does.
PAGE_KINDS = (
    "code objects",
    "strings (names, keys)",
    "other objects the fork server made",
    "only memory the monitor allocated",
)


def classify_pages(pid: int, ranges: list[tuple[int, int, str]]) -> dict[str, int]:
    """``pid``'s private anonymous and heap pages, counted by :data:`PAGE_KINDS`.

    A page is the monitor's own when the pagemap says it is present and mapped by
    this process alone (the copy ``fork`` made on its first write, or new memory).
    """
    starts = [start for start, _, _ in ranges]
    counts = dict.fromkeys(PAGE_KINDS, 0)
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            parts = line.split()
            if "w" not in parts[1] or (len(parts) > 5 and parts[5] != "[heap]"):
                continue
            low, high = (int(x, 16) for x in parts[0].split("-"))
            pagemap.seek(low // PAGE * 8)
            entries = pagemap.read((high - low) // PAGE * 8)
            for n, (entry,) in enumerate(struct.iter_unpack("Q", entries)):
                if not (entry >> 63 & 1 and entry >> 56 & 1):  # present, exclusive
                    continue
                page = low + n * PAGE
                kinds = set()
                i = bisect.bisect_right(starts, page + PAGE - 1) - 1
                # Objects are small but for a few; look back a bounded way.
                while i >= 0 and starts[i] > page - (1 << 20):
                    _start, end, kind = ranges[i]
                    if end > page:
                        kinds.add(kind)
                    i -= 1
                if "code" in kinds:
                    counts[PAGE_KINDS[0]] += 1
                elif "str" in kinds:
                    counts[PAGE_KINDS[1]] += 1
                elif kinds:
                    counts[PAGE_KINDS[2]] += 1
                else:
                    counts[PAGE_KINDS[3]] += 1
    return counts


def floor_child() -> tuple[subprocess.Popen[str], int]:
    """The preparer (close its stdin to end both) and its pausing child's pid."""
    return _preparer([sys.executable, "-S", "-c", FLOOR_PROGRAM])


def _preparer(argv: list[str]) -> tuple[subprocess.Popen[str], int]:
    preparer = subprocess.Popen(
        argv,
        env=monitor_environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd="/",
    )
    assert preparer.stdout is not None
    return preparer, int(preparer.stdout.readline())


def classified_monitor(tmp: str, name: str) -> dict[str, int]:
    """Run an instrumented idle monitor; its private pages by what they hold."""
    ranges_file = os.path.join(tmp, f"{name}.ranges")
    preparer, pid = _preparer(
        [sys.executable, "-S", "-c", MONITOR_PROGRAM, ranges_file, os.path.join(tmp, name)]
    )
    try:
        time.sleep(QUIET_SECONDS)  # a settle time, as for the others
        with open(ranges_file, "rb") as f:
            ranges = pickle.load(f)
        return classify_pages(pid, ranges)
    finally:
        assert preparer.stdin is not None
        preparer.stdin.close()
        preparer.wait()


def measure(samples: int) -> dict[str, list[dict[str, int]]]:
    results: dict[str, list[dict[str, int]]] = {"floor": [], "idle monitor": [], "pages": []}
    server = ForkServer()
    server.start()
    with tempfile.TemporaryDirectory(prefix="fork-floor-") as tmp:
        try:
            for i in range(samples):
                preparer, floor = floor_child()
                monitor = server.start_monitor(os.path.join(tmp, f"pod{i}"))
                try:
                    time.sleep(QUIET_SECONDS)  # a settle time, not a synchronisation
                    results["floor"].append(private_dirty_by_mapping(floor))
                    results["idle monitor"].append(private_dirty_by_mapping(monitor))
                finally:
                    os.kill(monitor, signal.SIGKILL)  # nobody's child: not ours to wait for
                    assert preparer.stdin is not None
                    preparer.stdin.close()
                    preparer.wait()
                results["pages"].append(classified_monitor(tmp, f"classified{i}"))
        finally:
            server.close()
    return results


def table(results: dict[str, list[dict[str, int]]]) -> list[str]:
    def med(name: str, kind: str | None) -> float:
        rows = results[name]
        return statistics.median(sum(r.values()) if kind is None else r[kind] for r in rows)

    lines = [
        "| process | " + " | ".join(KINDS) + " | private dirty, MiB | share of the idle monitor |",
        "|---|" + "---|" * (len(KINDS) + 2),
    ]
    monitor_total = med("idle monitor", None)
    for name in ("floor", "idle monitor"):
        cells = [f"{med(name, kind) / 1024:.2f}" for kind in KINDS]
        total = med(name, None)
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {total / 1024:.2f} | "
            f"{total / monitor_total:.2f}x |"
        )
    pages = results["pages"]
    lines += [
        "",
        "| the idle monitor's own anonymous and heap pages holding | pages | MiB |",
        "|---|---|---|",
    ]
    for kind in PAGE_KINDS:
        count = statistics.median(p[kind] for p in pages)
        lines.append(f"| {kind} | {count:.0f} | {count * PAGE / 2**20:.2f} |")
    everything = statistics.median(sum(p.values()) for p in pages)
    lines.append(f"| all | {everything:.0f} | {everything * PAGE / 2**20:.2f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--results", type=Path, help="also write the table into this file")
    args = parser.parse_args(argv)
    results = measure(args.samples)
    body = table(results)
    print("\n".join(body))
    if args.results is not None:
        text = [
            "## Where a forked monitor's private pages go (bench/fork_floor.py)",
            "",
            "Private dirty memory by mapping, medians of "
            f"{args.samples} children, python {sys.version.split()[0]}. *floor*: a child "
            "forked from an interpreter prepared as the fork server prepares itself (the "
            "monitor's modules imported, `gc.collect()`, `gc.freeze()`) that only calls "
            "`pause()`; *idle monitor*: a monitor forked by the fork server for a pod with "
            "no app yet. The second table: an idle monitor prepared the same way whose "
            "private anonymous and heap pages (present and mapped by it alone, from "
            "/proc/PID/pagemap) are sorted by what the fork server had put there: a page "
            "holding a code object counts as code, else one holding a name or dict key as "
            "strings, else one holding any other object the fork server made. All but the "
            "last row are pages the monitor only *read* objects on: CPython 3.11 writes "
            "every object it uses (a reference count; a code object's count at every call "
            "and its bytecode when specialised), so each such page is copied. libpython's "
            "data (small ints, interned identifiers, static types) is written the same "
            "way. Python 3.12 makes static objects and interned strings immortal (no "
            "count written), which removes part of these writes, not the code objects'.",
            "",
            *body,
        ]
        update(args.results, {SECTION: "\n".join(text)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
