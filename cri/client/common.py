"""What every verb group of the ``rktlet`` client shares: the CRI connection, exit codes,
argument helpers, and the options each verb takes.

The client talks CRI v1 over a unix socket (``--runtime-endpoint``, env
``RKTLET_ENDPOINT``, default ``/run/rktlet/rktlet.sock``) and so works against any CRI
runtime.  Pods and apps are named by id, a unique id prefix, or name: a pod by
``NAME`` or ``NAMESPACE/NAME``, an app by ``POD/NAME`` (its latest attempt).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import grpc

from cri.api import api_pb2, api_pb2_grpc
from cri.client.output import FORMATS

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


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        where = self.prog.removeprefix("rktlet").strip()
        raise CliError(f"{where}: {message}" if where else message, EXIT_USAGE)


# -- the CRI connection ------------------------------------------------------------------


def socket_path(endpoint: str) -> str:
    return endpoint[len("unix://") :] if endpoint.startswith("unix://") else endpoint


class Client:
    """CRI stubs with one error policy: a gRPC status becomes a :class:`CliError`."""

    def __init__(self, endpoint: str, timeout: float | None) -> None:
        self.path = socket_path(endpoint)
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


def pairs(items: Sequence[str], flag: str) -> dict[str, str]:
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


def port_mapping(item: str) -> api_pb2.PortMapping:
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


def byte_size(value: str) -> int:
    text = value.strip().lower().removesuffix("ib").removesuffix("b")
    unit = text[-1:] if text[-1:] in ("k", "m", "g") else ""
    try:
        number = int(text[: len(text) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a size (BYTES, 64k, 1g)") from None
    return number * _UNITS[unit]


def state_name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower()


# -- the options of every verb ----------------------------------------------------------


def common_options(*, timeout_help: str | None = None) -> Parser:
    """Options every client command takes, after its verb (defaults live on the root)."""
    common = Parser(add_help=False)
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


def add_verb(
    sub: argparse._SubParsersAction[Parser],
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
        parents=[common_options()],
    )
    parser.set_defaults(handler=handler)
    return parser
