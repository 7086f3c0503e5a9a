"""Pinned network namespaces: create, enter, remove -- and nothing left mounted."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cri.network import (
    NetnsError,
    create_netns,
    current_netns_id,
    is_netns_pinned,
    netns_id,
    netns_path,
    remove_netns,
    run_in_netns,
    run_in_netns_async,
)
from cri.network.netns import InterfaceCounters, interface_counters, parse_net_dev
from tests.network.helpers import mounts_under

pytestmark = pytest.mark.root


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    try:
        yield directory
    finally:
        for pin in (directory / "netns").glob("*") if (directory / "netns").exists() else ():
            remove_netns(pin)
        assert not mounts_under(directory)


def test_create_pins_a_new_namespace_with_lo_up(run_dir: Path) -> None:
    main_ns = current_netns_id()
    path = create_netns(run_dir, "pod-a")
    assert path == netns_path(run_dir, "pod-a") == run_dir / "netns" / "pod-a"
    assert is_netns_pinned(path)
    assert mounts_under(run_dir) == [str(path)]
    assert netns_id(path) != main_ns
    # The creating thread's namespace change did not leak into this one.
    assert current_netns_id() == main_ns

    def inside() -> tuple[tuple[int, int], list[tuple[int, str]], bytes]:
        # lo is up: a loopback connection works.
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                conn, _ = server.accept()
                with conn:
                    client.sendall(b"ping")
                    data = conn.recv(4)
        return current_netns_id(), socket.if_nameindex(), data

    ns, interfaces, data = run_in_netns(path, inside)
    assert ns == netns_id(path)
    assert interfaces == [(1, "lo")]
    assert data == b"ping"


def test_remove_unmounts_and_deletes_and_is_idempotent(run_dir: Path) -> None:
    path = create_netns(run_dir, "pod-b")
    remove_netns(path)
    assert not path.exists()
    assert not is_netns_pinned(path)
    assert mounts_under(run_dir) == []
    remove_netns(path)  # Again: nothing to do, no error.
    remove_netns(run_dir / "netns" / "never-existed")


def test_remove_of_an_unmounted_pin_file_just_deletes_it(run_dir: Path) -> None:
    (run_dir / "netns").mkdir(parents=True)
    stale = run_dir / "netns" / "stale"
    stale.touch()
    remove_netns(stale)
    assert not stale.exists()


def test_create_refuses_an_existing_name_and_leaves_the_first_intact(run_dir: Path) -> None:
    path = create_netns(run_dir, "dup")
    first = netns_id(path)
    with pytest.raises(FileExistsError):
        create_netns(run_dir, "dup")
    assert is_netns_pinned(path)
    assert netns_id(path) == first
    assert mounts_under(run_dir) == [str(path)]


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "x" * 256])
def test_invalid_names_are_refused(run_dir: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid network namespace name"):
        create_netns(run_dir, name)
    assert not (run_dir / "netns").exists() or not any((run_dir / "netns").iterdir())


def test_two_namespaces_are_distinct(run_dir: Path) -> None:
    a = create_netns(run_dir, "a")
    b = create_netns(run_dir, "b")
    assert netns_id(a) != netns_id(b)
    assert run_in_netns(a, current_netns_id) != run_in_netns(b, current_netns_id)


def test_run_in_netns_propagates_exceptions_and_keeps_caller_namespace(run_dir: Path) -> None:
    path = create_netns(run_dir, "exc")
    before = current_netns_id()

    def boom() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        run_in_netns(path, boom)
    assert current_netns_id() == before
    assert threading.current_thread() is threading.main_thread()


def test_run_in_netns_reports_bad_paths_clearly(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(NetnsError, match="opening netns") as missing:
        run_in_netns(tmp_path / "nope", current_netns_id)
    assert missing.value.errno == errno.ENOENT
    plain = tmp_path / "plain-file"
    plain.touch()
    with pytest.raises(NetnsError, match="not a network namespace") as wrong:
        run_in_netns(plain, current_netns_id)
    assert wrong.value.errno == errno.EINVAL


def test_sockets_keep_the_namespace_they_were_made_in(run_dir: Path) -> None:
    path = create_netns(run_dir, "sock")
    server = run_in_netns(path, lambda: socket.create_server(("127.0.0.1", 0)))
    with server:
        port = server.getsockname()[1]
        # From the pod's namespace the listener is reachable...
        run_in_netns(path, lambda: socket.create_connection(("127.0.0.1", port), 5).close())
        conn, _ = server.accept()
        conn.close()
        # ...and the connecting socket, created inside, can be used out here too.
        client = run_in_netns(path, lambda: socket.create_connection(("127.0.0.1", port), 5))
        with client:
            conn, _ = server.accept()
            with conn:
                client.sendall(b"x")
                assert conn.recv(1) == b"x"


def test_run_in_netns_async_does_not_block_the_loop(run_dir: Path) -> None:
    path = create_netns(run_dir, "async")
    release = threading.Event()

    def waits() -> tuple[int, int]:
        release.wait(10)
        return current_netns_id()

    async def scenario() -> tuple[int, int]:
        task = asyncio.ensure_future(run_in_netns_async(path, waits))
        # The loop keeps running while the thread waits; then we let it go.
        await asyncio.sleep(0)
        assert not task.done()
        release.set()
        return await task

    assert asyncio.run(scenario()) == netns_id(path)


def test_run_in_netns_async_raises_the_callables_error(run_dir: Path) -> None:
    path = create_netns(run_dir, "async-exc")

    def boom() -> None:
        raise RuntimeError("bad")

    with pytest.raises(RuntimeError, match="bad"):
        asyncio.run(run_in_netns_async(path, boom))


def test_create_from_inside_another_namespace(run_dir: Path) -> None:
    outer = create_netns(run_dir, "outer")
    inner = run_in_netns(outer, lambda: create_netns(run_dir, "inner"))
    assert len({netns_id(outer), netns_id(inner), current_netns_id()}) == 3
    assert run_in_netns(inner, socket.if_nameindex) == [(1, "lo")]


NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets "
    "errs drop fifo colls carrier compressed\n"
    "    lo:     100       2    0    0    0     0          0         0      100       2"
    "    0    0    0     0       0          0\n"
    "  eth0:    1586      19    1    2    0     0          0         0      936      12"
    "    3    4    0     0       0          0\n"
    "broken: 1 2 3\n"
)


def test_parse_net_dev() -> None:
    counters = parse_net_dev(NET_DEV)
    assert counters == {
        "lo": InterfaceCounters(100, 2, 0, 0, 100, 2, 0, 0),
        "eth0": InterfaceCounters(1586, 19, 1, 2, 936, 12, 3, 4),
    }


def test_interface_counters_are_the_namespaces_own(run_dir: Path) -> None:
    path = create_netns(run_dir, "counted")

    def talk() -> None:
        with socket.create_server(("127.0.0.1", 0)) as server:
            client = socket.create_connection(server.getsockname(), timeout=5)
            conn, _ = server.accept()
            with client, conn:
                client.sendall(b"x" * 1000)
                assert conn.recv(1000)

    assert set(interface_counters(path)) == {"lo"}  # not this process's interfaces
    before = interface_counters(path)["lo"]
    run_in_netns(path, talk)
    after = interface_counters(path)["lo"]
    assert after.rx_bytes >= before.rx_bytes + 1000
    assert after.tx_packets > before.tx_packets
