"""The CNI runtime against Debian's real plugins (bridge, host-local, portmap, loopback).

Each test runs its asyncio scenario -- and so every plugin -- inside the test's own
"host" namespace (the ``host_ns`` fixture); pods get namespaces created from inside it.
Pod subnets exist only there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from cri.api import api_pb2
from cri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cri.network import CNIError, CNIErrorCode, CNINetwork, run_in_netns
from tests.network.helpers import (
    CNI_BIN,
    RECORDER,
    HostNS,
    allocated_ips,
    bridge_plugin,
    http_get,
    read_log,
    write_conflist,
    write_plugin,
)

pytestmark = pytest.mark.root

DEFAULT_SUBNET = ipaddress.ip_network("10.88.0.0/16")


def tcp_map(container_port: int, host_port: int, host_ip: str = "") -> api_pb2.PortMapping:
    return api_pb2.PortMapping(
        protocol=api_pb2.TCP, container_port=container_port, host_port=host_port, host_ip=host_ip
    )


def ipam_dir(network: CNINetwork) -> Path:
    return network.state_dir / "cni" / "ipam"


def nat_rules(host_ns: HostNS) -> str:
    return host_ns.sh("iptables-save", "-t", "nat")


def test_default_network_pod_gets_ip_and_serves_http_to_the_host(
    host_ns: HostNS, network: CNINetwork
) -> None:
    pod = host_ns.new_pod_netns("pod-a")

    async def scenario() -> None:
        result = await network.setup("pod-a", pod, "default", "web", "uid-a")
        assert result.network == "rktlet"
        assert result.interface == "eth0"
        assert ipaddress.ip_address(result.ip) in DEFAULT_SUBNET
        assert result.additional_ips == ()
        assert result.ips == (result.ip,)
        assert host_ns.interfaces(pod) == {"lo", "eth0"}
        eth0 = [i for i in result.result.interfaces if i.name == "eth0"]
        assert eth0 and eth0[0].sandbox == str(pod)
        assert allocated_ips(ipam_dir(network)) == {result.ip}
        # The listener binds the pod IP inside the pod: the address really is there.
        host_ns.serve(pod, result.ip, 8080, b"hello from pod-a")
        # This scenario's thread is in the test's host namespace.
        assert await asyncio.to_thread(http_get, result.ip, 8080) == b"hello from pod-a"

    host_ns.run_async(scenario)


def test_port_mapping_reaches_the_pod_from_host_loopback_and_gateway(
    host_ns: HostNS, network: CNINetwork
) -> None:
    pod = host_ns.new_pod_netns("pod-pm")

    async def scenario() -> None:
        result = await network.setup(
            "pod-pm",
            pod,
            "default",
            "web",
            "uid-pm",
            [tcp_map(8080, 18080), tcp_map(8081, 18081, host_ip="127.0.0.1")],
        )
        host_ns.serve(pod, result.ip, 8080, b"via hostPort")
        host_ns.serve(pod, result.ip, 8081, b"via hostIP")
        gateway = str(result.result.ips[0].gateway)
        assert await asyncio.to_thread(http_get, "127.0.0.1", 18080) == b"via hostPort"
        assert await asyncio.to_thread(http_get, gateway, 18080) == b"via hostPort"
        assert await asyncio.to_thread(http_get, "127.0.0.1", 18081) == b"via hostIP"
        assert "--dport 18080" in nat_rules(host_ns)
        await network.teardown("pod-pm", pod, "default", "web", "uid-pm")
        assert "--dport 18080" not in nat_rules(host_ns)
        assert 'id: \\"pod-pm\\"' not in nat_rules(host_ns)

    host_ns.run_async(scenario)


def test_two_pods_talk_to_each_other(host_ns: HostNS, network: CNINetwork) -> None:
    pod_a = host_ns.new_pod_netns("pod-1")
    pod_b = host_ns.new_pod_netns("pod-2")

    async def scenario() -> None:
        a, b = await asyncio.gather(
            network.setup("pod-1", pod_a, "ns", "one", "uid-1"),
            network.setup("pod-2", pod_b, "ns", "two", "uid-2"),
        )
        assert a.ip != b.ip
        host_ns.serve(pod_a, a.ip, 9000, b"a")
        host_ns.serve(pod_b, b.ip, 9000, b"b")
        from_b = await asyncio.to_thread(run_in_netns, pod_b, lambda: http_get(a.ip, 9000))
        from_a = await asyncio.to_thread(run_in_netns, pod_a, lambda: http_get(b.ip, 9000))
        assert (from_b, from_a) == (b"a", b"b")

    host_ns.run_async(scenario)


def test_teardown_removes_veth_releases_ip_and_a_second_teardown_is_fine(
    host_ns: HostNS, network: CNINetwork
) -> None:
    pod = host_ns.new_pod_netns("pod-del")

    async def scenario() -> None:
        before = host_ns.interfaces()
        result = await network.setup("pod-del", pod, "default", "d", "uid-d", [tcp_map(80, 8000)])
        veths = host_ns.interfaces() - before - {"rktlet0"}
        assert len(veths) == 1 and next(iter(veths)).startswith("veth")
        assert network.cached_pod_ids() == ["pod-del"]
        cache = json.loads((network.cache_dir / "pod-del-eth0.json").read_text())
        assert cache["result"]["ips"][0]["address"].startswith(result.ip + "/")
        assert cache["capabilityArgs"]["portMappings"][0]["hostPort"] == 8000

        await network.teardown("pod-del", pod, "default", "d", "uid-d")
        assert host_ns.interfaces() & veths == set()
        assert host_ns.interfaces(pod) == {"lo"}
        assert allocated_ips(ipam_dir(network)) == set()
        assert network.cached_pod_ids() == []
        await network.teardown("pod-del", pod, "default", "d", "uid-d")
        await network.teardown("pod-del", None, "default", "d", "uid-d")
        again = await network.setup("pod-del2", pod, "default", "d2", "uid-d2")
        assert allocated_ips(ipam_dir(network)) == {again.ip}

    host_ns.run_async(scenario)


def test_teardown_after_the_namespace_is_gone_still_releases_everything(
    host_ns: HostNS, network: CNINetwork
) -> None:
    pod = host_ns.new_pod_netns("pod-gone")

    async def scenario() -> None:
        before = host_ns.interfaces()
        await network.setup("pod-gone", pod, "default", "g", "uid-g", [tcp_map(80, 8001)])
        from cri.network import remove_netns

        remove_netns(pod)
        await network.teardown("pod-gone", pod, "default", "g", "uid-g")
        assert host_ns.interfaces() <= before | {"rktlet0"}
        assert allocated_ips(ipam_dir(network)) == set()
        assert "--dport 8001" not in nat_rules(host_ns)

    host_ns.run_async(scenario)


def test_restarted_runtime_tears_down_from_the_cache_alone(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    pod = host_ns.new_pod_netns("pod-restart")

    async def scenario() -> None:
        before = host_ns.interfaces()
        await network.setup("pod-restart", pod, "prod", "api", "uid-r", [tcp_map(80, 8002)])
        # A new runtime over the same state dir, as after a daemon restart.
        restarted = CNINetwork(
            state_dir=network.state_dir, conf_dir=conf_dir, bin_dirs=[test_bin, CNI_BIN]
        )
        assert restarted.cached_pod_ids() == ["pod-restart"]
        await restarted.teardown("pod-restart", None, "", "", "")
        assert restarted.cached_pod_ids() == []
        assert host_ns.interfaces() <= before | {"rktlet0"}
        assert host_ns.interfaces(pod) == {"lo"}
        assert allocated_ips(ipam_dir(network)) == set()
        assert "--dport 8002" not in nat_rules(host_ns)

    host_ns.run_async(scenario)


def test_failed_undo_is_cached_and_finished_by_teardown(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    healed = tmp_path / "healed"
    write_plugin(
        test_bin,
        "stubborn",
        f"""\
import json, os, sys
sys.stdin.read()
if os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps({{"code": 101, "msg": "ADD refused"}}))
    sys.exit(1)
if os.environ["CNI_COMMAND"] == "DEL" and not os.path.exists({str(healed)!r}):
    print(json.dumps({{"code": 102, "msg": "DEL refused"}}))
    sys.exit(1)
""",
    )
    data_dir = tmp_path / "ipam-stubborn"
    write_conflist(
        conf_dir,
        "10-stubborn.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "stubborn",
            "plugins": [bridge_plugin("stb0", "10.97.0.0/24", data_dir), {"type": "stubborn"}],
        },
    )
    pod = host_ns.new_pod_netns("pod-stb")

    async def scenario() -> None:
        with pytest.raises(CNIError) as info:
            await network.setup("pod-stb", pod, "default", "s", "uid-s")
        assert info.value.msg == "ADD refused"
        notes = getattr(info.value, "__notes__", [])
        assert any("undoing the failed ADD also failed" in n and "DEL refused" in n for n in notes)
        # bridge's own DEL still ran (every plugin gets its DEL): the IP is free.
        assert allocated_ips(data_dir) == set()
        assert network.cached_pod_ids() == ["pod-stb"]
        with pytest.raises(FailedPrecondition, match="could not be undone"):
            await network.check("pod-stb", pod, "default", "s", "uid-s")
        with pytest.raises(AlreadyExists):
            await network.setup("pod-stb", pod, "default", "s", "uid-s")
        with pytest.raises(CNIError, match="DEL refused"):
            await network.teardown("pod-stb", pod, "default", "s", "uid-s")
        assert network.cached_pod_ids() == ["pod-stb"]
        healed.touch()
        await network.teardown("pod-stb", pod, "default", "s", "uid-s")
        assert network.cached_pod_ids() == []

    host_ns.run_async(scenario)


def test_missing_plugin_fails_add_and_leaves_nothing_behind(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "ipam-missing"
    write_conflist(
        conf_dir,
        "10-broken.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "broken",
            "plugins": [bridge_plugin("brk0", "10.91.0.0/24", data_dir), {"type": "no-such-cni"}],
        },
    )
    pod = host_ns.new_pod_netns("pod-miss")
    ready, message = network.status()
    assert not ready and "'no-such-cni' not found" in message

    async def scenario() -> None:
        with pytest.raises(CNIError) as info:
            await network.setup("pod-miss", pod, "default", "m", "uid-m")
        err = info.value
        assert err.code == CNIErrorCode.RUNTIME
        assert (err.command, err.plugin, err.network) == ("ADD", "no-such-cni", "broken")
        assert "'no-such-cni' not found in" in str(err)
        # bridge ran and created the veth and allocation; the rollback removed them.
        assert {i for i in host_ns.interfaces() if i.startswith("veth")} == set()
        assert host_ns.interfaces(pod) == {"lo"}
        assert allocated_ips(data_dir) == set()
        assert network.cached_pod_ids() == []

    host_ns.run_async(scenario)


def test_plugin_error_json_is_raised_and_the_add_rolled_back(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    write_plugin(
        test_bin,
        "refuser",
        """\
import json, os, sys
sys.stdin.read()
if os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps({"cniVersion": "1.0.0", "code": 11, "msg": "not now",
                      "details": "try again in a moment"}))
    sys.exit(1)
""",
    )
    data_dir = tmp_path / "ipam-refuse"
    write_conflist(
        conf_dir,
        "10-refuse.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "refuse",
            "plugins": [bridge_plugin("ref0", "10.92.0.0/24", data_dir), {"type": "refuser"}],
        },
    )
    pod = host_ns.new_pod_netns("pod-ref")

    async def scenario() -> None:
        with pytest.raises(CNIError) as info:
            await network.setup("pod-ref", pod, "default", "r", "uid-r")
        err = info.value
        assert (err.code, err.msg, err.details) == (11, "not now", "try again in a moment")
        assert err.temporary and err.plugin == "refuser"
        assert {i for i in host_ns.interfaces() if i.startswith("veth")} == set()
        assert allocated_ips(data_dir) == set()
        assert network.cached_pod_ids() == []

    host_ns.run_async(scenario)


def test_custom_conflist_is_preferred_to_the_default(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "ipam-custom"
    write_conflist(
        conf_dir,
        "50-custom.conflist",
        {
            "cniVersion": "0.4.0",
            "name": "custom",
            "plugins": [
                bridge_plugin("custom0", "10.99.0.0/24", data_dir),
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        },
    )
    pod = host_ns.new_pod_netns("pod-c")

    async def scenario() -> None:
        result = await network.setup("pod-c", pod, "default", "c", "uid-c", [tcp_map(80, 8080)])
        assert result.network == "custom"
        assert result.result.cni_version == "0.4.0"
        assert ipaddress.ip_address(result.ip) in ipaddress.ip_network("10.99.0.0/24")
        assert "custom0" in host_ns.interfaces()
        assert "rktlet0" not in host_ns.interfaces()
        assert allocated_ips(data_dir) == {result.ip}
        host_ns.serve(pod, result.ip, 80, b"custom")
        assert await asyncio.to_thread(http_get, "127.0.0.1", 8080) == b"custom"
        # The file changes after ADD: DEL still uses what ADD used (from the cache).
        for path in conf_dir.iterdir():
            path.unlink()
        await network.teardown("pod-c", pod, "default", "c", "uid-c")
        assert allocated_ips(data_dir) == set()
        assert "--dport 8080" not in nat_rules(host_ns)

    host_ns.run_async(scenario)


def test_dual_stack_prefers_ipv4_and_lists_ipv6_as_additional(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "ipam-ds"
    write_conflist(
        conf_dir,
        "10-ds.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "ds",
            # IPv6 range first, to show the order of the result does not decide.
            "plugins": [bridge_plugin("ds0", ["fd00:77::/64", "10.77.0.0/24"], data_dir)],
        },
    )
    pod = host_ns.new_pod_netns("pod-ds")

    async def scenario() -> None:
        result = await network.setup("pod-ds", pod, "default", "ds", "uid-ds")
        assert ipaddress.ip_address(result.ip) in ipaddress.ip_network("10.77.0.0/24")
        assert len(result.additional_ips) == 1
        assert ipaddress.ip_address(result.additional_ips[0]) in ipaddress.ip_network(
            "fd00:77::/64"
        )
        assert allocated_ips(data_dir) == {result.ip, result.additional_ips[0]}
        await network.teardown("pod-ds", pod, "default", "ds", "uid-ds")
        assert allocated_ips(data_dir) == set()

    host_ns.run_async(scenario)


def test_chain_gets_prev_result_runtime_config_and_cni_environment(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    write_plugin(test_bin, "recorder", RECORDER)
    log = tmp_path / "calls.jsonl"
    data_dir = tmp_path / "ipam-chain"
    write_conflist(
        conf_dir,
        "10-chain.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "chain",
            "plugins": [
                {"type": "recorder", "tag": "first", "log": str(log)},
                bridge_plugin("chain0", "10.93.0.0/24", data_dir),
                {
                    "type": "recorder",
                    "tag": "last",
                    "log": str(log),
                    "capabilities": {"portMappings": True, "bandwidth": True},
                },
            ],
        },
    )
    pod = host_ns.new_pod_netns("pod-chain")

    async def scenario() -> None:
        result = await network.setup(
            "pod-chain",
            pod,
            "kube-system",
            "dns",
            "uid-chain",
            [tcp_map(53, 5353)],
            capability_args={"bandwidth": {"ingressRate": 1000}, "unasked": 1},
        )
        calls = read_log(log)
        assert [(c["tag"], c["env"]["CNI_COMMAND"]) for c in calls] == [
            ("first", "ADD"),
            ("last", "ADD"),
        ]
        first, last = calls[0], calls[1]
        assert "prevResult" not in first["conf"]
        assert first["conf"]["name"] == "chain" and first["conf"]["cniVersion"] == "1.0.0"
        assert "runtimeConfig" not in first["conf"]
        # The last plugin saw bridge's result, and the runtime kept it (echoed) as final.
        assert last["conf"]["prevResult"] == dict(result.result.raw)
        assert last["conf"]["runtimeConfig"] == {
            "portMappings": [{"hostPort": 5353, "containerPort": 53, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 1000},
        }
        env = last["env"]
        assert env["CNI_CONTAINERID"] == "pod-chain"
        assert env["CNI_NETNS"] == str(pod)
        assert env["CNI_IFNAME"] == "eth0"
        assert env["CNI_PATH"] == f"{test_bin}:{CNI_BIN}"
        assert env["CNI_ARGS"] == (
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=dns;"
            "K8S_POD_INFRA_CONTAINER_ID=pod-chain;K8S_POD_UID=uid-chain"
        )

        await network.teardown("pod-chain", pod, "kube-system", "dns", "uid-chain")
        dels = [c for c in read_log(log) if c["env"]["CNI_COMMAND"] == "DEL"]
        # Reverse order, each with the cached final result.
        assert [c["tag"] for c in dels] == ["last", "first"]
        assert all(c["conf"]["prevResult"] == dict(result.result.raw) for c in dels)
        assert dels[0]["conf"]["runtimeConfig"]["portMappings"][0]["hostPort"] == 5353

        # Without a cache (already torn down) DEL still runs, with no prevResult.
        await network.teardown("pod-chain", pod, "kube-system", "dns", "uid-chain")
        again = [c for c in read_log(log) if c["env"]["CNI_COMMAND"] == "DEL"][2:]
        assert [c["tag"] for c in again] == ["last", "first"]
        assert all("prevResult" not in c["conf"] for c in again)

    host_ns.run_async(scenario)


def test_check_passes_then_detects_a_broken_attachment(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, tmp_path: Path
) -> None:
    # No portmap here: Debian's portmap 1.1.1 fails CHECK on hosts with ip6tables
    # (containernetworking/plugins#819).
    write_conflist(
        conf_dir,
        "10-check.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "chk",
            "plugins": [
                bridge_plugin("chk0", "10.94.0.0/24", tmp_path / "ipam-chk"),
                {"type": "loopback"},
            ],
        },
    )
    pod = host_ns.new_pod_netns("pod-chk")

    async def scenario() -> None:
        with pytest.raises(NotFound):
            await network.check("pod-chk", pod, "default", "k", "uid-k")
        await network.setup("pod-chk", pod, "default", "k", "uid-k")
        await network.check("pod-chk", pod, "default", "k", "uid-k")
        run_in_netns(pod, lambda: subprocess.run(["ip", "link", "del", "eth0"], check=True))
        with pytest.raises(CNIError) as info:
            await network.check("pod-chk", pod, "default", "k", "uid-k")
        assert info.value.command == "CHECK" and info.value.plugin == "bridge"

    host_ns.run_async(scenario)


def test_setup_refuses_bad_input_and_double_attachment(
    host_ns: HostNS, network: CNINetwork, tmp_path: Path
) -> None:
    pod = host_ns.new_pod_netns("pod-twice")

    async def scenario() -> None:
        with pytest.raises(FailedPrecondition, match="does not exist"):
            await network.setup("pod-x", tmp_path / "no-netns", "default", "x", "uid-x")
        with pytest.raises(InvalidArgument, match="pod_sandbox_id"):
            await network.setup("-bad", pod, "default", "x", "uid-x")
        with pytest.raises(InvalidArgument, match=r"metadata\.name"):
            await network.setup("pod-x", pod, "default", "a;b", "uid-x")
        first = await network.setup("pod-twice", pod, "default", "t", "uid-t")
        with pytest.raises(AlreadyExists):
            await network.setup("pod-twice", pod, "default", "t", "uid-t")
        # The refused second ADD did not disturb the first attachment.
        assert allocated_ips(ipam_dir(network)) == {first.ip}
        assert host_ns.interfaces(pod) == {"lo", "eth0"}

    host_ns.run_async(scenario)


def test_cancelled_setup_kills_the_running_plugin_and_is_undone(
    host_ns: HostNS, network: CNINetwork, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(started)
    os.mkfifo(release)  # never opened for writing: the plugin hangs in ADD
    write_plugin(
        test_bin,
        "gate",
        f"""\
import json, os, sys
conf = json.load(sys.stdin)
if os.environ["CNI_COMMAND"] == "ADD":
    with open({str(started)!r}, "w") as f:
        f.write("x")
    with open({str(release)!r}) as f:
        f.read()
    json.dump(conf["prevResult"], sys.stdout)
""",
    )
    data_dir = tmp_path / "ipam-cancel"
    write_conflist(
        conf_dir,
        "10-gate.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "gate",
            "plugins": [bridge_plugin("gate0", "10.95.0.0/24", data_dir), {"type": "gate"}],
        },
    )
    pod = host_ns.new_pod_netns("pod-cancel")

    def read_fifo(path: Path) -> str:
        with open(path) as f:
            return f.read()

    async def scenario() -> None:
        task = asyncio.ensure_future(network.setup("pod-cancel", pod, "default", "c", "uid-c"))
        # The gate plugin runs only after bridge has attached the pod.
        assert await asyncio.to_thread(read_fifo, started) == "x"
        assert allocated_ips(data_dir) != set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The gate plugin is never released: a hung plugin is killed, not waited for.
        await network.wait_idle()
        assert allocated_ips(data_dir) == set()
        assert {i for i in host_ns.interfaces() if i.startswith("veth")} == set()
        assert network.cached_pod_ids() == []

    host_ns.run_async(scenario)


def test_check_status_probes_versions_and_the_status_verb(
    network: CNINetwork, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    # VERSION and STATUS touch no network, so no namespace is needed here.
    assert asyncio.run(network.check_status()) == (True, "")
    too_new = write_conflist(
        conf_dir,
        "10-new.conflist",
        {"cniVersion": "1.1.0", "name": "new", "plugins": [{"type": "bridge"}]},
    )
    ready, message = asyncio.run(network.check_status())
    assert not ready
    assert "'bridge' does not support cniVersion 1.1.0" in message
    too_new.unlink()

    write_plugin(
        test_bin,
        "unwell",
        """\
import json, os, sys
sys.stdin.read()
if os.environ["CNI_COMMAND"] == "VERSION":
    print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["1.0.0", "1.1.0"]}))
elif os.environ["CNI_COMMAND"] == "STATUS":
    print(json.dumps({"cniVersion": "1.1.0", "code": 50, "msg": "no routes yet"}))
    sys.exit(1)
""",
    )
    write_conflist(
        conf_dir,
        "10-status.conflist",
        {"cniVersion": "1.1.0", "name": "st", "plugins": [{"type": "unwell"}]},
    )
    ready, message = asyncio.run(network.check_status())
    assert not ready
    assert "CNI STATUS, network 'st', plugin 'unwell': no routes yet (CNI error 50" in message
    assert network.status() == (True, "")  # the cheap check cannot know


def test_check_status_remembers_version_answers_per_binary(
    network: CNINetwork, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    asked = tmp_path / "asked"
    body = f"""\
import json, os, sys
sys.stdin.read()
if os.environ["CNI_COMMAND"] == "VERSION":
    with open({str(asked)!r}, "a") as f:
        f.write("asked\\n")
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["1.0.0"]}}))
"""
    plugin = write_plugin(test_bin, "counted", body)
    write_conflist(
        conf_dir,
        "10-counted.conflist",
        {"cniVersion": "1.0.0", "name": "counted", "plugins": [{"type": "counted"}]},
    )

    async def scenario() -> None:
        for _ in range(3):
            assert await network.check_status() == (True, "")
        assert asked.read_text() == "asked\n"
        # A replaced binary is asked again.
        plugin.unlink()
        write_plugin(test_bin, "counted", body + "# v2\n")
        assert await network.check_status() == (True, "")
        assert asked.read_text() == "asked\nasked\n"

    asyncio.run(scenario())


def test_plugin_time_out_is_an_error_and_rolls_back(
    host_ns: HostNS, conf_dir: Path, test_bin: Path, tmp_path: Path
) -> None:
    hang = tmp_path / "never-written"
    os.mkfifo(hang)
    write_plugin(
        test_bin,
        "hang",
        f"""\
import os, sys
sys.stdin.read()
if os.environ["CNI_COMMAND"] == "ADD":
    open({str(hang)!r}).read()
""",
    )
    data_dir = tmp_path / "ipam-hang"
    write_conflist(
        conf_dir,
        "10-hang.conflist",
        {
            "cniVersion": "1.0.0",
            "name": "hang",
            "plugins": [bridge_plugin("hang0", "10.96.0.0/24", data_dir), {"type": "hang"}],
        },
    )
    network = CNINetwork(
        state_dir=tmp_path / "state",
        conf_dir=conf_dir,
        bin_dirs=[test_bin, CNI_BIN],
        plugin_timeout=1.0,
    )
    pod = host_ns.new_pod_netns("pod-hang")

    async def scenario() -> None:
        with pytest.raises(CNIError, match="did not finish within 1s and was killed"):
            await network.setup("pod-hang", pod, "default", "h", "uid-h")
        assert allocated_ips(data_dir) == set()
        assert network.cached_pod_ids() == []

    host_ns.run_async(scenario)


def test_plugin_that_is_not_executable_is_not_found(tmp_path: Path, conf_dir: Path) -> None:
    bin_dir = tmp_path / "bin2"
    bin_dir.mkdir()
    plugin = bin_dir / "bridge"
    plugin.write_text("#!/bin/sh\n")
    plugin.chmod(stat.S_IRUSR)
    write_conflist(
        conf_dir,
        "10-x.conflist",
        {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}]},
    )
    network = CNINetwork(state_dir=tmp_path / "s", conf_dir=conf_dir, bin_dirs=[bin_dir])
    assert network.find_plugin("bridge") is None
    assert not network.status()[0]
