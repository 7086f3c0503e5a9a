"""resolv.conf, hosts and hostname for a pod, and the errors that name CRI fields."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from cri.api import api_pb2
from cri.errors import InvalidArgument
from cri.network import render_hosts, render_resolv_conf, write_pod_files

HOST_RESOLV = b"# host\nnameserver 192.0.2.53\nsearch example.internal\n"
HOST_HOSTS = b"127.0.0.1 localhost\n192.0.2.10 node-1\n"


@pytest.fixture
def host_files(tmp_path: Path) -> tuple[Path, Path]:
    resolv = tmp_path / "host-resolv.conf"
    resolv.write_bytes(HOST_RESOLV)
    hosts = tmp_path / "host-hosts"
    hosts.write_bytes(HOST_HOSTS)
    return resolv, hosts


def test_resolv_conf_from_dns_config() -> None:
    dns = api_pb2.DNSConfig(
        servers=["10.96.0.10", "fd00::10"],
        searches=["default.svc.cluster.local", "svc.cluster.local", "cluster.local."],
        options=["ndots:5", "edns0"],
    )
    assert render_resolv_conf(dns) == (
        b"search default.svc.cluster.local svc.cluster.local cluster.local.\n"
        b"nameserver 10.96.0.10\n"
        b"nameserver fd00::10\n"
        b"options ndots:5 edns0\n"
    )


def test_partial_dns_config_writes_only_what_is_given() -> None:
    assert render_resolv_conf(api_pb2.DNSConfig(options=["ndots:1"])) == b"options ndots:1\n"


@pytest.mark.parametrize("dns", [None, api_pb2.DNSConfig()])
def test_empty_dns_config_copies_the_hosts_resolv_conf(
    dns: api_pb2.DNSConfig | None, host_files: tuple[Path, Path]
) -> None:
    assert render_resolv_conf(dns, host_resolv_conf=host_files[0]) == HOST_RESOLV


def test_missing_host_resolv_conf_gives_an_empty_file(tmp_path: Path) -> None:
    assert render_resolv_conf(None, host_resolv_conf=tmp_path / "absent") == b""


@pytest.mark.parametrize(
    ("dns", "message"),
    [
        (api_pb2.DNSConfig(servers=["10.0.0.1", "dns.example"]), "dns_config.servers[1]: "),
        (api_pb2.DNSConfig(servers=["10.0.0.1 # x"]), "dns_config.servers[0]: "),
        (api_pb2.DNSConfig(searches=["ok.local", ""]), "dns_config.searches[1]: "),
        (api_pb2.DNSConfig(searches=["bad domain"]), "dns_config.searches[0]: "),
        (api_pb2.DNSConfig(searches=["a\nnameserver 6.6.6.6"]), "dns_config.searches[0]: "),
        (api_pb2.DNSConfig(searches=["-lead.example"]), "dns_config.searches[0]: "),
        (api_pb2.DNSConfig(searches=["a" * 64 + ".example"]), "dns_config.searches[0]: "),
        (api_pb2.DNSConfig(searches=[f"d{i}.example" for i in range(33)]), "dns_config.searches:"),
        (
            api_pb2.DNSConfig(searches=[("a" * 60 + ".") * 4 + f"x{i}" for i in range(10)]),
            "dns_config.searches: 2",
        ),
        (api_pb2.DNSConfig(options=["ndots:5", "two words"]), "dns_config.options[1]: "),
        (api_pb2.DNSConfig(options=[""]), "dns_config.options[0]: "),
    ],
)
def test_bad_dns_config_names_the_field(dns: api_pb2.DNSConfig, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        render_resolv_conf(dns)
    assert str(info.value).startswith(message)


def test_hosts_has_localhost_and_the_pod_addresses() -> None:
    text = render_hosts("web-0", ["10.88.0.5", "fd00::5"]).decode()
    lines = text.splitlines()
    assert "127.0.0.1\tlocalhost" in lines
    assert "::1\tlocalhost ip6-localhost ip6-loopback" in lines
    assert lines[-2:] == ["10.88.0.5\tweb-0", "fd00::5\tweb-0"]


def test_hosts_for_an_fqdn_hostname_also_names_the_short_one() -> None:
    text = render_hosts("web-0.web.default.svc.cluster.local", ["10.88.0.5"]).decode()
    assert text.splitlines()[-1] == "10.88.0.5\tweb-0.web.default.svc.cluster.local web-0"


@pytest.mark.parametrize(
    "hostname", ["-bad", "bad-", "has space", "under_score", "a" * 65, "a..b", "x/y"]
)
def test_bad_hostnames_are_refused(hostname: str) -> None:
    with pytest.raises(InvalidArgument, match=r"^hostname: "):
        render_hosts(hostname, [])


def test_write_pod_files(tmp_path: Path, host_files: tuple[Path, Path]) -> None:
    pod_dir = tmp_path / "pods" / "abc"
    files = write_pod_files(
        pod_dir,
        hostname="web-0",
        pod_ips=["10.88.0.7"],
        dns_config=api_pb2.DNSConfig(servers=["10.96.0.10"], searches=["cluster.local"]),
        host_resolv_conf=host_files[0],
        host_hosts=host_files[1],
    )
    assert files.resolv_conf == pod_dir / "resolv.conf"
    assert files.resolv_conf.read_text() == "search cluster.local\nnameserver 10.96.0.10\n"
    assert files.hosts.read_text().endswith("10.88.0.7\tweb-0\n")
    assert files.hostname.read_text() == "web-0\n"
    for path in (files.resolv_conf, files.hosts, files.hostname):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in pod_dir.iterdir()) == ["hostname", "hosts", "resolv.conf"]


def test_host_network_pod_uses_the_hosts_files(
    tmp_path: Path, host_files: tuple[Path, Path]
) -> None:
    files = write_pod_files(
        tmp_path / "pod",
        hostname="node-1",
        host_network=True,
        host_resolv_conf=host_files[0],
        host_hosts=host_files[1],
    )
    assert files.resolv_conf.read_bytes() == HOST_RESOLV
    assert files.hosts.read_bytes() == HOST_HOSTS


def test_host_network_pod_with_cluster_dns_gets_it(
    tmp_path: Path, host_files: tuple[Path, Path]
) -> None:
    # dnsPolicy ClusterFirstWithHostNet: the kubelet sends the cluster's DNS.
    files = write_pod_files(
        tmp_path / "pod",
        hostname="node-1",
        host_network=True,
        dns_config=api_pb2.DNSConfig(servers=["10.96.0.10"]),
        host_resolv_conf=host_files[0],
        host_hosts=host_files[1],
    )
    assert files.resolv_conf.read_bytes() == b"nameserver 10.96.0.10\n"


def test_empty_hostname_falls_back_to_the_nodes(
    tmp_path: Path, host_files: tuple[Path, Path]
) -> None:
    files = write_pod_files(
        tmp_path / "pod", hostname="", pod_ips=["10.88.0.9"], host_resolv_conf=host_files[0]
    )
    assert files.hostname.read_text() == socket.gethostname() + "\n"


def test_errors_leave_no_files(tmp_path: Path) -> None:
    pod_dir = tmp_path / "pod"
    with pytest.raises(InvalidArgument, match=r"^dns_config\.servers\[0\]"):
        write_pod_files(pod_dir, hostname="ok", dns_config=api_pb2.DNSConfig(servers=["nope"]))
    with pytest.raises(InvalidArgument, match=r"^hostname"):
        write_pod_files(pod_dir, hostname="not ok")
    assert not pod_dir.exists()


def test_rewriting_replaces_the_files(tmp_path: Path, host_files: tuple[Path, Path]) -> None:
    pod_dir = tmp_path / "pod"
    write_pod_files(pod_dir, hostname="a", pod_ips=["10.0.0.1"], host_resolv_conf=host_files[0])
    files = write_pod_files(
        pod_dir, hostname="b", pod_ips=["10.0.0.2"], host_resolv_conf=host_files[0]
    )
    assert files.hostname.read_text() == "b\n"
    assert "10.0.0.1" not in files.hosts.read_text()
    assert sorted(p.name for p in pod_dir.iterdir()) == ["hostname", "hosts", "resolv.conf"]
