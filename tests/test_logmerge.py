"""The merge window: time order across sources, never held past the window, bounded."""

from __future__ import annotations

import random

from iottymux.loglines import LineRun
from iottymux.logmerge import MergeWindow

MS = 1_000_000


def run(ns: int, text: str = "") -> LineRun:
    return LineRun(b"ts", b"stdout", (text or str(ns)).encode() + b"\n", 1, True, None, ns)


def texts(runs: list[LineRun]) -> list[int]:
    return [int(r.data) for r in runs]


def test_a_late_reader_is_put_back_in_order_within_the_window() -> None:
    window = MergeWindow(100 * MS)
    window.add("a", [run(10), run(30)], now_ns=0)
    assert window.pop_due(50 * MS) == []  # held: b may still bring older lines
    window.add("b", [run(20), run(40)], now_ns=60 * MS)
    assert window.next_deadline() == 100 * MS
    # a's batch is due: everything up to its newest stamp (30) goes, in order.
    assert texts(window.pop_due(100 * MS)) == [10, 20, 30]
    assert texts(window.pop_due(160 * MS)) == [40]
    assert window.buffered == 0 and window.next_deadline() is None


def test_nothing_is_held_past_its_deadline_and_late_lines_still_come() -> None:
    rng = random.Random(1)
    window = MergeWindow(100 * MS)
    arrived: dict[int, int] = {}
    released: dict[int, int] = {}
    now = 0
    n = 0
    for _ in range(300):
        now += rng.randint(0, 30) * MS
        # The follower's loop wakes at every deadline (next_deadline) before this read.
        deadline = window.next_deadline()
        while deadline is not None and deadline <= now:
            for r in window.pop_due(deadline):
                released[int(r.data)] = deadline
            deadline = window.next_deadline()
        key = rng.choice("abc")
        batch = []
        for _ in range(rng.randint(1, 3)):
            # Stamps lag arrival by up to 150 ms: some come later than the window.
            batch.append(run(now - rng.randint(0, 150) * MS, str(n)))
            arrived[n] = now
            n += 1
        batch.sort(key=lambda r: r.ns)
        window.add(key, batch, now)
        for r in window.pop_due(now):
            released[int(r.data)] = now
    deadline = window.next_deadline()
    while deadline is not None:
        for r in window.pop_due(deadline):
            released[int(r.data)] = deadline
        deadline = window.next_deadline()
    assert window.buffered == 0
    assert sorted(released) == list(range(n))  # every line, once
    assert all(released[i] - arrived[i] <= 100 * MS for i in range(n))


def test_one_sources_file_order_survives_a_clock_step_back() -> None:
    window = MergeWindow(0)
    window.add("a", [run(50, "1"), run(40, "2"), run(60, "3")], now_ns=0)
    window.add("b", [run(45, "4")], now_ns=0)
    assert [r.data for r in window.pop_due(0)] == [b"4\n", b"1\n", b"2\n", b"3\n"]


def test_memory_is_bounded() -> None:
    window = MergeWindow(10**12, max_bytes=1000)
    for i in range(100):
        window.add("a" if i % 2 else "b", [run(i, "x" * 98)], now_ns=i)
        window.pop_due(i)
        assert window.buffered <= 1000
