"""The benchmarks' own tools: the static log writer and RESULTS.md's sections.

The benchmarks' figures are only as honest as these: the writer must write exactly
the bytes and lines it is asked for, and one benchmark rewriting its section must
leave the others' figures alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import node
from bench._results import replace_section, section, update
from bench._writer import build_writer, writer_args

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required to build bench/writer.c (scripts/install.sh --dev)")
    return build_writer(tmp_path_factory.mktemp("writer"))


@pytest.mark.parametrize(
    ("line", "total"),
    [(100, 3_000_000), (16384, 16384 * 70), (7, 7 * 150_000), (1 << 20, 3 << 20)],
)
def test_the_writer_writes_exactly_the_lines_asked_for(writer: Path, line: int, total: int) -> None:
    out = subprocess.run([writer, *writer_args(line, total)], capture_output=True, check=True)
    assert len(out.stdout) == total
    lines = out.stdout.split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == total // line
    assert set(lines) == {b"0" * (line - 1)}


def test_a_total_off_the_line_size_ends_with_an_unterminated_line(writer: Path) -> None:
    out = subprocess.run([writer, "10", "25"], capture_output=True, check=True).stdout
    assert out == b"000000000\n000000000\n00000"


def test_the_writer_is_static_and_refuses_bad_arguments(writer: Path) -> None:
    described = subprocess.run(["file", "-b", writer], capture_output=True, text=True)
    if described.returncode == 0:
        assert "statically linked" in described.stdout
    for args in (["0", "10"], ["x", "10"], ["10"], ["10", "-5"]):
        done = subprocess.run([writer, *args], capture_output=True, text=True)
        assert done.returncode == 2, args
        assert done.stderr.startswith(("writer:", "usage:"))


def test_rewriting_one_section_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    update(path, {"a": "## A\n\nfirst", "b": "## B\n\nmine"})
    text = update(path, {"a": "## A\n\nsecond"}, placeholders={"b": "lost?", "c": "## C\n\ntbd"})
    assert section(text, "a") == "## A\n\nsecond"
    assert section(text, "b") == "## B\n\nmine", "a placeholder never replaces figures"
    assert section(text, "c") == "## C\n\ntbd"
    assert text.index("## A") < text.index("## B") < text.index("## C")


def test_a_missing_section_is_appended_after_the_others() -> None:
    text = replace_section("<!-- begin a -->\nA\n<!-- end a -->\n", "b", "B")
    assert text == "<!-- begin a -->\nA\n<!-- end a -->\n\n<!-- begin b -->\nB\n<!-- end b -->\n"


def test_a_file_without_sections_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text("# results written whole by an older compare.py\n")
    text = update(path, {"a": "fresh"})
    assert "older compare.py" not in text
    assert section(text, "a") == "fresh"


# -- bench/node.py: the kubelet-like poll loop -----------------------------------------------


def test_the_poll_plan_makes_the_kubelets_calls_at_its_rates() -> None:
    lanes = node.plan(pods=100, containers=3, seconds=20.0)
    rate = node.calls_per_second(lanes, 20.0)
    assert rate["ListPodSandbox"] == rate["ListContainers"] == 1.0  # the relist, every second
    # every pod once per 10 s: GetPodStatus's calls, ContainerStatus once per container
    assert rate["PodSandboxStatus"] == rate["ListPodSandbox (pod filter)"] == 10.0
    assert rate["ListContainers (pod filter)"] == 10.0
    assert rate["ContainerStatus"] == 30.0
    assert rate["ListContainerStats"] == rate["ListPodSandboxStats"] == rate["ImageFsInfo"] == 0.1
    assert rate["ImageStatus"] == 1.0
    assert rate["ListImages"] == 1 / 20  # every 30 s: one call in 20 s
    for steps in lanes.values():
        times = [s.at for s in steps]
        assert times == sorted(times) and all(0 <= t < 20.0 for t in times)
    first_round = [s for s in lanes["status"] if s.at < 10.0]
    assert sorted(s.calls[1].index for s in first_round) == list(range(100))
    containers = [c.index for s in first_round for c in s.calls if c.rpc == "ContainerStatus"]
    assert sorted(containers) == list(range(300))
    gaps = {
        round(b.at - a.at, 6) for a, b in zip(lanes["status"], lanes["status"][1:], strict=False)
    }
    assert gaps == {0.1}, "pods are spread evenly over the period, not polled in a burst"


def test_a_short_quick_plan_still_calls_every_rpc() -> None:
    lanes = node.plan(pods=2, containers=1, seconds=3.0)
    called = {c.rpc for steps in lanes.values() for s in steps for c in s.calls}
    assert called == set(node.RPCS)


def test_percentiles_and_medians_over_runs() -> None:
    values = [float(v) for v in range(1, 101)]
    assert node.percentile(values, 50) == pytest.approx(50.5)
    assert node.percentile(values, 99) == pytest.approx(99.01)
    assert node.percentile([3.0], 99) == 3.0
    with pytest.raises(ValueError):
        node.percentile([], 50)
    runs = [
        {"p50": {"A": p}, "p99": {"A": 10 * p}, "cpu": {"daemon": p}, "idle_cpu": {},
         "n": {"A": 5}, "errors": {"A": 1} if p == 3.0 else {}, "skipped": 1}
        for p in (1.0, 3.0, 2.0)
    ]  # fmt: skip
    combined = node.combine(runs)
    assert combined["p50"] == {"A": 2.0} and combined["p99"] == {"A": 20.0}
    assert combined["cpu"] == {"daemon": 2.0}
    assert combined["n"] == {"A": 15} and combined["errors"] == {"A": 1}
    assert combined["skipped"] == 3 and combined["runs"] == 3


def test_cpu_comes_from_proc_stat_whatever_the_process_is_called() -> None:
    # utime 1500 and stime 500 ticks; the name holds a space and a parenthesis
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", "1500", "500", "7", "8"]
    stat = b"42 (a (b) c) " + " ".join(fields).encode()
    assert node.stat_cpu_ticks(stat) == 2000
    tck = node.CLK_TCK
    # 3 s of CPU in 30 s is 6 CPU s per minute; a process gone meanwhile counts nothing
    assert node.cpu_per_minute({1: 0, 2: 5}, {1: 3 * tck}, 30.0) == pytest.approx(6.0)
    mine = node.cpu_ticks([os.getpid(), 2**22 + 12345])
    assert list(mine) == [os.getpid()] and mine[os.getpid()] >= 0


def test_the_report_says_which_goals_are_met() -> None:
    rk = {
        "p50": {"ContainerStatus": 0.5, "ListImages": 2.0},
        "p99": {},
        "cpu": {"daemon": 1.0},
        "idle_cpu": {},
        "errors": {},
        "skipped": 0,
    }
    ctd = {"p50": {"ContainerStatus": 1.0, "ListImages": 1.0}, "p99": {}, "cpu": {"daemon": 2.0},
           "idle_cpu": {}, "errors": {}, "skipped": 0}  # fmt: skip
    table = "\n".join(node.rpc_table(rk, ctd, {"ContainerStatus": 30.0}))
    assert "| ContainerStatus | 30.00 | 0.50 | - | 1.00 | - | 0.50x | n/a | met |" in table
    assert "| ListImages | 0.00 | 2.00 | - | 1.00 | - | 2.00x | n/a | not met |" in table
    said = "\n".join(node.goals(rk, ctd))
    assert "not met**: ListImages (2.00 vs 1.00 ms)" in said
    assert "daemon CPU at steady state ≤ containerd's: **met** (1.00 vs 2.00 s/min)" in said


def test_a_py_spy_profile_is_summarised_by_function() -> None:
    raw = (
        "<module> (cri/cli.py:1);serve (/x/cri/server.py:70);list_ (/x/cri/containers.py:550) 30\n"
        "<module> (cri/cli.py:1);serve (/x/cri/server.py:71);list_ (/x/cri/containers.py:560) 10\n"
        "<module> (cri/cli.py:1);select (/usr/lib/python3.11/selectors.py:468) 60\n"
    )
    lines = node.summarise_profile(raw, top=3)
    assert lines[0] == "100 samples; own time:"
    assert "   60.0%  select (selectors.py)" in lines
    assert "   40.0%  list_ (cri/containers.py)" in lines  # two lines of one function
    assert "  100.0%  <module> (cri/cli.py)" in lines
    assert node.summarise_profile("") == ["(no samples)"]


def test_the_node_benchmark_runs_in_its_quick_mode(tmp_path: Path) -> None:
    figures = tmp_path / "node.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "node.py"), "--no-containerd", "--pods", "2",
         "--containers", "1", "--seconds", "3", "--runs", "1", "--warmup", "0",
         "--idle-seconds", "0.5", "--json", str(figures)],
        capture_output=True, text=True, timeout=600, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(figures.read_text())
    assert set(data["rktlet"]["p50"]) == set(node.RPCS)
    assert data["rktlet"]["errors"] == {}
    assert data["rktlet"]["cpu"]["daemon"] >= 0
    assert "| ContainerStatus |" in done.stdout


def test_saved_figures_render_beside_an_earlier_run(tmp_path: Path) -> None:
    def figures(title: str, p50: float) -> dict[str, object]:
        result = {
            "p50": {"ContainerStatus": p50},
            "p99": {"ContainerStatus": 2 * p50},
            "cpu": {"daemon": p50},
            "idle_cpu": {},
            "errors": {},
            "skipped": 0,
        }
        return {"title": title, "rate": {"ContainerStatus": 30.0}, "description": "how",
                "header": ["machine: test"], "rktlet": result,
                "containerd": {**result, "p50": {"ContainerStatus": 1.0}},
                "profile": [f"{title} profile"]}  # fmt: skip

    (tmp_path / "after.json").write_text(json.dumps(figures("after", 0.5)))
    (tmp_path / "before.json").write_text(json.dumps(figures("before", 2.0)))
    results = tmp_path / "RESULTS.md"
    results.write_text("<!-- begin other -->\nkept\n<!-- end other -->\n")
    code = node.main(
        ["--render", str(tmp_path / "after.json"), "--before", str(tmp_path / "before.json"),
         "--results", str(results)]
    )  # fmt: skip
    assert code == 0
    text = results.read_text()
    assert section(text, "other") == "kept"
    body = section(text, node.SECTION)
    assert body is not None
    assert body.index("### After: after") < body.index("### Before: before")
    assert "| ContainerStatus | 30.00 | 0.50 | 1.00 | 1.00 | 1.00 | 0.50x |" in body
    assert "| ContainerStatus | 30.00 | 2.00 | 4.00 | 1.00 | 4.00 | 2.00x |" in body
    assert "after profile" in body and "before profile" in body
