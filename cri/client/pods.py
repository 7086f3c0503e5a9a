"""``rktlet pod``: create, list, inspect, stop and remove pods (CRI pod sandboxes)."""

from __future__ import annotations

import argparse
import os
import uuid
from typing import TextIO

from cri.api import api_pb2
from cri.client.apps import container_table
from cri.client.common import (
    DEFAULT_LOG_ROOT,
    EXIT_CODES,
    EXIT_OK,
    LOG_DIR_ANNOTATION,
    Client,
    CliError,
    Parser,
    add_verb,
    pairs,
    port_mapping,
    state_name,
)
from cri.client.output import ago, emit, table, to_dict

# -- pod ---------------------------------------------------------------------------------


def pod_create(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    uid = args.uid or str(uuid.uuid4())
    name = args.name
    log_dir = os.path.join(args.log_root, f"{args.namespace}_{name}_{uid}")
    annotations = pairs(args.annotation, "--annotation")
    annotations.setdefault(LOG_DIR_ANNOTATION, log_dir)
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace=args.namespace, uid=uid, attempt=args.attempt
        ),
        hostname=args.hostname if args.hostname is not None else name,
        log_directory=log_dir,
        port_mappings=[port_mapping(p) for p in args.port],
        labels=pairs(args.label, "--label"),
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
            if state_name(api_pb2.PodSandboxState, p.state, "SANDBOX_") == args.state
        ]
    labels = pairs(args.label, "--label")
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
                state_name(api_pb2.PodSandboxState, p.state, "SANDBOX_"),
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
        ["State:", state_name(api_pb2.PodSandboxState, s.state, "SANDBOX_")],
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
        container_table(apps, out, indent="  ")
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


# -- the parser --------------------------------------------------------------------------


def add_parser(nouns: argparse._SubParsersAction[Parser]) -> None:
    """Add the ``pod`` group and its verbs to the client's parser."""
    pod = nouns.add_parser(
        "pod",
        help="create, list, inspect, stop and remove pods",
        description="Pods (CRI pod sandboxes).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    verbs = pod.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    p = add_verb(
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
    p = add_verb(
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
    p = add_verb(
        verbs,
        "status",
        pod_status,
        "show a pod's status and apps",
        "  rktlet pod status web\n  rktlet pod status 3f2a -o yaml\n  rktlet pod status prod/web",
        aliases=["inspect"],
    )
    p.add_argument("pod", metavar="POD", help="pod id, unique id prefix, NAME or NAMESPACE/NAME")
    p.add_argument("-v", "--verbose", action="store_true", help="include the runtime's info")
    p = add_verb(
        verbs, "stop", pod_stop, "stop pods (their apps, network)", "  rktlet pod stop web"
    )
    p.add_argument("pods", nargs="+", metavar="POD")
    p = add_verb(
        verbs,
        "rm",
        pod_rm,
        "remove pods",
        "  rktlet pod rm web\n  rktlet pod rm --force 3f2a 9c1e",
        aliases=["remove"],
    )
    p.add_argument("pods", nargs="+", metavar="POD")
    p.add_argument("-f", "--force", action="store_true", help="also remove a ready pod")
