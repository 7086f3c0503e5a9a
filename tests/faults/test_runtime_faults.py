"""Faults in the programs the daemon drives: runc killed mid-create, the monitor killed by
runc's create, CNI plugins failing or hanging.

The faults are injected by wrappers placed first in the daemon's PATH (runc)
or in its CNI plugin directory: a wrapper hands over to the real program after
doing its damage.  They stand in for crashes, not for the programs.
"""

from __future__ import annotations

import json
import shutil

import grpc
import pytest

from cri.api import api_pb2
from tests.faults.conftest import FaultDaemon, assert_no_leaks, run_quietly, wait_for, write_script

RUNC_KILLER = """#!/bin/sh
# Fault injector: when the flag file exists, the next `runc create` is SIGKILLed
# once it has made the container's state directory (i.e. half-way).
real={real}
flag={flag}
for last; do :; done
case " $* " in
*" create "*)
    if [ -e "$flag" ]; then
        rm -f "$flag"
        root=""
        prev=""
        for arg; do [ "$prev" = "--root" ] && root=$arg; prev=$arg; done
        "$real" "$@" &
        pid=$!
        n=0
        while [ ! -e "$root/$last" ] && [ $n -lt 500 ]; do sleep 0.01; n=$((n+1)); done
        kill -9 $pid
        wait $pid
        exit 137
    fi
    ;;
esac
exec "$real" "$@"
"""

MONITOR_KILLER = """#!/bin/sh
# Fault injector: when the flag file exists, `runc create` SIGKILLs its parent,
# the pod's monitor, then creates the container as asked.
real={real}
flag={flag}
case " $* " in
*" create "*)
    if [ -e "$flag" ]; then rm -f "$flag"; kill -9 $PPID; fi
    ;;
esac
exec "$real" "$@"
"""


def _install_runc_wrapper(daemon: FaultDaemon, template: str) -> str:
    real = shutil.which("runc")
    assert real is not None
    flag = daemon.base / "fault-flag"
    write_script(daemon.bin_dir / "runc", template.format(real=real, flag=flag))
    daemon.stop()
    daemon.start()
    return str(flag)


@pytest.mark.timeout(120)
def test_runc_killed_mid_create(fdaemon: FaultDaemon) -> None:
    flag = _install_runc_wrapper(fdaemon, RUNC_KILLER)
    pod_id, pod_config = fdaemon.run_pod("runc-killed")
    open(flag, "w").close()
    config = fdaemon.container_config("victim", "busybox", ["sleep", "3600"])
    with pytest.raises(grpc.RpcError) as err:
        fdaemon.run_container(pod_id, pod_config, config)
    assert "cannot create container" in err.value.details()
    assert "exited with 137" in err.value.details(), err.value.details()  # not a wait status
    assert fdaemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers == []
    # The pod is unharmed: the same container is created and runs on the next try.
    ctr = fdaemon.run_container(pod_id, pod_config, config)
    assert fdaemon.status(ctr).state == api_pb2.ContainerState.CONTAINER_RUNNING
    assert fdaemon.pod_status(pod_id).state == api_pb2.PodSandboxState.SANDBOX_READY
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)


@pytest.mark.timeout(120)
def test_monitor_killed_during_create(fdaemon: FaultDaemon) -> None:
    flag = _install_runc_wrapper(fdaemon, MONITOR_KILLER)
    pod_id, pod_config = fdaemon.run_pod("monitor-killed")
    running = fdaemon.run_container(
        pod_id, pod_config, fdaemon.container_config("first", "busybox", ["sleep", "3600"])
    )
    open(flag, "w").close()
    with pytest.raises(grpc.RpcError) as err:
        fdaemon.run_container(
            pod_id, pod_config, fdaemon.container_config("second", "busybox", ["sleep", "3600"])
        )
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    names = [
        c.metadata.name
        for c in fdaemon.runtime.ListContainers(api_pb2.ListContainersRequest()).containers
    ]
    assert names == ["first"], "the failed create left a record"
    wait_for(
        lambda: fdaemon.status(running).state == api_pb2.ContainerState.CONTAINER_EXITED,
        5,
        "the first container to be reported exited",
    )
    assert fdaemon.status(running).reason == "MonitorDied"
    assert fdaemon.pod_status(pod_id).state == api_pb2.PodSandboxState.SANDBOX_NOTREADY
    fdaemon.remove_pod(pod_id)
    assert_no_leaks(fdaemon)


def _cni_config(daemon: FaultDaemon, plugin: str) -> None:
    conflist = {
        "cniVersion": "1.0.0",
        "name": "faulty",
        "plugins": [
            {
                "type": "bridge",
                "bridge": f"rkf{daemon.run_dir.name[-8:]}",
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "10.89.7.0/24"}]],
                    "dataDir": str(daemon.base / "ipam"),
                },
            },
            {"type": plugin},
        ],
    }
    (daemon.cni_conf_dir / "10-faulty.conflist").write_text(json.dumps(conflist))


@pytest.mark.timeout(120)
def test_cni_plugin_fails(fdaemon: FaultDaemon) -> None:
    write_script(
        fdaemon.cni_bin_dir / "fault",
        '#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = DEL ] && exit 0\n'
        '[ "$CNI_COMMAND" = VERSION ] && { echo \'{"cniVersion":"1.0.0",'
        '"supportedVersions":["0.4.0","1.0.0"]}\'; exit 0; }\n'
        'echo \'{"cniVersion":"1.0.0","code":11,"msg":"injected failure"}\'\nexit 1\n',
    )
    _cni_config(fdaemon, "fault")
    with pytest.raises(grpc.RpcError) as err:
        fdaemon.run_pod("cni-fails")
    assert "injected failure" in err.value.details()
    assert fdaemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    # The bridge plugin's ADD ran before the failure: its DEL released the address.
    ipam = fdaemon.base / "ipam" / "faulty"
    assert not ipam.exists() or [p.name for p in ipam.iterdir() if p.name[0].isdigit()] == []
    assert_no_leaks(fdaemon)


@pytest.mark.timeout(120)
def test_cni_plugin_hangs(fdaemon: FaultDaemon) -> None:
    marker = fdaemon.base / "hung-plugin"
    write_script(
        fdaemon.cni_bin_dir / "fault",
        f'#!/bin/sh\ncat >/dev/null\n[ "$CNI_COMMAND" = ADD ] || exit 0\n'
        f"echo $$ > {marker}\nexec sleep 3600\n",
    )
    _cni_config(fdaemon, "fault")
    with pytest.raises(grpc.RpcError) as err:
        fdaemon.runtime.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=fdaemon.pod_config("cni-hangs")), timeout=3
        )
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    hung = int(marker.read_text())
    # The kubelet gave up: the daemon kills the plugin and unwinds the pod.
    wait_for(
        lambda: run_quietly(["kill", "-0", str(hung)]).returncode != 0,
        10,
        "the hung plugin to be killed",
    )
    wait_for(lambda: not any((fdaemon.run_dir / "pods").iterdir()), 10, "the pod to be unwound")
    assert fdaemon.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items == []
    assert_no_leaks(fdaemon)
