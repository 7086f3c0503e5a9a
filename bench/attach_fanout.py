"""What attachers cost an app's log, and how fast output reaches them.

An app writes --size-mb of 100-byte lines to stdout as fast as it can, through an
iottymux monitor that writes the CRI log and fans the output out to attachers.
Rows, each a fresh monitor per run, medians over --runs:

* 0, 1, 10, 100 attachers: real :class:`~iottymux.attachclient.AttachClient`
  connections made before the app starts, drained by reader processes (one
  ``selectors`` loop each, at most one per CPU by default), so that the readers
  are not what limits 100 attachers;
* frozen: one attacher that never reads a byte.

Columns: log throughput (start of the app to the monitor's answer to ``wait``,
which comes only once the log holds every line) and its ratio to 0 attachers;
the monitor's CPU seconds per GB; delivery latency to attachers, p50 and p99:
every 1000th line carries ``time.time_ns()`` taken when the app built the block
holding it, and a reader subtracts it from the time it received the bytes (so
the latency includes the app's wait for room in its pipe, as a real app's
would); attachers disconnected for overflow, and attachers that received every
byte; the monitor's peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import selectors
import shutil
import statistics
import struct
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iottymux import attachproto as proto
from iottymux.attachclient import AttachClient, endpoint_path
from iottymux.control import ControlClient
from iottymux.monitor_cmd import start_detached
from iottymux.outring import RingLapped

MB = 1_000_000
LINE = 100
MARK_EVERY = 1000  # lines
MARK = b"@T"
MARK_SIZE = len(MARK) + 19  # the tag and 19 digits of nanoseconds
CLK_TCK = os.sysconf("SC_CLK_TCK")
RECV_SIZE = 1 << 20
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
DESCRIPTION = (
    "An app writes 100-byte lines through an iottymux monitor that writes the CRI log and "
    "fans the output out to attachers: real clients (`AttachClient`) drained by two reader "
    "processes on the same 2 CPUs. *ring*: attachers read the shared output ring (what "
    "`AttachClient(ring=True)` and the daemon's streaming server do); *socket*: output "
    "copied into each attacher's socket (clients that do not ask for the ring). *vs 0*: "
    "log throughput against the 0-attacher peer of the same run; CPU s/GB: the monitor's, "
    "per GB the app wrote; readers s/GB: the reader processes'. Latency: every 1000th line "
    "carries the time the app built it. *overflowed*: attachers disconnected for falling "
    "behind (queue size plus the socket buffer's worth); *complete*: attachers that got "
    "every byte; *MB each*: median bytes an attacher got."
)

APP = f"""
import os, sys, time
total, rate, chunk = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
start = time.monotonic()
block = bytearray((b"y" * {LINE - 1} + b"\\n") * 10000)
marks = range(0, len(block), {MARK_EVERY * LINE})
left = total
while left > 0:
    stamp = b"{MARK.decode()}%019d" % time.time_ns()
    for at in marks:
        block[at : at + {MARK_SIZE}] = stamp
    view = memoryview(block)[: min(len(block), left)]
    left -= len(view)
    while view:
        view = view[os.write(1, view[:chunk]):]
    if rate:
        ahead = start + (total - left) / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


# -- readers -----------------------------------------------------------------------


class Drain:
    """One attacher's byte stream, parsed in place: no copies of the payload.

    The frame headers are tracked by hand instead of through
    :class:`~iottymux.attachproto.FrameDecoder` (which copies every payload
    twice) because at 100 attachers the readers would otherwise need more CPU
    than the monitor.  Markers split by a frame or ``recv`` boundary are
    skipped: a sample lost, never a wrong one.
    """

    __slots__ = ("client", "done", "end", "header", "kind", "left", "received", "tail")

    def __init__(self, client: AttachClient) -> None:
        self.client = client
        self.header = bytearray()
        self.kind = 0
        self.left = 0  # payload bytes of the current frame still to come
        self.tail = bytearray()  # payload of a short frame (EXIT, ERROR)
        self.received = 0
        self.done = False
        self.end = ""  # "exit", or the ERROR reason, or "closed"

    def feed(self, data: bytearray, size: int, now: int, latencies: list[int]) -> None:
        """Account for ``data[:size]``, received at ``now``."""
        pos = 0
        while pos < size:
            if self.left == 0 and len(self.header) < proto.HEADER_SIZE:
                need = proto.HEADER_SIZE - len(self.header)
                self.header += data[pos : pos + need]
                pos += need
                if len(self.header) < proto.HEADER_SIZE:
                    return
                self.kind, self.left = proto.HEADER.unpack(self.header)
                if self.left == 0:
                    self._frame_done()
                continue
            piece_end = min(size, pos + self.left)
            if self.kind == proto.STDOUT:
                self.received += piece_end - pos
                at = data.find(MARK, pos, piece_end)
                while at >= 0:
                    if at + MARK_SIZE <= piece_end:
                        latencies.append(now - int(data[at + len(MARK) : at + MARK_SIZE]))
                    at = data.find(MARK, at + MARK_SIZE, piece_end)
            else:
                self.tail += data[pos:piece_end]
            self.left -= piece_end - pos
            pos = piece_end
            if self.left == 0:
                self._frame_done()

    def _frame_done(self) -> None:
        if self.kind == proto.EXIT:
            self.done, self.end = True, "exit"
        elif self.kind == proto.ERROR:
            self.done, self.end = True, self.tail.decode(errors="replace")
        self.header.clear()
        self.tail.clear()


def reader_main(paths: list[str], conn: Connection, ring: bool) -> None:
    """A reader process: attach ``paths``, say ready, drain until every one ends.

    With ``ring`` the attachers read their output from the monitor's output ring:
    the socket brings RING frames, the ring's bytes go through the same in-place
    parser, and each RING is acknowledged as the real clients do.
    """
    drains = [Drain(AttachClient(path, stdin=False, ring=ring, timeout=60)) for path in paths]
    if ring and any(d.client.ring is None for d in drains):
        raise RuntimeError("the monitor offered no output ring")
    socket_frames = {id(d): proto.FrameDecoder(proto.SERVER_KINDS) for d in drains}
    selector = selectors.DefaultSelector()
    for drain in drains:
        drain.client.sock.setblocking(False)
        selector.register(drain.client.sock, selectors.EVENT_READ, drain)
    conn.send("ready")
    latencies: list[int] = []
    active = len(drains)
    buffer = bytearray(RECV_SIZE)
    capacity = max((d.client.ring.capacity for d in drains if d.client.ring), default=0)
    ring_buffer = bytearray(capacity)
    while active:
        for key, _ in selector.select():
            drain = key.data
            try:
                n = drain.client.sock.recv_into(buffer)
            except BlockingIOError:
                continue
            except OSError:
                n = 0
            if n == 0:
                drain.done, drain.end = True, drain.end or "closed"
            elif not ring:
                drain.feed(buffer, n, time.time_ns(), latencies)
            else:
                for kind, payload in socket_frames[id(drain)].receive_data(bytes(buffer[:n])):
                    ring_frame(drain, kind, payload, latencies, ring_buffer)
            if drain.done:
                selector.unregister(drain.client.sock)
                drain.client.close()
                active -= 1
    usage = os.times()
    conn.send(
        {
            "cpu": usage.user + usage.system,
            "latencies": struct.pack(f"{len(latencies)}q", *latencies),
            "attachers": [(d.received, d.end) for d in drains],
        }
    )
    conn.close()


def ring_frame(
    drain: Drain, kind: int, payload: bytes, latencies: list[int], buffer: bytearray
) -> None:
    """One socket frame of a ring attacher (``buffer``: the reader's, for ring bytes)."""
    client = drain.client
    if kind == proto.RING:
        told = proto.decode_offset(payload)
        assert client.ring is not None
        if told <= client.ring_offset:
            return  # already read ahead past it
        end = client.ring.available(client.ring_offset, told)
        try:
            size = client.ring.read_into(buffer, client.ring_offset, end)
        except RingLapped:
            drain.done, drain.end = True, "lapped"
            return
        drain.feed(buffer, size, time.time_ns(), latencies)
        client.ring_offset = end
        with contextlib.suppress(OSError):
            client.sock.send(proto.encode_offset(proto.ACK, end))
    elif kind == proto.EXIT:
        drain.done, drain.end = True, "exit"
    elif kind == proto.ERROR:
        drain.done, drain.end = True, payload.decode(errors="replace")


# -- one run ---------------------------------------------------------------------------


def one_run(
    work: Path,
    total: int,
    attachers: int | str,
    reader_procs: int,
    *,
    rate: float = 0.0,
    queue_size: int | None = None,
    write_size: int = 1 << 20,
    ring: bool = True,
) -> dict[str, Any]:
    run_dir = work / "run"
    pid = start_detached(str(run_dir))
    ctx = multiprocessing.get_context("fork")
    readers: list[tuple[Any, Connection]] = []
    frozen: AttachClient | None = None
    try:
        with ControlClient(str(run_dir / "control.sock"), timeout=3600) as control:
            extra = {} if queue_size is None else {"attach_queue_size": queue_size}
            control.request(
                "add",
                app="app",
                command=[sys.executable, "-c", APP, str(total), str(rate), str(write_size)],
                stdout="stream",
                stderr="null",
                log_path=str(work / "pods" / "ctr" / "0.log"),
                **extra,
            )
            path = endpoint_path(str(run_dir), "app")
            if attachers == "frozen":
                frozen = AttachClient(path, stdin=False, ring=ring)
            elif isinstance(attachers, int) and attachers > 0:
                procs = max(1, min(reader_procs, attachers))
                for i in range(procs):
                    share = [path] * len(range(i, attachers, procs))
                    parent_end, child_end = ctx.Pipe()
                    proc = ctx.Process(target=reader_main, args=(share, child_end, ring))
                    proc.start()
                    child_end.close()
                    readers.append((proc, parent_end))
                for _, parent_end in readers:
                    assert parent_end.recv() == "ready"
            cpu0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            control.request("start", app="app")
            status = control.request("wait", app="app")
            elapsed = time.perf_counter() - t0
            cpu = cpu_seconds(pid) - cpu0
            assert status["exit_code"] == 0, status
            assert status["log"]["bytes"] == total, status["log"]
            assert status["log"]["dropped_lines"] == 0, status["log"]
            latencies: list[int] = []
            ends: list[tuple[int, str]] = []
            reader_cpu = 0.0
            for proc, parent_end in readers:
                result = parent_end.recv()
                proc.join()
                packed = result["latencies"]
                latencies.extend(struct.unpack(f"{len(packed) // 8}q", packed))
                ends.extend(result["attachers"])
                reader_cpu += result["cpu"]
            final = control.request("status", app="app")["apps"][0]
            rss = peak_rss_kib(pid)
            control.request("shutdown")
    finally:
        if frozen is not None:
            frozen.close()
        for proc, _ in readers:
            if proc.is_alive():
                proc.kill()
                proc.join()
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        shutil.rmtree(work / "pods", ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    latencies.sort()
    return {
        "seconds": elapsed,
        "cpu": cpu,
        "reader_cpu": reader_cpu,
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "samples": len(latencies),
        "overflowed": final["attach"]["overflow_disconnects"],
        "complete": sum(1 for received, end in ends if received == total and end == "exit"),
        "delivered": statistics.median(received for received, _ in ends) if ends else None,
        "rss_kib": rss,
    }


def _percentile(sorted_values: list[int], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1e6


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


Case = tuple[str, int | str]  # (transport, attachers or "frozen")


def table(
    samples: dict[Case, list[dict[str, Any]]], cases: list[Case], total: int, markdown: bool
) -> list[str]:
    base = total / MB / _median([r["seconds"] for r in samples[PEER]])
    heads = [
        "attachers", "MB/s", "vs 0", "CPU s/GB", "readers s/GB", "p50 ms", "p99 ms",
        "overflowed", "complete", "MB each", "peak RSS MiB",
    ]  # fmt: skip
    rows = []
    for case in cases:
        runs = samples[case]
        transport, attachers = case
        mbs = total / MB / _median([r["seconds"] for r in runs])
        attached = attachers if isinstance(attachers, int) else 1
        each = ", ".join(f"{total / MB / r['seconds']:.0f}" for r in runs)
        rows.append(
            [
                "0 (peer)" if case == PEER else f"{attachers} ({transport})",
                f"{mbs:.0f} ({each})" if markdown else f"{mbs:.0f}",
                f"{mbs / base:.2f}x",
                f"{_median([r['cpu'] for r in runs]) / (total / 1e9):.2f}",
                f"{_median([r['reader_cpu'] for r in runs]) / (total / 1e9):.2f}",
                _fmt(_median([r["p50"] for r in runs])),
                _fmt(_median([r["p99"] for r in runs])),
                f"{_median([r['overflowed'] for r in runs]):g}/{attached}",
                f"{_median([r['complete'] for r in runs]):g}/{attached}",
                _fmt_mb(_median([r["delivered"] for r in runs])),
                f"{_median([r['rss_kib'] for r in runs]) / 1024:.1f}",
            ]
        )
    if markdown:
        return [
            "| " + " | ".join(heads) + " |",
            "|" + "---|" * len(heads),
            *("| " + " | ".join(row) + " |" for row in rows),
        ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(heads)]
    return [
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in [heads, *rows]
    ]


PEER: Case = ("-", 0)


def write_results(path: Path, title: str, body: list[str]) -> None:
    """This run's table as one subsection of RESULTS.md's attach-fanout section.

    Runs with other options (paced, one line per write) keep their subsections.
    """
    from bench._results import section, update

    name = "attach-fanout"
    old = section(path.read_text(), name) if path.exists() else None
    kept = [
        "### " + part.strip()
        for part in (old or "").split("\n### ")[1:]
        if part.split("\n", 1)[0].strip() != title
    ]
    new = f"### {title}\n\n" + "\n".join(body)
    heading = "## Attach fan-out (bench/attach_fanout.py)"
    update(path, {name: "\n\n".join([heading, DESCRIPTION, *kept, new])})


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=500, help="bytes per run, in MB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--reader-procs",
        type=int,
        default=os.cpu_count() or 1,
        help="processes that drain the attachers (default: one per CPU)",
    )
    parser.add_argument(
        "--rate-mb",
        type=float,
        default=0.0,
        help="pace the app at this many MB/s (default 0: as fast as it can)",
    )
    parser.add_argument(
        "--write-size",
        type=int,
        default=1 << 20,
        help="bytes per write() of the app (default 1 MiB; 100: one line per write)",
    )
    parser.add_argument(
        "--queue-mb",
        type=float,
        default=None,
        help="the app's attach_queue_size in MB (default: the monitor's default)",
    )
    parser.add_argument(
        "--transports",
        default="ring,socket",
        help="how attachers get output: ring (the shared output ring), socket, or both",
    )
    parser.add_argument(
        "--attachers", default="1,10,100,frozen", help="cases besides the 0-attacher peer"
    )
    parser.add_argument(
        "--results",
        type=Path,
        nargs="?",
        const=RESULTS,
        help=f"also write the table into this RESULTS.md's attach-fanout section ({RESULTS})",
    )
    parser.add_argument("--dir", default=None, help="where log files go (default: a temp dir)")
    args = parser.parse_args()
    total = args.size_mb * MB // LINE * LINE
    work = Path(tempfile.mkdtemp(prefix="rktlet-fanout-", dir=args.dir))
    transports = [t for t in args.transports.split(",") if t]
    counts: list[int | str] = [int(a) if a.isdigit() else a for a in args.attachers.split(",")]
    cases: list[Case] = [PEER] + [(t, n) for t in transports for n in counts]
    load_before = os.getloadavg()
    try:
        pace = f"paced at {args.rate_mb:g} MB/s" if args.rate_mb else "at full speed"
        queue = "default" if args.queue_mb is None else f"{args.queue_mb:g} MB"
        title = (
            f"{args.size_mb} MB of {LINE}-byte lines per run {pace}, {args.write_size} bytes "
            f"per write, attach queue {queue}, median of {args.runs} runs, {os.cpu_count()} "
            f"CPUs, {args.reader_procs} reader processes, python {sys.version.split()[0]}"
        )
        print(f"# attach fan-out, {title}")
        samples: dict[Case, list[dict[str, Any]]] = {case: [] for case in cases}
        # Interleaved, so that drift in the machine hits every case alike.
        for _ in range(args.runs):
            for case in cases:
                transport, attachers = case
                samples[case].append(
                    one_run(
                        work,
                        total,
                        attachers,
                        args.reader_procs,
                        rate=args.rate_mb * MB,
                        queue_size=None if args.queue_mb is None else int(args.queue_mb * MB),
                        write_size=args.write_size,
                        ring=transport == "ring",
                    )
                )
        load_after = os.getloadavg()
        print("\n".join(table(samples, cases, total, markdown=False)))
        print(f"load average (1 min) before/after: {load_before[0]:.2f} / {load_after[0]:.2f}")
        if args.results is not None:
            body = [
                f"Load average (1 min) before/after: {load_before[0]:.2f} / "
                f"{load_after[0]:.2f}. Command: `bench/attach_fanout.py "
                + " ".join(sys.argv[1:])
                + "`.",
                "",
                *table(samples, cases, total, markdown=True),
            ]
            write_results(args.results, title, body)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _fmt_mb(size: float | None) -> str:
    return "-" if size is None else f"{size / MB:.1f}"


def _fmt(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f}"


if __name__ == "__main__":
    sys.exit(main())
