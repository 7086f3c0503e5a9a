"""CRI status messages built from the store's records.

``ContainerStatus`` and ``PodSandboxStatus`` are read by their RPCs, by
``PodSandboxStatus`` (a pod's containers), and by the container events the
runtime publishes; they sit below all three so that none reaches up for them.
They read nothing but the record (and, for a container, what the runtime knows
of its log drops, passed in).
"""

from __future__ import annotations

from cri.api import api_pb2
from cri.store import ContainerRecord, SandboxRecord

#: The CRI state of each record state ("creating" is never listed; UNKNOWN if asked).
CONTAINER_STATES = {
    "creating": api_pb2.ContainerState.CONTAINER_UNKNOWN,
    "created": api_pb2.ContainerState.CONTAINER_CREATED,
    "running": api_pb2.ContainerState.CONTAINER_RUNNING,
    "exited": api_pb2.ContainerState.CONTAINER_EXITED,
}


def container_status_proto(
    record: ContainerRecord, log_message: str = ""
) -> api_pb2.ContainerStatus:
    """``log_message``: the runtime's words on output the log lost (``log_drop_message``)."""
    config = api_pb2.ContainerConfig.FromString(record.config)
    status = api_pb2.ContainerStatus(
        id=record.id,
        metadata=config.metadata,
        state=CONTAINER_STATES.get(record.state, api_pb2.ContainerState.CONTAINER_UNKNOWN),
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        exit_code=record.exit_code if record.state == "exited" else 0,
        image=api_pb2.ImageSpec(image=record.image, annotations=config.image.annotations),
        image_ref=record.image_ref,
        image_id=record.image_id,
        reason=record.reason if record.state == "exited" else "",
        message="; ".join(m for m in (record.message, log_message) if m),
        labels=config.labels,
        annotations=config.annotations,
        mounts=config.mounts,
        log_path=record.log_path,
    )
    if config.HasField("linux") and config.linux.HasField("resources"):
        status.resources.linux.CopyFrom(config.linux.resources)
    for index, image_id in record.info.get("image_volumes", {}).items():
        # The image a volume mounts, by id; what the client asked for stays beside it.
        image = status.mounts[int(index)].image
        if image.image != image_id:
            image.user_specified_image = image.user_specified_image or image.image
            image.image = image_id
    user = record.info.get("user")
    if user:
        status.user.linux.uid, status.user.linux.gid = user[0], user[1]
        status.user.linux.supplemental_groups.extend(user[2])
    return status


def sandbox_state(record: SandboxRecord) -> api_pb2.PodSandboxState:
    """The CRI state of a stored pod: only a pod recorded ready is READY."""
    if record.state == "ready":
        return api_pb2.PodSandboxState.SANDBOX_READY
    return api_pb2.PodSandboxState.SANDBOX_NOTREADY


def sandbox_status_proto(record: SandboxRecord) -> api_pb2.PodSandboxStatus:
    config = api_pb2.PodSandboxConfig.FromString(record.config)
    ns = config.linux.security_context.namespace_options
    status = api_pb2.PodSandboxStatus(
        id=record.id,
        metadata=config.metadata,
        state=sandbox_state(record),
        created_at=record.created_at,
        network=api_pb2.PodSandboxNetworkStatus(
            ip=record.info.get("ip", ""),
            additional_ips=[api_pb2.PodIP(ip=ip) for ip in record.info.get("additional_ips", [])],
        ),
        linux=api_pb2.LinuxPodSandboxStatus(
            namespaces=api_pb2.Namespace(
                options=api_pb2.NamespaceOption(
                    network=ns.network,
                    pid=ns.pid,
                    ipc=ns.ipc,
                    target_id=ns.target_id,
                    userns_options=ns.userns_options if ns.HasField("userns_options") else None,
                )
            )
        ),
        labels=config.labels,
        annotations=config.annotations,
        runtime_handler=record.runtime_handler,
    )
    return status
