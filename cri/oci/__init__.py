"""OCI runtime specs and runc for rktlet: pure builders plus a thin runc wrapper.

The daemon's entry points::

    from cri.oci import (
        ContainerContext, SandboxContext, PodNamespaces, ImageConfig, HostInfo,
        build_container_spec, build_sandbox_spec, prepare_sandbox_rootfs,
        pod_namespaces, detect_host, linux_resources, Runc, process_spec_for_exec,
    )
"""

from cri.oci.host import HostInfo, detect_host
from cri.oci.image_config import ImageConfig, parse_stop_signal
from cri.oci.resources import linux_resources
from cri.oci.runc import ExecResult, Runc, RuncError, RuncState, process_spec_for_exec
from cri.oci.spec import (
    ContainerContext,
    PodNamespaces,
    SandboxContext,
    build_container_spec,
    build_sandbox_spec,
    pod_namespaces,
    prepare_sandbox_rootfs,
    process_args,
)
from cri.oci.user import ResolvedUser, resolve_user

__all__ = [
    "ContainerContext",
    "ExecResult",
    "HostInfo",
    "ImageConfig",
    "PodNamespaces",
    "ResolvedUser",
    "Runc",
    "RuncError",
    "RuncState",
    "SandboxContext",
    "build_container_spec",
    "build_sandbox_spec",
    "detect_host",
    "linux_resources",
    "parse_stop_signal",
    "pod_namespaces",
    "prepare_sandbox_rootfs",
    "process_args",
    "process_spec_for_exec",
    "resolve_user",
]
