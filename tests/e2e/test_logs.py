"""The kubelet's ``/containerLogs`` over the runtime's log files, and its own rotation."""

from __future__ import annotations

import gzip
import re
import time
from datetime import UTC, datetime

from tests.e2e.cluster import Node, wait_until
from tests.e2e.logclients import container_logs, follow
from tests.e2e.pods import StaticPod, shell, static_pod

#: A container that prints ``lines`` then waits for ``/tmp/go`` to print ``after``.
WAIT_GO = "until [ -e /tmp/go ]; do sleep 0.05; done"
TIMESTAMP = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) (.*)$")


def _ten_lines(node: Node) -> dict[str, object]:
    return shell("c", node.image("busybox"), "seq 1 10; exec sleep 3600")


def _wait_log(pod: StaticPod, container: str, needle: bytes, **params: object) -> bytes:
    def check() -> bytes | None:
        out = container_logs(pod, container, **params)
        return out if needle in out else None

    return wait_until(f"{needle!r} in the log", check, 30)


def test_tail_lines(node: Node) -> None:
    with static_pod(node, "tail", [_ten_lines(node)]) as pod:
        _wait_log(pod, "c", b"10\n")
        assert container_logs(pod, "c", tailLines=3) == b"8\n9\n10\n"
        assert container_logs(pod, "c", tailLines=0) == b""
        assert container_logs(pod, "c", tailLines=100) == b"".join(
            b"%d\n" % i for i in range(1, 11)
        )


def test_limit_bytes(node: Node) -> None:
    with static_pod(node, "limit", [_ten_lines(node)]) as pod:
        _wait_log(pod, "c", b"10\n")
        assert container_logs(pod, "c", limitBytes=5) == b"1\n2\n3"
        assert container_logs(pod, "c", limitBytes=1000) == b"".join(
            b"%d\n" % i for i in range(1, 11)
        )


def test_timestamps(node: Node) -> None:
    before = datetime.now(UTC)
    with static_pod(node, "stamps", [_ten_lines(node)]) as pod:
        out = _wait_log(pod, "c", b" 10\n", timestamps=True)
        after = datetime.now(UTC)
        matches = [TIMESTAMP.match(line) for line in out.splitlines()]
        assert all(matches), out
        assert [m.group(2) for m in matches if m] == [b"%d" % i for i in range(1, 11)]
        stamps = [datetime.fromisoformat(m.group(1).decode()[:26] + "+00:00") for m in matches if m]
        assert stamps == sorted(stamps)
        assert before.replace(microsecond=0) <= stamps[0] and stamps[-1] <= after


def test_since_seconds(node: Node) -> None:
    script = f"echo old; {WAIT_GO}; echo new; exec sleep 3600"
    with static_pod(node, "since", [shell("c", node.image("busybox"), script)]) as pod:
        stamped = _wait_log(pod, "c", b" old\n", timestamps=True)
        written = datetime.fromisoformat(stamped.split()[0].decode()[:26] + "+00:00").timestamp()
        # sinceSeconds counts whole seconds back from now: let "old" be 3 s old.
        wait_until("3 s since the first line", lambda: time.time() - written > 3, 10, step=0.1)
        node.crictl("exec", pod.container_id("c"), "touch", "/tmp/go")
        _wait_log(pod, "c", b"new\n")
        assert container_logs(pod, "c", sinceSeconds=2) == b"new\n"
        assert container_logs(pod, "c", sinceSeconds=60) == b"old\nnew\n"


def test_follow_gets_new_lines_and_ends_with_the_container(node: Node) -> None:
    script = (
        "echo first; until [ -e /tmp/go ]; do sleep 0.05; done; echo second;"
        " until [ -e /tmp/end ]; do sleep 0.05; done; echo last"
    )
    with static_pod(
        node, "follow", [shell("c", node.image("busybox"), script)], restartPolicy="Never"
    ) as pod:
        container_id = pod.container_id("c")
        stream = follow(pod, "c")
        try:
            assert stream.read_until(lambda b: b"first\n" in b) == b"first\n"
            node.crictl("exec", container_id, "touch", "/tmp/go")
            assert stream.read_until(lambda b: b"second\n" in b) == b"first\nsecond\n"
            assert not stream.ended
            node.crictl("exec", container_id, "touch", "/tmp/end")
            assert stream.wait_end() == b"first\nsecond\nlast\n"
        finally:
            stream.close()


def test_previous_after_a_restart(node: Node) -> None:
    # The first run fails; the second (a file in the pod's emptyDir tells) stays up.
    script = (
        "if [ -e /data/ran ]; then echo second run; exec sleep 3600; fi;"
        " touch /data/ran; echo first run; exit 1"
    )
    container = shell(
        "c", node.image("busybox"), script, volumeMounts=[{"name": "data", "mountPath": "/data"}]
    )
    with static_pod(
        node, "previous", [container], running=False, volumes=[{"name": "data", "emptyDir": {}}]
    ) as pod:
        pod.wait_container(
            "c", lambda s: s.get("restartCount") == 1 and "running" in s["state"], "running again"
        )
        _wait_log(pod, "c", b"second run\n")
        assert container_logs(pod, "c") == b"second run\n"
        assert container_logs(pod, "c", previous=True) == b"first run\n"


def _cri_content(data: bytes) -> list[bytes]:
    """The lines of a CRI log file (``P`` pieces joined to their ``F``)."""
    lines, partial = [], b""
    for record in data.splitlines():
        _time, _stream, tag, content = record.split(b" ", 3)
        partial += content
        if tag == b"F":
            lines.append(partial)
            partial = b""
    assert partial == b""
    return lines


def test_kubelet_rotation_keeps_every_line_once_in_order(node: Node) -> None:
    # ~100-byte numbered lines at ~30 KB/s; the kubelet rotates past 64 KiB, checking
    # every 3 s, and compresses all but the newest rotated file.
    script = (
        "i=0; pad=$(printf '%090d' 0);"
        " while [ ! -e /tmp/stop ]; do"
        '  j=0; while [ $j -lt 30 ]; do i=$((i+1)); j=$((j+1)); echo "$i $pad"; done;'
        "  sleep 0.1;"
        ' done; echo "end $i"; exec sleep 3600'
    )
    with static_pod(node, "rotate", [shell("c", node.image("busybox"), script)]) as pod:
        log_dir = wait_until(
            "the container's log dir",
            lambda: next(node.kubelet.pod_logs_dir.glob(f"*_{pod.uid}/c"), None),
            30,
        )
        wait_until(
            "a compressed and an uncompressed rotated file",
            lambda: (
                list(log_dir.glob("0.log.*.gz"))
                and [p for p in log_dir.glob("0.log.*") if p.suffix != ".gz"]
            ),
            120,
            step=0.5,
        )
        node.crictl("exec", pod.container_id("c"), "touch", "/tmp/stop")
        current = log_dir / "0.log"
        wait_until("the last line", lambda: b" end " in current.read_bytes(), 30)
        rotated = sorted(p for p in log_dir.iterdir() if p.name.startswith("0.log."))
        assert len(rotated) >= 2
        lines: list[bytes] = []
        for path in rotated:
            data = path.read_bytes()
            lines += _cri_content(gzip.decompress(data) if path.suffix == ".gz" else data)
        lines += _cri_content(current.read_bytes())
        last = lines.pop()
        assert last.startswith(b"end ")
        count = int(last.split()[1])
        assert [int(line.split()[0]) for line in lines] == list(range(1, count + 1))
        # The kubelet reads only the newest file.
        assert container_logs(pod, "c", tailLines=1) == last + b"\n"
