"""``rktlet pod|app|image``: a CRI client with rkt's app-level verbs.

It talks CRI v1 over a unix socket (``--runtime-endpoint``, env ``RKTLET_ENDPOINT``,
default ``/run/rktlet/rktlet.sock``) and so works against any CRI runtime for the CRI
verbs; ``app attach`` prefers the pod monitor's attach socket (``--run-dir``) and
``app logs`` reads the container's CRI log file, both on this host.

Pods and apps are named by id, a unique id prefix, or name: a pod by ``NAME`` or
``NAMESPACE/NAME``, an app by ``POD/NAME`` (its latest attempt).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import grpc

from cri.api import api_pb2, api_pb2_grpc
from cri.client_output import FORMATS, ago, emit, size, table, to_dict

__all__ = ["is_store_image_command", "main"]

DEFAULT_ENDPOINT = "/run/rktlet/rktlet.sock"
DEFAULT_RUN_DIR = "/run/rktlet"
DEFAULT_LOG_ROOT = "/var/log/pods"
DEFAULT_TIMEOUT = 60.0
#: The annotation ``pod create`` records the pod's log directory in, for ``app add``.
LOG_DIR_ANNOTATION = "rktlet.io/log-directory"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_NOT_FOUND = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}    success ('app exec' exits with the command's own code)
  {EXIT_ERROR}    the runtime refused or failed the request
  {EXIT_USAGE}    bad usage or an invalid argument (ours or the runtime's)
  {EXIT_UNAVAILABLE}    the runtime cannot be reached (no socket, daemon down)
       (an UNAVAILABLE answer of the runtime, e.g. a registry down, is 1)
  {EXIT_NOT_FOUND}    no such pod, app or image, or an ambiguous id prefix
  {EXIT_TIMEOUT}    the request timed out (--timeout)
  {EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""

_GRPC_EXIT = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_USAGE,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_TIMEOUT,
}


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        where = self.prog.removeprefix("rktlet").strip()
        raise CliError(f"{where}: {message}" if where else message, EXIT_USAGE)


# -- the CRI connection ------------------------------------------------------------------


def _socket_path(endpoint: str) -> str:
    return endpoint[len("unix://") :] if endpoint.startswith("unix://") else endpoint


class Client:
    """CRI stubs with one error policy: a gRPC status becomes a :class:`CliError`."""

    def __init__(self, endpoint: str, timeout: float | None) -> None:
        self.path = _socket_path(endpoint)
        self.timeout = timeout
        if not os.path.exists(self.path):
            raise CliError(
                f"--runtime-endpoint: no CRI socket at {self.path} "
                "(is 'rktlet serve' running? set --runtime-endpoint or RKTLET_ENDPOINT)",
                EXIT_UNAVAILABLE,
            )
        self.channel = grpc.insecure_channel(
            f"unix://{self.path}", options=[("grpc.max_receive_message_length", 40 << 20)]
        )
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.images = api_pb2_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def call(
        self, method: Callable[..., Any], request: Any, what: str, timeout: float | None = -1.0
    ) -> Any:
        deadline = self.timeout if timeout is not None and timeout < 0 else timeout
        try:
            return method(request, timeout=deadline)
        except grpc.RpcError as exc:
            code = exc.code()
            details = exc.details() or code.name
            lowered = details.lower()
            if code == grpc.StatusCode.UNAVAILABLE and any(
                sign in lowered for sign in ("failed to connect", "connection refused", "socket")
            ):
                raise CliError(
                    f"{what}: cannot reach the runtime at {self.path}: {details}", EXIT_UNAVAILABLE
                ) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise CliError(
                    f"{what}: no answer within {deadline:g} s (--timeout)", EXIT_TIMEOUT
                ) from None
            if code == grpc.StatusCode.UNAVAILABLE:  # the runtime's answer (e.g. a registry)
                raise CliError(f"{what}: {details} ({code.name})", EXIT_ERROR) from None
            raise CliError(f"{what}: {details} ({code.name})", _GRPC_EXIT.get(code, 1)) from None

    # -- lookups -----------------------------------------------------------------

    def pods(self) -> list[Any]:
        reply = self.call(self.runtime.ListPodSandbox, api_pb2.ListPodSandboxRequest(), "list pods")
        return list(reply.items)

    def containers(self, pod_id: str = "") -> list[Any]:
        request = api_pb2.ListContainersRequest()
        if pod_id:
            request.filter.pod_sandbox_id = pod_id
        return list(self.call(self.runtime.ListContainers, request, "list apps").containers)

    def resolve_pod(self, ref: str, field: str = "POD") -> Any:
        if not ref:
            raise CliError(f"{field}: empty pod id or name", EXIT_USAGE)
        pods = self.pods()
        exact = [p for p in pods if p.id == ref]
        if exact:
            return exact[0]
        namespace, _, name = ref.rpartition("/")
        named = [
            p
            for p in pods
            if p.metadata.name == name and (not namespace or p.metadata.namespace == namespace)
        ]
        by_prefix = [p for p in pods if p.id.startswith(ref)]
        matches = by_prefix or named
        if named and by_prefix and {p.id for p in named} != {p.id for p in by_prefix}:
            matches = named + [p for p in by_prefix if p not in named]
        if not matches:
            raise CliError(f"{field}: no pod with id, id prefix or name {ref!r}", EXIT_NOT_FOUND)
        if len(matches) > 1:
            if named and len({p.metadata.namespace for p in named}) == 1 and not by_prefix:
                # Several attempts of one pod: the newest.
                return max(named, key=lambda p: (p.metadata.attempt, p.created_at))
            listing = ", ".join(
                f"{p.id[:13]} ({p.metadata.namespace}/{p.metadata.name})" for p in matches[:5]
            )
            raise CliError(f"{field}: {ref!r} is ambiguous: {listing}", EXIT_NOT_FOUND)
        return matches[0]

    def resolve_container(self, ref: str, field: str = "APP") -> Any:
        if not ref:
            raise CliError(f"{field}: empty app id or POD/NAME", EXIT_USAGE)
        if "/" in ref:
            pod_ref, _, name = ref.rpartition("/")
            pod = self.resolve_pod(pod_ref, field)
            named = [c for c in self.containers(pod.id) if c.metadata.name == name]
            if named:
                return max(named, key=lambda c: (c.metadata.attempt, c.created_at))
            raise CliError(
                f"{field}: pod {pod.metadata.name} ({pod.id[:13]}) has no app named {name!r}",
                EXIT_NOT_FOUND,
            )
        containers = self.containers()
        exact = [c for c in containers if c.id == ref]
        if exact:
            return exact[0]
        matches = [c for c in containers if c.id.startswith(ref)]
        if not matches:
            raise CliError(
                f"{field}: no app with id or id prefix {ref!r} (name apps as POD/NAME)",
                EXIT_NOT_FOUND,
            )
        if len(matches) > 1:
            listing = ", ".join(f"{c.id[:13]} ({c.metadata.name})" for c in matches[:5])
            raise CliError(f"{field}: {ref!r} is ambiguous: {listing}", EXIT_NOT_FOUND)
        return matches[0]


# -- argument helpers --------------------------------------------------------------------


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag}: {item!r} is not KEY=VALUE", EXIT_USAGE)
        result[key] = value
    return result


_PROTOCOLS: dict[str, Any] = {
    "tcp": api_pb2.Protocol.TCP,
    "udp": api_pb2.Protocol.UDP,
    "sctp": api_pb2.Protocol.SCTP,
}


def _port(item: str) -> api_pb2.PortMapping:
    spec, _, proto = item.partition("/")
    parts = spec.split(":")
    host_ip = ""
    if len(parts) == 3:
        host_ip, host, container = parts
    elif len(parts) == 2:
        host, container = parts
    else:
        raise CliError(f"--port: {item!r} is not [IP:]HOST:CONTAINER[/PROTO]", EXIT_USAGE)
    protocol = _PROTOCOLS.get((proto or "tcp").lower())
    if protocol is None:
        raise CliError(f"--port: {item!r}: protocol must be tcp, udp or sctp", EXIT_USAGE)
    try:
        host_port, container_port = int(host), int(container)
    except ValueError:
        raise CliError(f"--port: {item!r}: ports must be numbers", EXIT_USAGE) from None
    for port in (host_port, container_port):
        if not 0 < port < 65536:
            raise CliError(f"--port: {item!r}: port {port} is out of range", EXIT_USAGE)
    return api_pb2.PortMapping(
        protocol=protocol, container_port=container_port, host_port=host_port, host_ip=host_ip
    )


_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _bytes(value: str) -> int:
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    unit = text[-1:] if text[-1:] in ("k", "m", "g") else ""
    try:
        number = int(text[: len(text) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (BYTES, 64k, 1g)") from None
    return number * _UNITS[unit]


def _state_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


# -- pod ---------------------------------------------------------------------------------


def pod_create(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    uid = args.uid or str(uuid.uuid4())
    name = args.name
    log_dir = os.path.join(args.log_root, f"{args.namespace}_{name}_{uid}")
    annotations = _pairs(args.annotation, "--annotation")
    annotations.setdefault(LOG_DIR_ANNOTATION, log_dir)
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace=args.namespace, uid=uid, attempt=args.attempt
        ),
        hostname=args.hostname if args.hostname is not None else name,
        log_directory=log_dir,
        port_mappings=[_port(p) for p in args.port],
        labels=_pairs(args.label, "--label"),
        annotations=annotations,
        linux=api_pb2.LinuxPodSandboxConfig(),
    )
    if args.host_network:
        config.hostname = ""
        config.linux.security_context.namespace_options.network = api_pb2.NamespaceMode.NODE
    request = api_pb2.RunPodSandboxRequest(config=config, runtime_handler=args.runtime_handler)
    reply = client.call(client.runtime.RunPodSandbox, request, f"pod create {name}", timeout=None)
    print(reply.pod_sandbox_id, file=out)
    return EXIT_OK


def pod_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    pods = client.pods()
    if args.state:
        pods = [
            p
            for p in pods
            if _state_name(api_pb2.PodSandboxState, p.state, "SANDBOX_") == args.state
        ]
    labels = _pairs(args.label, "--label")
    pods = [p for p in pods if all(p.labels.get(k) == v for k, v in labels.items())]
    pods.sort(key=lambda p: p.created_at, reverse=True)
    if args.output != "table":
        emit([to_dict(p) for p in pods], args.output, out)
    elif args.quiet:
        for p in pods:
            print(p.id, file=out)
    else:
        rows = [["POD ID", "NAME", "NAMESPACE", "STATE", "CREATED", "ATTEMPT", "RUNTIME"]]
        rows += [
            [
                p.id[:13],
                p.metadata.name,
                p.metadata.namespace,
                _state_name(api_pb2.PodSandboxState, p.state, "SANDBOX_"),
                ago(p.created_at),
                str(p.metadata.attempt),
                p.runtime_handler or "(default)",
            ]
            for p in pods
        ]
        table(rows, out)
    return EXIT_OK


def pod_status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    pod = client.resolve_pod(args.pod)
    reply = client.call(
        client.runtime.PodSandboxStatus,
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id, verbose=args.verbose),
        f"pod status {args.pod}",
    )
    if args.output != "table":
        emit(to_dict(reply), args.output, out)
        return EXIT_OK
    s = reply.status
    ips = [s.network.ip, *(ip.ip for ip in s.network.additional_ips)]
    rows = [
        ["ID:", s.id],
        ["Name:", s.metadata.name],
        ["Namespace:", s.metadata.namespace],
        ["UID:", s.metadata.uid],
        ["Attempt:", str(s.metadata.attempt)],
        ["State:", _state_name(api_pb2.PodSandboxState, s.state, "SANDBOX_")],
        ["Created:", ago(s.created_at)],
        ["IP:", ", ".join(ip for ip in ips if ip) or "-"],
        ["Runtime:", s.runtime_handler or "(default)"],
        ["Labels:", ", ".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or "-"],
    ]
    for row in rows:
        print(f"{row[0]:<11}{row[1]}", file=out)
    apps = client.containers(pod.id)
    if apps:
        print("Apps:", file=out)
        _container_table(apps, out, indent="  ")
    for key, value in sorted(reply.info.items()):
        print(f"{key}: {value}", file=out)
    return EXIT_OK


def pod_stop(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    for ref in args.pods:
        pod = client.resolve_pod(ref)
        client.call(
            client.runtime.StopPodSandbox,
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod.id),
            f"pod stop {ref}",
            timeout=None,
        )
        print(pod.id, file=out)
    return EXIT_OK


def pod_rm(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    for ref in args.pods:
        pod = client.resolve_pod(ref)
        if pod.state == api_pb2.PodSandboxState.SANDBOX_READY and not args.force:
            raise CliError(
                f"pod rm {ref}: pod {pod.id[:13]} is ready; stop it first or use --force", 1
            )
        client.call(
            client.runtime.RemovePodSandbox,
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod.id),
            f"pod rm {ref}",
            timeout=None,
        )
        print(pod.id, file=out)
    return EXIT_OK


# -- app ---------------------------------------------------------------------------------


def _container_table(containers: list[Any], out: TextIO, indent: str = "") -> None:
    rows = [["APP ID", "NAME", "IMAGE", "STATE", "CREATED", "ATTEMPT", "POD ID"]]
    rows += [
        [
            c.id[:13],
            c.metadata.name,
            c.image.image or c.image_ref,
            _state_name(api_pb2.ContainerState, c.state, "CONTAINER_"),
            ago(c.created_at),
            str(c.metadata.attempt),
            c.pod_sandbox_id[:13],
        ]
        for c in containers
    ]
    buffer = io.StringIO()
    table(rows, buffer)
    out.write("".join(indent + line for line in buffer.getvalue().splitlines(keepends=True)))


def _sandbox_config(client: Client, pod: Any) -> api_pb2.PodSandboxConfig:
    """What CreateContainer needs of the pod, rebuilt from its status."""
    status = client.call(
        client.runtime.PodSandboxStatus,
        api_pb2.PodSandboxStatusRequest(pod_sandbox_id=pod.id),
        "pod status",
    ).status
    m = status.metadata
    log_dir = status.annotations.get(LOG_DIR_ANNOTATION) or os.path.join(
        DEFAULT_LOG_ROOT, f"{m.namespace}_{m.name}_{m.uid}"
    )
    config = api_pb2.PodSandboxConfig(
        metadata=m,
        labels=dict(status.labels),
        annotations=dict(status.annotations),
        log_directory=log_dir,
        linux=api_pb2.LinuxPodSandboxConfig(),
    )
    config.linux.security_context.namespace_options.CopyFrom(status.linux.namespaces.options)
    return config


def app_add(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    pod = client.resolve_pod(args.pod)
    image = args.image
    name = args.name or image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    attempt = args.attempt
    if attempt is None:
        attempt = sum(1 for c in client.containers(pod.id) if c.metadata.name == name)
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=attempt),
        image=api_pb2.ImageSpec(image=image),
        command=args.command,
        working_dir=args.workdir or "",
        envs=[api_pb2.KeyValue(key=k, value=v) for k, v in _pairs(args.env, "--env").items()],
        labels=_pairs(args.label, "--label"),
        annotations=_pairs(args.annotation, "--annotation"),
        log_path=f"{name}/{attempt}.log",
        stdin=args.stdin,
        stdin_once=args.stdin_once,
        tty=args.tty,
        linux=api_pb2.LinuxContainerConfig(),
    )
    security = config.linux.security_context
    if args.user is not None:
        if args.user.isdigit():
            security.run_as_user.value = int(args.user)
        else:
            security.run_as_username = args.user
    security.readonly_rootfs = args.read_only
    if args.memory is not None:
        config.linux.resources.memory_limit_in_bytes = args.memory
    request = api_pb2.CreateContainerRequest(
        pod_sandbox_id=pod.id, config=config, sandbox_config=_sandbox_config(client, pod)
    )
    reply = client.call(
        client.runtime.CreateContainer, request, f"app add {args.pod} {image}", timeout=None
    )
    if args.start:
        client.call(
            client.runtime.StartContainer,
            api_pb2.StartContainerRequest(container_id=reply.container_id),
            f"app start {reply.container_id[:13]}",
        )
    print(reply.container_id, file=out)
    return EXIT_OK


def app_start(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    for ref in args.apps:
        c = client.resolve_container(ref)
        client.call(
            client.runtime.StartContainer,
            api_pb2.StartContainerRequest(container_id=c.id),
            f"app start {ref}",
        )
        print(c.id, file=out)
    return EXIT_OK


def app_stop(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    for ref in args.apps:
        c = client.resolve_container(ref)
        client.call(
            client.runtime.StopContainer,
            api_pb2.StopContainerRequest(container_id=c.id, timeout=args.grace),
            f"app stop {ref}",
            timeout=None,
        )
        print(c.id, file=out)
    return EXIT_OK


def app_rm(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    for ref in args.apps:
        c = client.resolve_container(ref)
        if c.state == api_pb2.ContainerState.CONTAINER_RUNNING:
            if not args.force:
                raise CliError(
                    f"app rm {ref}: app {c.id[:13]} is running; stop it first or use --force", 1
                )
            client.call(
                client.runtime.StopContainer,
                api_pb2.StopContainerRequest(container_id=c.id, timeout=0),
                f"app rm {ref}",
                timeout=None,
            )
        client.call(
            client.runtime.RemoveContainer,
            api_pb2.RemoveContainerRequest(container_id=c.id),
            f"app rm {ref}",
            timeout=None,
        )
        print(c.id, file=out)
    return EXIT_OK


def app_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    pod_id = client.resolve_pod(args.pod).id if args.pod else ""
    containers = client.containers(pod_id)
    if args.state:
        containers = [
            c
            for c in containers
            if _state_name(api_pb2.ContainerState, c.state, "CONTAINER_") == args.state
        ]
    containers.sort(key=lambda c: c.created_at, reverse=True)
    if args.output != "table":
        emit([to_dict(c) for c in containers], args.output, out)
    elif args.quiet:
        for c in containers:
            print(c.id, file=out)
    else:
        _container_table(containers, out)
    return EXIT_OK


def _container_status(client: Client, ref: str, verbose: bool = False) -> Any:
    c = client.resolve_container(ref)
    return client.call(
        client.runtime.ContainerStatus,
        api_pb2.ContainerStatusRequest(container_id=c.id, verbose=verbose),
        f"app status {ref}",
    )


def app_status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    reply = _container_status(client, args.app, args.verbose)
    if args.output != "table":
        emit(to_dict(reply), args.output, out)
        return EXIT_OK
    s = reply.status
    state = _state_name(api_pb2.ContainerState, s.state, "CONTAINER_")
    rows = [
        ["ID:", s.id],
        ["Name:", s.metadata.name],
        ["Attempt:", str(s.metadata.attempt)],
        ["State:", state],
        ["Image:", s.image.image],
        ["Image ref:", s.image_ref],
        ["Created:", ago(s.created_at)],
        ["Started:", ago(s.started_at)],
    ]
    if s.state == api_pb2.ContainerState.CONTAINER_EXITED:
        rows += [["Finished:", ago(s.finished_at)], ["Exit code:", str(s.exit_code)]]
        if s.reason:
            rows.append(["Reason:", s.reason])
        if s.message:
            rows.append(["Message:", s.message])
    rows.append(["Log path:", s.log_path or "-"])
    for row in rows:
        print(f"{row[0]:<11}{row[1]}", file=out)
    for key, value in sorted(reply.info.items()):
        print(f"{key}: {value}", file=out)
    return EXIT_OK


def app_exec(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    if not args.command:
        raise CliError("app exec: COMMAND: give the command after '--'", EXIT_USAGE)
    c = client.resolve_container(args.app)
    if args.stdin or args.tty:
        reply = client.call(
            client.runtime.Exec,
            api_pb2.ExecRequest(
                container_id=c.id,
                cmd=args.command,
                tty=args.tty,
                stdin=args.stdin,
                stdout=True,
                stderr=not args.tty,
            ),
            f"app exec {args.app}",
        )
        return _stream_session(reply.url, stdin=args.stdin, tty=args.tty)
    timeout = args.exec_timeout
    reply = client.call(
        client.runtime.ExecSync,
        api_pb2.ExecSyncRequest(container_id=c.id, cmd=args.command, timeout=timeout),
        f"app exec {args.app}",
        timeout=None if not timeout else timeout + 10,
    )
    out.flush()
    sys.stdout.buffer.write(reply.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(reply.stderr)
    sys.stderr.buffer.flush()
    return int(reply.exit_code)


def _stream_session(url: str, *, stdin: bool, tty: bool) -> int:
    """An interactive exec or attach over the streaming server (SPDY)."""
    from cri.client_stream import run_session

    return asyncio.run(run_session(url, stdin=stdin, tty=tty))


def app_attach(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    c = client.resolve_container(args.app)
    pods_dir = os.path.join(args.run_dir, "pods")
    socket = os.path.join(pods_dir, c.pod_sandbox_id, "apps", c.id, "attach.sock")
    if os.path.exists(socket) and not args.cri:
        from iottymux import attach_cmd

        argv = ["--run-root", pods_dir, f"{c.pod_sandbox_id}/{c.id}"]
        if args.no_stdin:
            argv.append("--no-stdin")
        if args.replay:
            argv.append("--replay")
        if args.detach_keys is not None:
            argv += ["--detach-keys", args.detach_keys]
        return attach_cmd.main(argv)
    reply = client.call(
        client.runtime.Attach,
        api_pb2.AttachRequest(
            container_id=c.id,
            stdin=not args.no_stdin,
            tty=False,
            stdout=True,
            stderr=True,
        ),
        f"app attach {args.app}",
    )
    return _stream_session(reply.url, stdin=not args.no_stdin, tty=False)


def app_logs(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    status = _container_status(client, args.app).status
    if not status.log_path:
        raise CliError(f"app logs {args.app}: the app has no log path (no log_directory)", 1)
    from iottymux import logs_cmd

    argv = [status.log_path]
    if args.follow:
        argv.append("--follow")
    if args.tail is not None:
        argv += ["--tail", str(args.tail)]
    if args.since:
        argv += ["--since", args.since]
    if args.timestamps:
        argv.append("--timestamps")
    if args.stream != "all":
        argv += ["--stream", args.stream]
    if args.limit_bytes is not None:
        argv += ["--limit-bytes", str(args.limit_bytes)]
    out.flush()
    return logs_cmd.main(argv)


# -- image -------------------------------------------------------------------------------


class _Spinner:
    """An elapsed-time spinner on a terminal while a call with no progress runs."""

    FRAMES = "|/-\\"

    def __init__(self, label: str, err: TextIO) -> None:
        self.label = label
        self.err = err
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Spinner:
        if self.err.isatty():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            elapsed = time.monotonic() - self.started
            self.err.write(f"\r{self.FRAMES[frame % 4]} {self.label}  {elapsed:.1f}s\x1b[K")
            self.err.flush()
            frame += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.err.write("\r\x1b[K")
            self.err.flush()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def image_pull(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    auth = api_pb2.AuthConfig()
    if args.creds:
        username, sep, password = args.creds.partition(":")
        if not sep:
            import getpass

            password = getpass.getpass(f"password for {username}: ")
        auth.username, auth.password = username, password
    request = api_pb2.PullImageRequest(image=api_pb2.ImageSpec(image=args.image), auth=auth)
    deadline = args.timeout  # None: no deadline for pulls unless --timeout is given
    with _Spinner(f"pulling {args.image}", sys.stderr) as spinner:
        reply = client.call(client.images.PullImage, request, f"image pull {args.image}", deadline)
    if not args.quiet:
        print(f"pulled {args.image} in {spinner.elapsed:.1f}s", file=sys.stderr)
    print(reply.image_ref, file=out)
    return EXIT_OK


def image_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    request = api_pb2.ListImagesRequest()
    if args.filter:
        request.filter.image.image = args.filter
    images = list(client.call(client.images.ListImages, request, "image list").images)
    if args.output != "table":
        emit([to_dict(i) for i in images], args.output, out)
        return EXIT_OK
    if args.quiet:
        for i in images:
            print(i.id, file=out)
        return EXIT_OK
    rows = [["IMAGE", "TAG", "IMAGE ID", "SIZE"]]
    for i in images:
        for name in list(i.repo_tags) or ["<none>:<none>"]:
            repo, _, tag = name.rpartition(":")
            rows.append([repo, tag, i.id.split(":", 1)[-1][:13], size(i.size)])
    table(rows, out)
    return EXIT_OK


def image_rm(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    status = EXIT_OK
    for ref in args.images:
        reply = client.call(
            client.images.ImageStatus,
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)),
            f"image rm {ref}",
        )
        if not reply.image.id:
            print(f"rktlet image rm: IMAGE: no such image: {ref}", file=sys.stderr)
            status = EXIT_NOT_FOUND
            continue
        client.call(
            client.images.RemoveImage,
            api_pb2.RemoveImageRequest(image=api_pb2.ImageSpec(image=ref)),
            f"image rm {ref}",
        )
        print(f"removed {ref}", file=out)
    return status


# -- the parser --------------------------------------------------------------------------


def _common(*, timeout_help: str | None = None) -> _Parser:
    """Options every client command takes, after its verb (defaults live on the root)."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection and output")
    group.add_argument(
        "--runtime-endpoint",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help=f"CRI socket, a path or unix:// URL (env RKTLET_ENDPOINT; default {DEFAULT_ENDPOINT})",
    )
    group.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=argparse.SUPPRESS,
        help=timeout_help or f"deadline of each CRI call (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=argparse.SUPPRESS,
        help="table (default), json or yaml",
    )
    group.add_argument(
        "--run-dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=f"the daemon's run directory, for attach sockets (default {DEFAULT_RUN_DIR})",
    )
    return common


def _add(
    sub: argparse._SubParsersAction[_Parser],
    name: str,
    handler: Callable[[Client, argparse.Namespace, TextIO], int],
    help_: str,
    examples: str,
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        aliases=list(aliases),
        help=help_,
        description=help_[0].upper() + help_[1:] + ".",
        epilog="examples:\n" + examples + "\n\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_common()],
    )
    parser.set_defaults(handler=handler)
    return parser


def build_parser() -> argparse.ArgumentParser:
    root = _Parser(
        prog="rktlet",
        description="A CRI client with rkt's app-level verbs (pods and their apps).",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.add_argument("--runtime-endpoint", default=None, help=argparse.SUPPRESS)
    root.add_argument("--timeout", type=float, default=None, help=argparse.SUPPRESS)
    root.add_argument("-o", "--output", choices=FORMATS, default="table", help=argparse.SUPPRESS)
    root.add_argument("--run-dir", default=DEFAULT_RUN_DIR, help=argparse.SUPPRESS)
    nouns = root.add_subparsers(dest="noun", metavar="NOUN", required=True, parser_class=_Parser)

    # pod
    pod = nouns.add_parser(
        "pod",
        help="create, list, inspect, stop and remove pods",
        description="Pods (CRI pod sandboxes).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    verbs = pod.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)
    p = _add(
        verbs,
        "create",
        pod_create,
        "create and start a pod; print its id",
        "  rktlet pod create --name web\n"
        "  rktlet pod create --name web --namespace prod --port 8080:80 --label app=web\n"
        "  rktlet pod create --name tools --host-network",
    )
    p.add_argument("--name", required=True, help="the pod's name (metadata.name)")
    p.add_argument("--namespace", default="default", help="its namespace (default 'default')")
    p.add_argument("--uid", default="", help="its uid (default: a random UUID)")
    p.add_argument("--attempt", type=int, default=0, help="its attempt number (default 0)")
    p.add_argument("--hostname", help="the pod's hostname (default: its name)")
    p.add_argument(
        "--port",
        action="append",
        default=[],
        metavar="[IP:]HOST:CONTAINER[/PROTO]",
        help="publish a port, e.g. 8080:80 or 5353:53/udp (repeatable)",
    )
    p.add_argument("--host-network", action="store_true", help="use the host's network")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="(repeatable)")
    p.add_argument("--annotation", action="append", default=[], metavar="K=V", help="(repeatable)")
    p.add_argument("--runtime-handler", default="", help="a CRI runtime handler of the daemon")
    p.add_argument(
        "--log-root",
        default=DEFAULT_LOG_ROOT,
        metavar="DIR",
        help=f"apps log under DIR/<ns>_<name>_<uid> (default {DEFAULT_LOG_ROOT})",
    )
    p = _add(
        verbs,
        "list",
        pod_list,
        "list pods",
        "  rktlet pod list\n  rktlet pod list --state ready -o json\n  rktlet pod list -q",
        aliases=["ls"],
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only pod ids")
    p.add_argument("--state", choices=("ready", "notready"), help="only pods in this state")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="(repeatable)")
    p = _add(
        verbs,
        "status",
        pod_status,
        "show a pod's status and apps",
        "  rktlet pod status web\n  rktlet pod status 3f2a -o yaml\n  rktlet pod status prod/web",
        aliases=["inspect"],
    )
    p.add_argument("pod", metavar="POD", help="pod id, unique id prefix, NAME or NAMESPACE/NAME")
    p.add_argument("-v", "--verbose", action="store_true", help="include the runtime's info")
    p = _add(verbs, "stop", pod_stop, "stop pods (their apps, network)", "  rktlet pod stop web")
    p.add_argument("pods", nargs="+", metavar="POD")
    p = _add(
        verbs,
        "rm",
        pod_rm,
        "remove pods",
        "  rktlet pod rm web\n  rktlet pod rm --force 3f2a 9c1e",
        aliases=["remove"],
    )
    p.add_argument("pods", nargs="+", metavar="POD")
    p.add_argument("-f", "--force", action="store_true", help="also remove a ready pod")

    # app
    app = nouns.add_parser(
        "app",
        help="add, start, stop, remove, exec into, attach to and read logs of apps",
        description="Apps (CRI containers) in pods.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    verbs = app.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)
    p = _add(
        verbs,
        "add",
        app_add,
        "create an app in a pod; print its id",
        "  rktlet app add web docker.io/library/nginx:latest --name nginx --start\n"
        "  rktlet app add web busybox --name sh -it -- sh\n"
        "  rktlet app add web busybox --env A=1 --memory 64m -- sh -c 'echo $A'",
    )
    p.add_argument("pod", metavar="POD")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs="*", metavar="CMD", help="command and args (after '--')")
    p.add_argument("--name", help="the app's name (default: from the image)")
    p.add_argument("--attempt", type=int, help="attempt number (default: next for the name)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="(repeatable)")
    p.add_argument("--workdir", help="working directory")
    p.add_argument("-t", "--tty", action="store_true", help="give the app a terminal")
    p.add_argument("-i", "--stdin", action="store_true", help="keep the app's stdin open")
    p.add_argument(
        "--stdin-once", action="store_true", help="close stdin when the first attacher leaves"
    )
    p.add_argument("--user", metavar="UID|NAME", help="run as this user")
    p.add_argument("--read-only", action="store_true", help="read-only root filesystem")
    p.add_argument("--memory", type=_bytes, metavar="BYTES", help="memory limit (64m, 1g...)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="(repeatable)")
    p.add_argument("--annotation", action="append", default=[], metavar="K=V", help="(repeatable)")
    p.add_argument("--start", action="store_true", help="start the app once created")
    for verb, handler, text in (
        ("start", app_start, "start created apps"),
        ("stop", app_stop, "stop running apps"),
        ("rm", app_rm, "remove apps"),
    ):
        p = _add(
            verbs,
            verb,
            handler,
            text,
            f"  rktlet app {verb} web/nginx\n  rktlet app {verb} 5d1c",
            aliases=["remove"] if verb == "rm" else (),
        )
        p.add_argument("apps", nargs="+", metavar="APP", help="app id, unique prefix or POD/NAME")
        if verb == "stop":
            p.add_argument(
                "--grace",
                type=int,
                default=10,
                metavar="SECONDS",
                help="time between the stop signal and SIGKILL (default 10)",
            )
        if verb == "rm":
            p.add_argument("-f", "--force", action="store_true", help="stop a running app first")
    p = _add(
        verbs,
        "list",
        app_list,
        "list apps, of one pod or all",
        "  rktlet app list\n  rktlet app list web --state running\n  rktlet app list -o json",
        aliases=["ls"],
    )
    p.add_argument("pod", nargs="?", metavar="POD", help="only this pod's apps")
    p.add_argument("-q", "--quiet", action="store_true", help="print only app ids")
    p.add_argument(
        "--state", choices=("created", "running", "exited", "unknown"), help="only this state"
    )
    p = _add(
        verbs,
        "status",
        app_status,
        "show an app's status",
        "  rktlet app status web/nginx\n  rktlet app status 5d1c -o json",
        aliases=["inspect"],
    )
    p.add_argument("app", metavar="APP")
    p.add_argument("-v", "--verbose", action="store_true", help="include the runtime's info")
    p = _add(
        verbs,
        "exec",
        app_exec,
        "run a command in an app",
        "  rktlet app exec web/nginx -- nginx -v\n"
        "  rktlet app exec 5d1c -it -- sh\n"
        "  echo data | rktlet app exec web/sh -i -- cat",
    )
    p.add_argument("app", metavar="APP")
    p.add_argument("command", nargs="*", metavar="CMD", help="command and args (after '--')")
    p.add_argument("-i", "--stdin", action="store_true", help="pass our stdin (streaming exec)")
    p.add_argument("-t", "--tty", action="store_true", help="a terminal (streaming exec)")
    p.add_argument(
        "--exec-timeout",
        type=int,
        default=0,
        metavar="SECONDS",
        help="kill the command after SECONDS (ExecSync; default none)",
    )
    p = _add(
        verbs,
        "attach",
        app_attach,
        "attach to an app's stdio or terminal",
        "  rktlet app attach web/sh\n"
        "  rktlet app attach 5d1c --no-stdin --replay\n"
        "  rktlet app attach web/sh --cri   # through the CRI streaming server",
    )
    p.add_argument("app", metavar="APP")
    p.add_argument("--no-stdin", action="store_true", help="only watch the output")
    p.add_argument("--replay", action="store_true", help="first show recent output")
    p.add_argument("--detach-keys", metavar="KEYS", help="detach sequence (default ctrl-p,ctrl-q)")
    p.add_argument(
        "--cri", action="store_true", help="use the CRI Attach URL, not the attach socket"
    )
    p = _add(
        verbs,
        "logs",
        app_logs,
        "print an app's logs (its CRI log file)",
        "  rktlet app logs web/nginx\n  rktlet app logs 5d1c -f --tail 20\n"
        "  rktlet app logs web/nginx --since 10m -t",
    )
    p.add_argument("app", metavar="APP")
    p.add_argument("-f", "--follow", action="store_true", help="keep reading new lines")
    p.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    p.add_argument("--since", metavar="WHEN", help="from WHEN on (10m, 1h30s, RFC 3339)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show timestamps")
    p.add_argument("--stream", choices=("stdout", "stderr", "all"), default="all")
    p.add_argument("--limit-bytes", type=int, metavar="N", help="stop after N bytes")

    # image
    image = nouns.add_parser(
        "image",
        help="pull, list and remove images through CRI ('import' works on the store)",
        description=(
            "Images through the CRI ImageService.  'rktlet image import FILE' and any "
            "'rktlet image --root DIR ...' work on the local store instead (no daemon)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    verbs = image.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=_Parser)
    p = _add(
        verbs,
        "pull",
        image_pull,
        "pull an image; print its reference",
        "  rktlet image pull docker.io/library/busybox:latest\n"
        "  rktlet image pull registry.example/app:1 --creds me",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--creds", metavar="USER[:PASSWORD]", help="registry credentials")
    p.add_argument("-q", "--quiet", action="store_true", help="no timing on stderr")
    p = _add(
        verbs,
        "list",
        image_list,
        "list images",
        "  rktlet image list\n  rktlet image list -q\n  rktlet image list -o yaml",
        aliases=["ls"],
    )
    p.add_argument("filter", nargs="?", default="", help="only this image")
    p.add_argument("-q", "--quiet", action="store_true", help="print only image ids")
    p = _add(
        verbs,
        "rm",
        image_rm,
        "remove images",
        "  rktlet image rm docker.io/library/busybox:latest",
        aliases=["remove"],
    )
    p.add_argument("images", nargs="+", metavar="IMAGE")
    return root


def is_store_image_command(argv: Sequence[str]) -> bool:
    """Whether ``rktlet image ARGS`` is a store command (:mod:`cri.image_cmd`)."""
    for arg in argv:
        if arg in ("--root", "--config") or arg.startswith(("--root=", "--config=")):
            return True
        if not arg.startswith("-"):
            return arg == "import"
    return False


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Run ``rktlet pod|app|image ...`` (``argv`` starts with the noun)."""
    out = out or sys.stdout
    client: Client | None = None
    try:
        words, trailing = list(argv), None
        if "--" in words:  # argparse 3.11 mishandles '--' inside subcommands: split here
            cut = words.index("--")
            words, trailing = words[:cut], words[cut + 1 :]
        args = build_parser().parse_args(words)
        if trailing is not None:
            if not hasattr(args, "command"):
                raise CliError("'--' only introduces the command of 'app add' and 'app exec'", 2)
            args.command = [*args.command, *trailing]
        endpoint = args.runtime_endpoint or os.environ.get("RKTLET_ENDPOINT") or DEFAULT_ENDPOINT
        timeout = args.timeout
        if timeout is not None and timeout <= 0:
            raise CliError("--timeout: must be positive", EXIT_USAGE)
        client = Client(endpoint, timeout or DEFAULT_TIMEOUT)
        result: int = args.handler(client, args, out)
        return result
    except CliError as exc:
        print(f"rktlet: {exc}", file=sys.stderr)
        return exc.code
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        if client is not None:
            client.close()
