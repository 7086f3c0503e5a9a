"""Wire compatibility of rktlet's CRI v1 API (``cri.api``) with a published build.

The reference is PyPI's ``container-runtime-interface-api`` (``cri_api.v1.api_pb2``),
built independently from the Kubernetes cri-api ``api.proto``. Both modules define
the ``runtime.v1.*`` symbols, so they cannot share one protobuf descriptor pool:
this process imports only ``cri.api``; everything that needs the published build
runs in a subprocess and exchanges serialized bytes with us.
"""

from __future__ import annotations

import base64
import functools
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from cri.api import api_pb2, api_pb2_grpc

FDP = descriptor_pb2.FileDescriptorProto
FieldDP = descriptor_pb2.FieldDescriptorProto

# Things the published build has that Kubernetes removed before 1.34, and which
# therefore are deliberately absent from our api.proto. Keys are fully qualified
# names: "Message", "Message.field", "Enum.VALUE", "Service.Method".
# None are known: the published build's symbols all still exist in 1.34.
REMOVED_UPSTREAM_BEFORE_1_34: dict[str, str] = {}

# Runs with the published build only. Modes:
#   descriptor               -> base64 of its FileDescriptorProto
#   roundtrip <Msg>          -> stdin: base64 bytes of runtime.v1.<Msg>; prints JSON
#                               {"dict": MessageToDict, "bytes": base64 re-serialization}
#   build                    -> JSON {"dict", "bytes"} of a ContainerStatusResponse
#                               built by the published module (reverse direction)
_PUBLISHED_HELPER = r"""
import base64, json, sys
from google.protobuf.json_format import MessageToDict
from cri_api.v1 import api_pb2 as pub

mode = sys.argv[1]
if mode == "descriptor":
    sys.stdout.write(base64.b64encode(pub.DESCRIPTOR.serialized_pb).decode())
elif mode == "roundtrip":
    msg = getattr(pub, sys.argv[2])()
    msg.ParseFromString(base64.b64decode(sys.stdin.read()))
    out = {
        "dict": MessageToDict(msg, preserving_proto_field_name=True),
        "bytes": base64.b64encode(msg.SerializeToString()).decode(),
    }
    sys.stdout.write(json.dumps(out))
elif mode == "build":
    resp = pub.ContainerStatusResponse()
    st = resp.status
    st.id = "c0ffee"
    st.metadata.name = "web"
    st.metadata.attempt = 3
    st.state = pub.CONTAINER_EXITED
    st.exit_code = 137
    st.reason = "OOMKilled"
    st.labels["app"] = "web"
    st.mounts.add(container_path="/data", host_path="/srv/data", readonly=True,
                  propagation=pub.PROPAGATION_HOST_TO_CONTAINER)
    st.resources.linux.memory_limit_in_bytes = 1 << 30
    st.user.linux.uid = 1000
    st.user.linux.supplemental_groups.extend([10, 20])
    st.stop_signal = pub.SIGQUIT
    resp.info["pid"] = "4242"
    out = {
        "dict": MessageToDict(resp, preserving_proto_field_name=True),
        "bytes": base64.b64encode(resp.SerializeToString()).decode(),
    }
    sys.stdout.write(json.dumps(out))
else:
    raise SystemExit("unknown mode " + mode)
"""


def _run_published(*args: str, stdin: str = "") -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _PUBLISHED_HELPER, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"published-build helper failed:\n{proc.stderr}"
    return proc.stdout


@functools.cache
def _published_fdp() -> descriptor_pb2.FileDescriptorProto:
    return FDP.FromString(base64.b64decode(_run_published("descriptor")))


def _our_fdp() -> descriptor_pb2.FileDescriptorProto:
    return FDP.FromString(api_pb2.DESCRIPTOR.serialized_pb)


# --------------------------------------------------------------------------
# Descriptor flattening
# --------------------------------------------------------------------------


def _norm_type_name(type_name: str) -> str:
    return type_name.lstrip(".")


def _collect(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> tuple[
    dict[str, descriptor_pb2.DescriptorProto],
    dict[str, descriptor_pb2.EnumDescriptorProto],
]:
    """All messages (nested and map entries included) and enums, by full name."""
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}

    def walk(prefix: str, msg: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{msg.name}"
        messages[name] = msg
        for nested in msg.nested_type:
            walk(name, nested)
        for enum in msg.enum_type:
            enums[f"{name}.{enum.name}"] = enum

    for msg in fdp.message_type:
        walk(fdp.package, msg)
    for enum in fdp.enum_type:
        enums[f"{fdp.package}.{enum.name}"] = enum
    return messages, enums


def _field_facts(msg: descriptor_pb2.DescriptorProto, field: Any) -> dict[str, Any]:
    oneof = None
    if field.HasField("oneof_index"):
        oneof = msg.oneof_decl[field.oneof_index].name
    return {
        "name": field.name,
        "type": FieldDP.Type.Name(field.type),
        "type_name": _norm_type_name(field.type_name),
        "label": FieldDP.Label.Name(field.label),
        "oneof": oneof,
        "proto3_optional": field.proto3_optional,
        "deprecated": field.options.deprecated,
    }


def _methods(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for svc in fdp.service:
        for m in svc.method:
            out[f"{fdp.package}.{svc.name}.{m.name}"] = {
                "input": _norm_type_name(m.input_type),
                "output": _norm_type_name(m.output_type),
                "client_streaming": m.client_streaming,
                "server_streaming": m.server_streaming,
            }
    return out


def _symbols(fdp: descriptor_pb2.FileDescriptorProto) -> set[str]:
    """Every message, field, enum, enum value and RPC, as qualified names."""
    messages, enums = _collect(fdp)
    names: set[str] = set(messages) | set(enums) | set(_methods(fdp))
    for mname, msg in messages.items():
        names.update(f"{mname}.{f.name}" for f in msg.field)
    for ename, enum in enums.items():
        names.update(f"{ename}.{v.name}" for v in enum.value)
    return names


# --------------------------------------------------------------------------
# Structural comparison
# --------------------------------------------------------------------------


def test_file_options() -> None:
    ours = _our_fdp()
    assert ours.syntax == "proto3"
    assert ours.package == "runtime.v1"
    assert ours.options.go_package == "k8s.io/cri-api/pkg/apis/runtime/v1"
    # No gogoproto (or any other) imports.
    assert list(ours.dependency) == []
    assert {s.name for s in ours.service} == {"RuntimeService", "ImageService"}


def test_published_build_is_a_real_reference() -> None:
    # Guard against comparing with an empty or unrelated descriptor.
    pub = _published_fdp()
    assert pub.package == "runtime.v1"
    messages, enums = _collect(pub)
    assert len(messages) > 150
    assert "runtime.v1.ContainerConfig" in messages
    assert "runtime.v1.ContainerState" in enums


def test_common_messages_agree() -> None:
    ours_msgs, _ = _collect(_our_fdp())
    pub_msgs, _ = _collect(_published_fdp())
    problems: list[str] = []
    for name in sorted(set(ours_msgs) & set(pub_msgs)):
        ours, pub = ours_msgs[name], pub_msgs[name]
        if ours.options.map_entry != pub.options.map_entry:
            problems.append(
                f"{name}: map_entry {ours.options.map_entry} != {pub.options.map_entry}"
            )
        ours_fields = {f.number: _field_facts(ours, f) for f in ours.field}
        pub_fields = {f.number: _field_facts(pub, f) for f in pub.field}
        for number in sorted(set(ours_fields) & set(pub_fields)):
            if ours_fields[number] != pub_fields[number]:
                problems.append(
                    f"{name} field #{number}: ours {ours_fields[number]} != "
                    f"published {pub_fields[number]}"
                )
        # The same name must not sit at different numbers either.
        ours_by_name = {f["name"]: n for n, f in ours_fields.items()}
        pub_by_name = {f["name"]: n for n, f in pub_fields.items()}
        for fname in sorted(set(ours_by_name) & set(pub_by_name)):
            if ours_by_name[fname] != pub_by_name[fname]:
                problems.append(
                    f"{name}.{fname}: number {ours_by_name[fname]} != {pub_by_name[fname]}"
                )
    assert not problems, "\n".join(problems)


def test_common_enums_agree() -> None:
    _, ours_enums = _collect(_our_fdp())
    _, pub_enums = _collect(_published_fdp())
    common = set(ours_enums) & set(pub_enums)
    assert common, "no enums in common"
    problems: list[str] = []
    for name in sorted(common):
        ours = {v.name: v.number for v in ours_enums[name].value}
        pub = {v.name: v.number for v in pub_enums[name].value}
        for vname in sorted(set(ours) & set(pub)):
            if ours[vname] != pub[vname]:
                problems.append(f"{name}.{vname}: {ours[vname]} != {pub[vname]}")
        ours_by_num = {n: v for v, n in ours.items()}
        pub_by_num = {n: v for v, n in pub.items()}
        for num in sorted(set(ours_by_num) & set(pub_by_num)):
            if ours_by_num[num] != pub_by_num[num]:
                problems.append(f"{name} value {num}: {ours_by_num[num]} != {pub_by_num[num]}")
    assert not problems, "\n".join(problems)


def test_common_rpcs_agree() -> None:
    ours = _methods(_our_fdp())
    pub = _methods(_published_fdp())
    common = set(ours) & set(pub)
    assert "runtime.v1.RuntimeService.GetContainerEvents" in common
    problems = [
        f"{name}: ours {ours[name]} != published {pub[name]}"
        for name in sorted(common)
        if ours[name] != pub[name]
    ]
    assert not problems, "\n".join(problems)


def test_nothing_missing_compared_to_published_build() -> None:
    missing = _symbols(_published_fdp()) - _symbols(_our_fdp())
    unexpected = sorted(missing - set(REMOVED_UPSTREAM_BEFORE_1_34))
    assert not unexpected, "missing from cri/api/api.proto:\n" + "\n".join(unexpected)


def test_report_additions_over_published_build(capsys: pytest.CaptureFixture[str]) -> None:
    # Informational: symbols newer than the published build's cri-api version.
    extra = sorted(_symbols(_our_fdp()) - _symbols(_published_fdp()))
    with capsys.disabled():
        if extra:
            print(f"\n[cri-api compat] {len(extra)} symbol(s) not in the published build:")
            for name in extra:
                print(f"  + {name}")
        else:
            print("\n[cri-api compat] no symbols beyond the published build")


# --------------------------------------------------------------------------
# Real bytes across both implementations
# --------------------------------------------------------------------------


def _container_config() -> api_pb2.ContainerConfig:
    cfg = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="app", attempt=2),
        image=api_pb2.ImageSpec(
            image="docker.io/library/busybox@sha256:" + "ab" * 32,
            annotations={"arch": "amd64"},
            user_specified_image="busybox:1.36",
            runtime_handler="runc",
        ),
        command=["/bin/sh", "-c"],
        args=["echo hello; sleep 1"],
        working_dir="/work",
        envs=[api_pb2.KeyValue(key="PATH", value="/bin"), api_pb2.KeyValue(key="X", value="1")],
        labels={"io.kubernetes.container.name": "app"},
        annotations={"note": "round-trip"},
        log_path="app/2.log",
        stdin=True,
        tty=True,
        stop_signal=api_pb2.SIGTERM,
    )
    cfg.mounts.add(
        container_path="/data",
        host_path="/var/lib/data",
        readonly=True,
        propagation=api_pb2.PROPAGATION_BIDIRECTIONAL,
        recursive_read_only=True,
        image_sub_path="sub",
    ).uidMappings.add(host_id=100000, container_id=0, length=65536)
    cfg.devices.add(container_path="/dev/fuse", host_path="/dev/fuse", permissions="rwm")
    cfg.CDI_devices.add(name="vendor.com/gpu=0")
    res = cfg.linux.resources
    res.cpu_quota = 50000
    res.cpu_period = 100000
    res.memory_limit_in_bytes = 256 << 20
    res.unified["memory.high"] = "200M"
    res.hugepage_limits.add(page_size="2MB", limit=4 << 20)
    sc = cfg.linux.security_context
    sc.run_as_user.value = 1000
    sc.supplemental_groups.extend([5, 6])
    sc.supplemental_groups_policy = api_pb2.Strict
    sc.capabilities.add_capabilities.append("NET_ADMIN")
    sc.seccomp.profile_type = api_pb2.SecurityProfile.Localhost
    sc.seccomp.localhost_ref = "/profiles/app.json"
    sc.namespace_options.pid = api_pb2.TARGET
    sc.namespace_options.target_id = "sandbox-ctr"
    return cfg


def _sandbox_config() -> api_pb2.PodSandboxConfig:
    cfg = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="web-0", uid="u-1", namespace="prod", attempt=1),
        hostname="web-0",
        log_directory="/var/log/pods/prod_web-0_u-1",
        dns_config=api_pb2.DNSConfig(
            servers=["10.0.0.10"], searches=["prod.svc"], options=["ndots:5"]
        ),
        labels={"app": "web"},
        annotations={"owner": "team-a"},
    )
    cfg.port_mappings.add(
        protocol=api_pb2.SCTP, container_port=8080, host_port=80, host_ip="0.0.0.0"
    )
    cfg.linux.cgroup_parent = "/kubepods/burstable/podu-1"
    cfg.linux.sysctls["net.ipv4.ip_forward"] = "1"
    userns = cfg.linux.security_context.namespace_options.userns_options
    userns.mode = api_pb2.POD
    userns.uids.add(host_id=200000, container_id=0, length=65536)
    cfg.windows.security_context.host_process = True
    return cfg


def _round_trip(msg: Message) -> tuple[dict[str, Any], bytes]:
    out = json.loads(
        _run_published(
            "roundtrip",
            msg.DESCRIPTOR.name,
            stdin=base64.b64encode(msg.SerializeToString()).decode(),
        )
    )
    return out["dict"], base64.b64decode(out["bytes"])


@pytest.mark.parametrize(
    "build",
    [
        _container_config,
        _sandbox_config,
        lambda: api_pb2.CreateContainerRequest(
            pod_sandbox_id="sb-1", config=_container_config(), sandbox_config=_sandbox_config()
        ),
    ],
    ids=["ContainerConfig", "PodSandboxConfig", "CreateContainerRequest"],
)
def test_messages_round_trip_through_published_build(build: Callable[[], Message]) -> None:
    ours = build()
    pub_dict, pub_bytes = _round_trip(ours)
    # The published build decoded every field to the same names and values.
    assert pub_dict == MessageToDict(ours, preserving_proto_field_name=True)
    # And what it re-encodes decodes back to an equal message here.
    back = type(ours).FromString(pub_bytes)
    assert back == ours


def test_container_config_field_values_seen_by_published_build() -> None:
    pub, _ = _round_trip(_container_config())
    assert pub["metadata"] == {"name": "app", "attempt": 2}
    assert pub["image"]["user_specified_image"] == "busybox:1.36"
    assert pub["command"] == ["/bin/sh", "-c"]
    assert pub["envs"][1] == {"key": "X", "value": "1"}
    assert pub["stop_signal"] == "SIGTERM"
    assert pub["mounts"][0]["propagation"] == "PROPAGATION_BIDIRECTIONAL"
    assert pub["mounts"][0]["image_sub_path"] == "sub"
    assert pub["mounts"][0]["uidMappings"][0]["host_id"] == 100000
    assert pub["CDI_devices"] == [{"name": "vendor.com/gpu=0"}]
    assert pub["linux"]["resources"]["memory_limit_in_bytes"] == str(256 << 20)
    sc = pub["linux"]["security_context"]
    assert sc["run_as_user"] == {"value": "1000"}
    assert sc["supplemental_groups_policy"] == "Strict"
    assert sc["seccomp"] == {"profile_type": "Localhost", "localhost_ref": "/profiles/app.json"}
    assert sc["namespace_options"] == {"pid": "TARGET", "target_id": "sandbox-ctr"}


def test_sandbox_config_field_values_seen_by_published_build() -> None:
    pub, _ = _round_trip(_sandbox_config())
    assert pub["metadata"]["namespace"] == "prod"
    assert pub["port_mappings"] == [
        {"protocol": "SCTP", "container_port": 8080, "host_port": 80, "host_ip": "0.0.0.0"}
    ]
    assert pub["dns_config"]["options"] == ["ndots:5"]
    assert pub["linux"]["sysctls"] == {"net.ipv4.ip_forward": "1"}
    userns = pub["linux"]["security_context"]["namespace_options"]["userns_options"]
    assert userns["uids"] == [{"host_id": 200000, "length": 65536}]
    assert pub["windows"]["security_context"]["host_process"] is True


def test_message_built_by_published_build_parses_here() -> None:
    out = json.loads(_run_published("build"))
    resp = api_pb2.ContainerStatusResponse.FromString(base64.b64decode(out["bytes"]))
    st = resp.status
    assert st.id == "c0ffee"
    assert (st.metadata.name, st.metadata.attempt) == ("web", 3)
    assert st.state == api_pb2.CONTAINER_EXITED
    assert st.exit_code == 137
    assert st.reason == "OOMKilled"
    assert dict(st.labels) == {"app": "web"}
    assert st.mounts[0].readonly
    assert st.mounts[0].propagation == api_pb2.PROPAGATION_HOST_TO_CONTAINER
    assert st.resources.linux.memory_limit_in_bytes == 1 << 30
    assert st.user.linux.uid == 1000
    assert list(st.user.linux.supplemental_groups) == [10, 20]
    assert st.stop_signal == api_pb2.SIGQUIT
    assert dict(resp.info) == {"pid": "4242"}
    # We decoded every field it sent, to the same names and values (fields unknown
    # to us would be kept as unknown fields and be missing from this dict).
    assert MessageToDict(resp, preserving_proto_field_name=True) == out["dict"]


# --------------------------------------------------------------------------
# Generated gRPC module
# --------------------------------------------------------------------------


class _RecordingChannel:
    """Stands in for grpc.Channel; records which multicallable each RPC uses."""

    def __init__(self) -> None:
        self.calls: dict[str, str] = {}

    def _record(self, kind: str) -> Callable[..., object]:
        def factory(path: str, *args: object, **kwargs: object) -> object:
            self.calls[path] = kind
            return object()

        return factory

    def __getattr__(self, kind: str) -> Callable[..., object]:
        if kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(kind)
        raise AttributeError(kind)


def _expected_kind(method: Any) -> str:
    client = "stream" if method.client_streaming else "unary"
    server = "stream" if method.server_streaming else "unary"
    return f"{client}_{server}"


@pytest.mark.parametrize("service", ["RuntimeService", "ImageService"])
def test_grpc_module_exposes_every_rpc(service: str) -> None:
    svc = api_pb2.DESCRIPTOR.services_by_name[service]
    servicer = getattr(api_pb2_grpc, f"{service}Servicer")
    stub_cls = getattr(api_pb2_grpc, f"{service}Stub")
    add_to_server = getattr(api_pb2_grpc, f"add_{service}Servicer_to_server")
    assert callable(add_to_server)
    assert hasattr(api_pb2_grpc, service)  # the experimental static-call helper class

    channel = _RecordingChannel()
    stub = stub_cls(channel)
    expected = {f"/runtime.v1.{service}/{m.name}": _expected_kind(m) for m in svc.methods}
    assert channel.calls == expected
    for method in svc.methods:
        assert callable(getattr(servicer, method.name)), method.name
        assert hasattr(stub, method.name), method.name


def test_rpc_names_match_the_proto() -> None:
    runtime = {m.name for m in api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].methods}
    image = {m.name for m in api_pb2.DESCRIPTOR.services_by_name["ImageService"].methods}
    assert len(runtime) == 30
    assert len(image) == 5
    assert {"Version", "RunPodSandbox", "CreateContainer", "ExecSync", "Exec", "Attach"} <= runtime
    assert {"GetContainerEvents", "RuntimeConfig", "UpdatePodSandboxResources"} <= runtime
    assert image == {"ListImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"}
    events = api_pb2.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name[
        "GetContainerEvents"
    ]
    assert events.server_streaming and not events.client_streaming


class _Runtime(api_pb2_grpc.RuntimeServiceServicer):  # type: ignore[misc]
    def Version(
        self, request: api_pb2.VersionRequest, context: grpc.ServicerContext
    ) -> api_pb2.VersionResponse:
        return api_pb2.VersionResponse(
            version=request.version, runtime_name="rktlet", runtime_api_version="v1"
        )

    def GetContainerEvents(
        self, request: api_pb2.GetEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[api_pb2.ContainerEventResponse]:
        for i, kind in enumerate(
            [api_pb2.CONTAINER_CREATED_EVENT, api_pb2.CONTAINER_STARTED_EVENT]
        ):
            yield api_pb2.ContainerEventResponse(
                container_id=f"c{i}", container_event_type=kind, created_at=i + 1
            )


@pytest.fixture
def runtime_stub() -> Iterator[api_pb2_grpc.RuntimeServiceStub]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(_Runtime(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        pytest.skip("cannot bind a local TCP port")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield api_pb2_grpc.RuntimeServiceStub(channel)
    finally:
        channel.close()
        stopped: threading.Event = server.stop(grace=None)
        stopped.wait(5)


def test_servicer_serves_unary_streaming_and_unimplemented(
    runtime_stub: api_pb2_grpc.RuntimeServiceStub,
) -> None:
    resp = runtime_stub.Version(api_pb2.VersionRequest(version="0.1.0"), timeout=10)
    assert (resp.version, resp.runtime_name) == ("0.1.0", "rktlet")

    events = list(runtime_stub.GetContainerEvents(api_pb2.GetEventsRequest(), timeout=10))
    assert [e.container_id for e in events] == ["c0", "c1"]
    assert events[1].container_event_type == api_pb2.CONTAINER_STARTED_EVENT

    with pytest.raises(grpc.RpcError) as err:
        runtime_stub.Status(api_pb2.StatusRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
