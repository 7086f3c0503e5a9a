"""``rktlet app``: add, start, stop, remove, list, inspect, exec into, attach to and read
the logs of apps (CRI containers) in pods.

``app attach`` prefers the pod monitor's attach socket (``--run-dir``) and ``app logs``
reads the container's CRI log file, both on this host; the rest is CRI.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
from typing import Any, TextIO

from cri.api import api_pb2
from cri.client.common import (
    DEFAULT_LOG_ROOT,
    EXIT_CODES,
    EXIT_OK,
    EXIT_USAGE,
    LOG_DIR_ANNOTATION,
    Client,
    CliError,
    Parser,
    add_verb,
    byte_size,
    pairs,
    state_name,
)
from cri.client.output import ago, emit, table, to_dict

# -- app ---------------------------------------------------------------------------------


def container_table(containers: list[Any], out: TextIO, indent: str = "") -> None:
    rows = [["APP ID", "NAME", "IMAGE", "STATE", "CREATED", "ATTEMPT", "POD ID"]]
    rows += [
        [
            c.id[:13],
            c.metadata.name,
            c.image.image or c.image_ref,
            state_name(api_pb2.ContainerState, c.state, "CONTAINER_"),
            ago(c.created_at),
            str(c.metadata.attempt),
            c.pod_sandbox_id[:13],
        ]
        for c in containers
    ]
    buffer = io.StringIO()
    table(rows, buffer)
    out.write("".join(indent + line for line in buffer.getvalue().splitlines(keepends=True)))


def sandbox_config(client: Client, pod: Any) -> api_pb2.PodSandboxConfig:
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
        envs=[api_pb2.KeyValue(key=k, value=v) for k, v in pairs(args.env, "--env").items()],
        labels=pairs(args.label, "--label"),
        annotations=pairs(args.annotation, "--annotation"),
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
        pod_sandbox_id=pod.id, config=config, sandbox_config=sandbox_config(client, pod)
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
            if state_name(api_pb2.ContainerState, c.state, "CONTAINER_") == args.state
        ]
    containers.sort(key=lambda c: c.created_at, reverse=True)
    if args.output != "table":
        emit([to_dict(c) for c in containers], args.output, out)
    elif args.quiet:
        for c in containers:
            print(c.id, file=out)
    else:
        container_table(containers, out)
    return EXIT_OK


def container_status(client: Client, ref: str, verbose: bool = False) -> Any:
    c = client.resolve_container(ref)
    return client.call(
        client.runtime.ContainerStatus,
        api_pb2.ContainerStatusRequest(container_id=c.id, verbose=verbose),
        f"app status {ref}",
    )


def app_status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    reply = container_status(client, args.app, args.verbose)
    if args.output != "table":
        emit(to_dict(reply), args.output, out)
        return EXIT_OK
    s = reply.status
    state = state_name(api_pb2.ContainerState, s.state, "CONTAINER_")
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
        return stream_session(reply.url, stdin=args.stdin, tty=args.tty)
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


def stream_session(url: str, *, stdin: bool, tty: bool) -> int:
    """An interactive exec or attach over the streaming server (SPDY)."""
    from cri.client.stream import run_session

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
    return stream_session(reply.url, stdin=not args.no_stdin, tty=False)


def app_logs(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    status = container_status(client, args.app).status
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


# -- the parser --------------------------------------------------------------------------


def add_parser(nouns: argparse._SubParsersAction[Parser]) -> None:
    """Add the ``app`` group and its verbs to the client's parser."""
    app = nouns.add_parser(
        "app",
        help="add, start, stop, remove, exec into, attach to and read logs of apps",
        description="Apps (CRI containers) in pods.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXIT_CODES,
    )
    verbs = app.add_subparsers(dest="verb", metavar="VERB", required=True, parser_class=Parser)
    p = add_verb(
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
    p.add_argument("--memory", type=byte_size, metavar="BYTES", help="memory limit (64m, 1g...)")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="(repeatable)")
    p.add_argument("--annotation", action="append", default=[], metavar="K=V", help="(repeatable)")
    p.add_argument("--start", action="store_true", help="start the app once created")
    for verb, handler, text in (
        ("start", app_start, "start created apps"),
        ("stop", app_stop, "stop running apps"),
        ("rm", app_rm, "remove apps"),
    ):
        p = add_verb(
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
    p = add_verb(
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
    p = add_verb(
        verbs,
        "status",
        app_status,
        "show an app's status",
        "  rktlet app status web/nginx\n  rktlet app status 5d1c -o json",
        aliases=["inspect"],
    )
    p.add_argument("app", metavar="APP")
    p.add_argument("-v", "--verbose", action="store_true", help="include the runtime's info")
    p = add_verb(
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
    p = add_verb(
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
    p = add_verb(
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
