"""The main job: start rktlet, run a pod, show its logs, attach to it, exec in it.

Everything runs for real: the daemon (``rktlet serve``) with its built-in
defaults for the runtime (runc) and the network (the built-in bridge), a pod
with a busybox app built offline from Debian's busybox-static, the per-pod
iottymux monitor writing the CRI log.  The daemon runs in a network namespace
of the demo's own, so the host's network is untouched; everything the demo
creates is removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from cri.api import api_pb2, api_pb2_grpc
from iottymux.attachclient import AttachClient, endpoint_path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="rktlet-demo-"))
    run_dir = Path(f"/run/rktlet-demo-{secrets.token_hex(3)}")
    netns = f"rktlet-demo-{secrets.token_hex(3)}"
    daemon: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None
    runtime = None
    try:
        step("building the busybox image offline and importing it")
        from fixtures.build_images import build_all, write_oci_archive

        layout = build_all(base / "layout")
        archive = write_oci_archive(
            layout,
            "rktlet/busybox:latest",
            base / "busybox.tar",
            image_name="docker.io/rktlet/busybox:latest",
        )
        root = base / "root"
        subprocess.run(
            [PY, "-m", "cri.cli", "image", "--root", str(root), "import", str(archive)],
            check=True,
            cwd=REPO,
        )

        step("starting rktlet serve (runc, built-in bridge network)")
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        socket_path = run_dir / "rktlet.sock"
        log = open(base / "daemon.log", "wb")  # noqa: SIM115 - handed to the daemon
        daemon = subprocess.Popen(
            [
                "nsenter",
                f"--net=/run/netns/{netns}",
                PY,
                "-m",
                "cri.cli",
                "serve",
                "--socket",
                str(socket_path),
                "--root",
                str(root),
                "--run-dir",
                str(run_dir),
                "--cni-conf-dir",
                str(base / "cni"),
            ],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
        log.close()
        channel = grpc.insecure_channel(f"unix://{socket_path}")
        grpc.channel_ready_future(channel).result(timeout=60)
        runtime = api_pb2_grpc.RuntimeServiceStub(channel)
        version = runtime.Version(api_pb2.VersionRequest())
        print(
            f"{version.runtime_name} {version.runtime_version}, CRI {version.runtime_api_version}"
        )

        step("running a pod whose app prints")
        uid = secrets.token_hex(4)
        pod_config = api_pb2.PodSandboxConfig(
            metadata=api_pb2.PodSandboxMetadata(name="demo", namespace="default", uid=uid),
            hostname="demo",
            log_directory=str(base / "pods" / f"default_demo_{uid}"),
        )
        pod_id = runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=pod_config))
        pod_id = pod_id.pod_sandbox_id
        status = runtime.PodSandboxStatus(api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod_id))
        print(f"pod {pod_id[:12]} is ready, IP {status.status.network.ip}")
        script = (
            "echo hello from the app; i=0; while read line; do i=$((i+1)); "
            'echo "line $i: $line"; echo "a warning about $line" >&2; done; echo bye'
        )
        container = runtime.CreateContainer(
            api_pb2.CreateContainerRequest(
                pod_sandbox_id=pod_id,
                sandbox_config=pod_config,
                config=api_pb2.ContainerConfig(
                    metadata=api_pb2.ContainerMetadata(name="app"),
                    image=api_pb2.ImageSpec(image="docker.io/rktlet/busybox:latest"),
                    command=["sh", "-c", script],
                    stdin=True,
                    log_path="app/0.log",
                ),
            )
        ).container_id
        runtime.StartContainer(api_pb2.StartContainerRequest(container_id=container))
        log_path = runtime.ContainerStatus(
            api_pb2.ContainerStatusRequest(container_id=container)
        ).status.log_path

        step("attaching to the app and typing two lines")
        with AttachClient(
            endpoint_path(str(run_dir / "pods" / pod_id), container), replay=True
        ) as client:
            client.send_stdin(b"first input\n")
            client.send_stdin(b"second input\n")
            seen = b""
            while b"line 2" not in seen:
                _kind, payload = client.next_frame()
                seen += payload
                sys.stdout.buffer.write(payload)
                sys.stdout.flush()

        step("exec in the container")
        reply = runtime.ExecSync(
            api_pb2.ExecSyncRequest(
                container_id=container,
                cmd=["sh", "-c", "echo hello from exec; hostname; id"],
                timeout=30,
            )
        )
        sys.stdout.buffer.write(reply.stdout)
        print(f"(exit code {reply.exit_code})")

        step(f"iottymux logs -f {log_path}")
        follower = subprocess.Popen(
            [PY, "-m", "iottymux", "logs", "-f", "--timestamps", log_path], cwd=REPO
        )
        time.sleep(1.5)  # let the follower print what is there, then show a live line
        with AttachClient(endpoint_path(str(run_dir / "pods" / pod_id), container)) as client:
            client.send_stdin(b"typed while following\n")
            seen = b""
            while b"typed while following" not in seen:
                seen += client.next_frame()[1]
        time.sleep(1.0)  # the follower prints it from the log file
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)

        step("cleaning up")
        runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        print("pod removed")
        return 0
    finally:
        if runtime is not None:
            with contextlib.suppress(grpc.RpcError):
                for pod in runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest()).items:
                    runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id))
        if channel is not None:
            channel.close()
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", netns], check=False, capture_output=True)
        if os.path.ismount(str(run_dir)):
            subprocess.run(["umount", "-l", str(run_dir)], check=False)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
