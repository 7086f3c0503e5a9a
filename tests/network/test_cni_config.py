"""CNI configuration loading, result and error parsing, port mappings: no plugins run."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from cri.api import api_pb2
from cri.errors import InvalidArgument
from cri.network import CNIError, CNIErrorCode, CNINetwork, port_mappings_from_cri
from cri.network.cniconfig import (
    BUILTIN_SOURCE,
    ConfigInvalid,
    default_config_list,
    derive_plugin_config,
    load_config_dir,
    parse_config_list,
)
from cri.network.cnitypes import parse_plugin_error, parse_result
from tests.network.helpers import CNI_BIN, write_conflist

GOOD: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "good",
    "plugins": [
        {"type": "bridge", "bridge": "b0", "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "file is empty"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "top level must be a JSON object"),
        ('{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}', "name is missing"),
        ('{"cniVersion": "1.0.0", "name": "-x", "plugins": [{"type": "a"}]}', "must start"),
        ('{"name": "n", "plugins": [{"type": "bridge"}]}', "cniVersion is missing"),
        ('{"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "a"}]}', "not supported"),
        ('{"cniVersion": "1.0.0", "name": "n", "plugins": []}', "non-empty list"),
        ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{}]}', "plugins[0].type"),
        ('{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../x"}]}', "not a plugin"),
        (
            '{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a", "ipam": 3}]}',
            "plugins[0].ipam must be an object",
        ),
        (
            '{"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "a"}], "disableCheck": 1}',
            "disableCheck must be a boolean",
        ),
        ('{"cniVersion": "1.0.0", "name": "n", "type": "bridge"}', "needs a plugins list"),
    ],
)
def test_invalid_configs_are_rejected_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        parse_config_list(text, "/etc/cni/net.d/x.conflist")
    assert reason in str(info.value)


def test_single_plugin_conf_is_wrapped_into_a_list() -> None:
    conf = {"cniVersion": "0.4.0", "name": "single", "type": "bridge", "bridge": "b1"}
    config = parse_config_list(json.dumps(conf), "/x/10-single.conf")
    assert config.name == "single"
    assert config.cni_version == "0.4.0"
    assert [p["type"] for p in config.plugins] == ["bridge"]
    assert config.raw["plugins"] == [conf]
    assert config.passes_prev_result_on_del and config.supports_check


def test_versions_decide_prev_result_on_del_and_check() -> None:
    old = parse_config_list({"cniVersion": "0.3.1", "name": "old", "plugins": [{"type": "a"}]}, "x")
    assert not old.passes_prev_result_on_del and not old.supports_check
    no_check = parse_config_list({**GOOD, "disableCheck": "true"}, "x")
    assert not no_check.supports_check


def test_cni_versions_list_picks_the_newest_supported() -> None:
    config = parse_config_list(
        {**GOOD, "cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.1.0", "9.0.0"]}, "x"
    )
    assert config.cni_version == "1.1.0"
    assert config.supports_status


def test_binaries_include_ipam_plugins_once() -> None:
    config = parse_config_list(GOOD, "x")
    assert config.binaries() == ("bridge", "host-local", "portmap")


def test_conf_dir_first_valid_file_in_lexical_order_wins(tmp_path: Path) -> None:
    (tmp_path / "00-broken.conflist").write_text("{oops")
    (tmp_path / "05-empty.conf").write_text("")
    (tmp_path / "07-noplugins.conflist").write_text('{"cniVersion": "1.0.0", "name": "n"}')
    (tmp_path / "08-ignored.txt").write_text(json.dumps(GOOD))
    (tmp_path / "09-dir.conflist").mkdir()
    write_conflist(tmp_path, "20-good.conflist", GOOD)
    write_conflist(tmp_path, "30-later.conflist", {**GOOD, "name": "later"})
    loaded = load_config_dir(tmp_path)
    assert loaded.config is not None
    assert loaded.config.name == "good"
    assert loaded.config.source == str(tmp_path / "20-good.conflist")
    reasons = {Path(p).name: r for p, r in loaded.skipped}
    assert set(reasons) == {"00-broken.conflist", "05-empty.conf", "07-noplugins.conflist"}
    assert "not valid JSON" in reasons["00-broken.conflist"]
    assert "empty" in reasons["05-empty.conf"]
    assert "plugins list" in reasons["07-noplugins.conflist"]


def test_missing_conf_dir_is_like_an_empty_one(tmp_path: Path) -> None:
    assert load_config_dir(tmp_path / "absent").config is None


def test_network_logs_each_skipped_file_once_and_falls_back_to_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-bad.conflist").write_text('{"cniVersion": "1.0.0", "name": "x", "plugins": 3}')
    net = CNINetwork(state_dir=tmp_path / "state", conf_dir=conf, bin_dirs=[CNI_BIN])
    with caplog.at_level(logging.WARNING, logger="cri.network.cni"):
        first = net.load_config()
        net.load_config()
        assert net.status() == (True, "")
    assert first.config is not None and first.config.source == BUILTIN_SOURCE
    warnings = [r.getMessage() for r in caplog.records if "10-bad.conflist" in r.getMessage()]
    assert len(warnings) == 1
    assert "plugins must be a non-empty list" in warnings[0]


def test_without_default_an_unusable_conf_dir_is_not_ready(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-bad.conflist").write_text("nope")
    net = CNINetwork(state_dir=tmp_path / "s", conf_dir=conf, bin_dirs=[CNI_BIN], use_default=False)
    ready, message = net.status()
    assert not ready
    assert "no valid CNI network configuration" in message
    assert "10-bad.conflist: not valid JSON" in message


def test_missing_plugin_binary_makes_status_not_ready(tmp_path: Path) -> None:
    conf = tmp_path / "net.d"
    conf.mkdir()
    write_conflist(
        conf,
        "10-x.conflist",
        {**GOOD, "plugins": [*GOOD["plugins"], {"type": "no-such-plugin"}]},
    )
    net = CNINetwork(state_dir=tmp_path / "s", conf_dir=conf, bin_dirs=[CNI_BIN])
    ready, message = net.status()
    assert not ready
    assert "'no-such-plugin' not found in /usr/lib/cni" in message
    assert "10-x.conflist" in message


def test_default_network_needs_its_plugins(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bridge", "host-local", "loopback"):
        (bin_dir / name).symlink_to(f"{CNI_BIN}/{name}")
    net = CNINetwork(state_dir=tmp_path / "s", conf_dir=None, bin_dirs=[bin_dir])
    ready, message = net.status()
    assert not ready
    assert "'portmap' not found" in message and "<built-in>" in message


def test_default_config_list_shape(tmp_path: Path) -> None:
    config = default_config_list(ipam_data_dir=tmp_path / "ipam", subnet="10.123.0.0/24")
    assert config.source == BUILTIN_SOURCE
    assert config.cni_version == "1.0.0"
    assert [p["type"] for p in config.plugins] == ["bridge", "portmap", "loopback"]
    bridge = config.plugins[0]
    assert bridge["bridge"] == "rktlet0"
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.123.0.0/24"}]]
    assert bridge["ipam"]["dataDir"] == str(tmp_path / "ipam")
    assert config.plugins[1]["capabilities"] == {"portMappings": True}
    v6 = default_config_list(ipam_data_dir=tmp_path, subnet="fd00:1::/64")
    assert v6.plugins[0]["ipam"]["routes"] == [{"dst": "::/0"}]


@pytest.mark.parametrize(
    "kwargs", [{"subnet": "10.0.0.1/16"}, {"subnet": "nonsense"}, {"bridge": "x" * 16}]
)
def test_default_config_list_rejects_bad_settings(tmp_path: Path, kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        default_config_list(ipam_data_dir=tmp_path, **kwargs)
    settings: dict[str, Any] = {f"default_{k}": v for k, v in kwargs.items()}
    with pytest.raises(ValueError):
        CNINetwork(state_dir=tmp_path, **settings)


def test_derived_config_gets_name_version_prev_result_and_declared_capabilities() -> None:
    config = parse_config_list(
        {
            "cniVersion": "1.0.0",
            "name": "net",
            "plugins": [
                {"type": "a", "cniVersion": "0.1.0", "custom": {"keep": [1]}},
                {
                    "type": "b",
                    "capabilities": {"portMappings": True, "bandwidth": False},
                    "runtimeConfig": {"other": 1},
                },
            ],
        },
        "x",
    )
    caps = {"portMappings": [{"hostPort": 1, "containerPort": 2}], "bandwidth": {"x": 1}}
    first = derive_plugin_config(config, config.plugins[0], prev_result=None, capability_args=caps)
    assert first == {"type": "a", "cniVersion": "1.0.0", "name": "net", "custom": {"keep": [1]}}
    prev = {"cniVersion": "1.0.0", "ips": []}
    second = derive_plugin_config(config, config.plugins[1], prev_result=prev, capability_args=caps)
    assert second["prevResult"] == prev
    # Only the declared (true) capability is passed, merged with static runtimeConfig.
    assert second["runtimeConfig"] == {"other": 1, "portMappings": caps["portMappings"]}
    assert "runtimeConfig" not in config.plugins[1] or config.plugins[1]["runtimeConfig"] == {
        "other": 1
    }


# -- results and errors ----------------------------------------------------------------


def test_parse_result_v1() -> None:
    result = parse_result(
        {
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:bb:cc:dd:ee:ff"},
                {"name": "eth0", "mac": "11:22:33:44:55:66", "sandbox": "/run/netns/x"},
            ],
            "ips": [
                {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
                {"address": "fd00::5/64", "interface": 1},
            ],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
            "dns": {"nameservers": ["10.1.0.10"], "search": ["svc.local"]},
        }
    )
    assert result.cni_version == "1.0.0"
    assert result.interfaces[1].sandbox == "/run/netns/x"
    assert result.ips[0].address == ipaddress.ip_interface("10.1.0.5/24")
    assert result.ips[0].gateway == ipaddress.ip_address("10.1.0.1")
    assert result.ips[1].gateway is None
    assert result.routes[0].dst == ipaddress.ip_network("0.0.0.0/0")
    assert result.dns.nameservers == ("10.1.0.10",)
    assert [str(ip.address.ip) for ip in result.sandbox_ips()] == ["10.1.0.5", "fd00::5"]


def test_parse_result_v040_with_ip_versions() -> None:
    result = parse_result(
        {
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"version": "4", "address": "10.2.0.2/16", "interface": 0}],
        }
    )
    assert str(result.ips[0].address) == "10.2.0.2/16"


def test_parse_result_ipam_style_without_interfaces() -> None:
    result = parse_result({"ips": [{"address": "10.3.0.2/24"}]}, default_version="1.0.0")
    assert result.cni_version == "1.0.0"
    assert [str(ip.address) for ip in result.sandbox_ips()] == ["10.3.0.2/24"]


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"ips": [{"address": "banana"}]},
        {"ips": [{}]},
        {"ips": {"address": "10.0.0.1/8"}},
        {"ips": [{"address": "10.0.0.1/8", "interface": "0"}]},
        {"interfaces": [{"mac": "x"}]},
        {"routes": [{"dst": "10.0.0.0/8", "gw": 5}]},
        {"dns": {"nameservers": [1]}},
    ],
)
def test_malformed_results_raise_value_error(data: object) -> None:
    with pytest.raises(ValueError):
        parse_result(data)


def test_plugin_error_json_maps_to_exception_fields() -> None:
    out = json.dumps(
        {"cniVersion": "1.0.0", "code": 11, "msg": "busy", "details": "lock held by x"}
    ).encode()
    err = parse_plugin_error(out, b"noise", 1, command="ADD", plugin="bridge", network="n")
    assert (err.code, err.msg, err.details) == (11, "busy", "lock held by x")
    assert (err.command, err.plugin, err.network) == ("ADD", "bridge", "n")
    assert err.temporary
    assert str(err) == (
        "CNI ADD, network 'n', plugin 'bridge': busy (CNI error 11, try again later): "
        "lock held by x"
    )
    plugin_specific = parse_plugin_error(b'{"code": 999, "msg": "m"}', b"", 1)
    assert "plugin-specific" in str(plugin_specific)
    assert not plugin_specific.temporary


def test_unstructured_plugin_failures_quote_the_output() -> None:
    err = parse_plugin_error(b"", b"panic: runtime error\n", 2, plugin="p")
    assert err.code == CNIErrorCode.RUNTIME
    assert err.details == "panic: runtime error"
    assert "exit status 2" in str(err)
    killed = parse_plugin_error(b"garbage", b"", -9)
    assert "killed by signal 9" in str(killed) and killed.details == "garbage"


def test_cni_error_is_a_domain_error_with_grpc_unknown() -> None:
    from cri.errors import to_grpc_status

    code, message = to_grpc_status(CNIError(7, "bad config", plugin="bridge"))
    assert code.name == "UNKNOWN"
    assert message.startswith("plugin 'bridge': bad config (CNI error 7")


# -- port mappings ---------------------------------------------------------------------


def test_port_mappings_from_cri() -> None:
    pm = api_pb2.PortMapping
    out = port_mappings_from_cri(
        [
            pm(protocol=api_pb2.TCP, container_port=80, host_port=8080),
            pm(protocol=api_pb2.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1"),
            pm(protocol=api_pb2.SCTP, container_port=9, host_port=9, host_ip="::1"),
            # No host port: not a host port mapping at all, so CNI never sees it.
            pm(protocol=api_pb2.TCP, container_port=81),
        ]
    )
    assert out == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
        {"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": "::1"},
    ]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        (
            api_pb2.PortMapping(container_port=0, host_port=80),
            "port_mappings[1].container_port: 0 is not a port",
        ),
        (
            api_pb2.PortMapping(container_port=70000, host_port=80),
            "port_mappings[1].container_port: 70000",
        ),
        (
            api_pb2.PortMapping(container_port=80, host_port=70000),
            "port_mappings[1].host_port: 70000",
        ),
        (
            api_pb2.PortMapping(container_port=80, host_port=80, host_ip="localhost"),
            "port_mappings[1].host_ip: 'localhost' is not an IP address",
        ),
        (
            api_pb2.PortMapping(protocol=7, container_port=80, host_port=80),  # type: ignore[arg-type]
            "port_mappings[1].protocol: unknown protocol 7",
        ),
    ],
)
def test_bad_port_mappings_name_the_field(mapping: api_pb2.PortMapping, message: str) -> None:
    ok = api_pb2.PortMapping(container_port=1, host_port=1)
    with pytest.raises(InvalidArgument) as info:
        port_mappings_from_cri([ok, mapping])
    assert str(info.value).startswith(message)
