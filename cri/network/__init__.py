"""Pod networking: pinned network namespaces, the CNI runtime and per-pod DNS/hosts files.

The daemon's entry points are :class:`CNINetwork` (setup / teardown / check / status),
:func:`create_netns` / :func:`remove_netns` / :func:`run_in_netns`, and
:func:`write_pod_files`.
"""

from __future__ import annotations

from .cni import (
    DEFAULT_BIN_DIRS,
    DEFAULT_CONF_DIR,
    NETWORK_NOT_READY_REASON,
    CNINetwork,
    NetworkResult,
    port_mappings_from_cri,
)
from .cniconfig import LoadedConfig, NetworkConfigList
from .cnitypes import CNIError, CNIErrorCode, CNIResult, DNSInfo, InterfaceInfo, IPConfig, RouteInfo
from .netns import (
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
from .podfiles import (
    PodFiles,
    render_hosts,
    render_resolv_conf,
    validate_dns_config,
    validate_hostname,
    write_pod_files,
)

__all__ = [
    "CNIError",
    "CNIErrorCode",
    "CNINetwork",
    "CNIResult",
    "DEFAULT_BIN_DIRS",
    "DEFAULT_CONF_DIR",
    "DNSInfo",
    "IPConfig",
    "InterfaceInfo",
    "LoadedConfig",
    "NETWORK_NOT_READY_REASON",
    "NetnsError",
    "NetworkConfigList",
    "NetworkResult",
    "PodFiles",
    "RouteInfo",
    "create_netns",
    "current_netns_id",
    "is_netns_pinned",
    "netns_id",
    "netns_path",
    "port_mappings_from_cri",
    "remove_netns",
    "render_hosts",
    "render_resolv_conf",
    "run_in_netns",
    "run_in_netns_async",
    "validate_dns_config",
    "validate_hostname",
    "write_pod_files",
]
