"""``iottymux logs``: read CRI container logs on a node, with no API server or daemon.

Targets are resolved here: files and kubelet directories directly, container ids
through a running rktlet, and pod patterns, namespaces and label selectors through
:mod:`iottymux.logselect` and (following) :mod:`iottymux.logdiscover`.  Reading is
:mod:`iottymux.logreader` (following: :mod:`iottymux.logfollow`); filters are
:mod:`iottymux.logfilter`; formats are :mod:`iottymux.logoutput`.  Lines travel as
runs (lines sharing stream and timestamp) from the file to the output, so a whole
file is printed with bytes operations over blocks, not a Python step per line.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from types import FrameType
from typing import IO, TYPE_CHECKING, Final

from iottymux.logfiles import LogReadError, MalformedLine, ReadStats
from iottymux.logfilter import Highlighter, LineFilter
from iottymux.logfollow import DEFAULT_MAX_OPEN, FollowGroup, source_key
from iottymux.logformat import STDERR, STDOUT
from iottymux.loglines import LineRun, LogLine
from iottymux.logoutput import (
    HIGHLIGHT,
    RESET,
    Formatter,
    JsonFormatter,
    Labeller,
    RawFormatter,
    TemplateError,
    TemplateFormatter,
)
from iottymux.logreader import ReadOptions, SourceReader, merge_lines, merge_runs
from iottymux.logsegments import LogSource, SourceInfo, classify_segment
from iottymux.logselect import DaemonUnavailable
from iottymux.logtime import parse_duration, parse_time_arg

if TYPE_CHECKING:
    from iottymux.logdiscover import NodeDiscovery
    from iottymux.logselect import DaemonPods, Selection

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_DAEMON: Final = 3

DEFAULT_LOG_ROOT: Final = "/var/log/pods"
DEFAULT_RKTLET_SOCKET: Final = "/run/rktlet/rktlet.sock"
#: Forward read size when many containers are read side by side.
MANY_SOURCES_BLOCK: Final = 64 << 10
#: Output is written in pieces of at least this size.
WRITE_CHUNK: Final = 64 << 10
#: The capacity asked for a pipe on standard output (Linux's limit for anyone is 1 MiB).
PIPE_CAPACITY: Final = 1 << 20
#: Malformed lines reported one by one before only a count is kept.
MAX_REPORTED: Final = 100

DESCRIPTION = """\
Read CRI container logs (the kubelet's /var/log/pods layout) straight from the files.
Unlike the kubelet's reader it reads rotated and gzipped files, counts --tail in whole
lines (P pieces merged), tracks partial lines per stream, and follows a log across the
kubelet's rotations without losing or repeating a line."""

EPILOG = """\
targets:
  FILE                   a CRI log file (N.log, or a rotated N.log.<time>[.gz])
  CONTAINER_DIR          .../<ns>_<pod>_<uid>/<container>/: its newest N.log
  POD_DIR                .../<ns>_<pod>_<uid>/: every container, merged by time
  NAMESPACE/POD[/CTR]    pods under --log-root whose name matches the regular
                         expression POD (whole name: web-.* for a deployment's
                         pods), and their containers matching CTR; an existing
                         path of that name wins; newest pod uid of each name
  POD                    with -n/--all-namespaces: a POD regular expression
  CONTAINER_ID_OR_NAME   without -n: asked of a running rktlet daemon
  (none)                 with -n, -A, -l or -c: every pod they select

selection (under --log-root; all regular expressions match whole names):
  -n NS (repeatable) and -A choose namespaces for POD and target-less selections;
  -c/--exclude-container filter every pod's containers; -l filters pods by labels
  (k=v, k!=v, k in (a,b), k notin (a), k, !k), asking a running rktlet for them.

--follow keeps reading until interrupted (SIGINT/SIGTERM end it cleanly, exit 0).
It crosses rotations and container restarts (N.log -> N+1.log), and with a
selection it picks up pods and containers created later (from their first line);
a selection that matches nothing yet waits.  Restarts, new containers and removed
pods are one-line notices on stderr.  Lines of several containers come out in time
order within --merge-window.  At most --max-open-files followed files are open at
once: idle ones are closed and reopened where they were when they change.

lines and output:
  --include/--exclude RE (repeatable) keep lines matching any --include and no
  --exclude (bytes regular expressions, searched in each whole line); --highlight
  RE marks matches when colours are on.  Prefix colours are a hash of the pod and
  container names: the same on every run and node.  NO_COLOR turns them off.
  --output template --template '{pod} {container} {line}' (fields: namespace, pod,
  container, stream, time, line; str.format syntax; a newline is added).

exit codes:
  0  success; malformed lines, if any, were reported on stderr and skipped.
     Also when --follow is interrupted or the output is closed.
  1  a target does not exist, cannot be read, or holds no CRI logs; nothing
     matches a selection (without --follow)
  2  usage error (unknown option, bad duration, time, pattern or template)
  3  a container id or name, or -l, needs a rktlet daemon and none answered
"""


def resolve_via_daemon(name: str, socket_path: str) -> list[LogSource]:
    """The log of a container id (or unique prefix) or name, asked of a running rktlet.

    The CRI client (grpc) is imported only here: reading files needs no daemon and no
    third-party package.
    """
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(2.0)
            conn.connect(socket_path)
    except OSError:
        raise DaemonUnavailable(f"no rktlet daemon at {socket_path}") from None
    try:
        import grpc

        from cri.api import api_pb2, api_pb2_grpc
    except ImportError as exc:
        raise DaemonUnavailable(f"cannot ask the daemon: {exc}") from None
    with grpc.insecure_channel(f"unix://{socket_path}") as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        try:
            containers = stub.ListContainers(api_pb2.ListContainersRequest(), timeout=10)
            matches = [
                c for c in containers.containers if c.id.startswith(name) or c.metadata.name == name
            ]
            if len(matches) > 1:
                exact = [c for c in matches if c.id == name]
                matches = exact or matches
            if not matches:
                raise DaemonUnavailable(f"the rktlet daemon knows no container {name!r}")
            if len(matches) > 1:
                ids = ", ".join(c.id[:12] for c in matches)
                raise DaemonUnavailable(f"{name!r} names several containers: {ids}")
            container = matches[0]
            status = stub.ContainerStatus(
                api_pb2.ContainerStatusRequest(container_id=container.id), timeout=10
            ).status
        except grpc.RpcError as exc:
            raise DaemonUnavailable(
                f"the rktlet daemon at {socket_path}: {exc.details()}"
            ) from None
    if not status.log_path:
        raise DaemonUnavailable(f"container {container.id[:12]} has no log file")
    label = container.metadata.name or container.id[:12]
    source = LogSource.for_file(status.log_path, SourceInfo(label=label, container=label))
    DAEMON_SOURCES[source_key(source)] = (socket_path, container.id)
    return [source]


#: Sources a daemon resolved: log file -> (socket, container id), so that ``-f``
#: can stop once the daemon says the container has exited, as the kubelet's does.
DAEMON_SOURCES: dict[str, tuple[str, str]] = {}


def exit_watcher(sources: Sequence[LogSource], period: float = 1.0) -> Callable[[], bool] | None:
    """A ``should_stop`` for follow: true once every container has exited.

    Only when every source came from the daemon: a plain file says nothing about
    whether its writer is still alive.
    """
    keys = [source_key(source) for source in sources]
    if not keys or any(key not in DAEMON_SOURCES for key in keys):
        return None
    watched = [DAEMON_SOURCES[key] for key in keys]
    last_check = 0.0

    def all_exited() -> bool:
        nonlocal last_check
        now = time.monotonic()
        if now - last_check < period:
            return False
        last_check = now
        import grpc

        from cri.api import api_pb2, api_pb2_grpc

        for socket_path, container_id in watched:
            try:
                with grpc.insecure_channel(f"unix://{socket_path}") as channel:
                    status = (
                        api_pb2_grpc.RuntimeServiceStub(channel)
                        .ContainerStatus(
                            api_pb2.ContainerStatusRequest(container_id=container_id), timeout=5
                        )
                        .status
                    )
            except grpc.RpcError as exc:
                # Like the kubelet: a daemon that is away does not end the follow;
                # a container that is gone does.
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    continue
                return False
            if status.state != api_pb2.ContainerState.CONTAINER_EXITED:
                return False
        return True

    return all_exited


def _has_restart_logs(directory: str) -> bool:
    try:
        return any(classify_segment(entry, None) for entry in os.listdir(directory))
    except OSError:
        return False


def _is_pod_dir_name(name: str) -> bool:
    parts = name.split("_")
    return len(parts) == 3 and all(parts)


def _sources_in_dir(directory: str) -> list[LogSource]:
    directory = os.path.realpath(directory)
    if _has_restart_logs(directory):
        return [LogSource.for_container_dir(directory)]
    subdirs = sorted(
        entry.path for entry in os.scandir(directory) if entry.is_dir(follow_symlinks=False)
    )
    pod_like = _is_pod_dir_name(os.path.basename(directory))
    containers = [path for path in subdirs if pod_like or _has_restart_logs(path)]
    if containers:
        return [LogSource.for_container_dir(path) for path in containers]
    files = sorted(
        entry.path
        for entry in os.scandir(directory)
        if entry.is_file() and entry.name.endswith(".log")
    )
    if files:
        return [LogSource.for_file(path) for path in files]
    raise LogReadError(f"{directory}: no CRI logs here")


def resolve_target(target: str, socket_path: str) -> list[LogSource] | None:
    """The log sources a path or container id names, or None for a pod pattern."""
    if os.path.isfile(target):
        if not os.access(target, os.R_OK):
            raise LogReadError(f"{target}: permission denied")
        return [LogSource.for_file(target)]
    if os.path.isdir(target):
        return _sources_in_dir(target)
    if target.startswith(("/", ".")):
        raise LogReadError(f"{target}: no such file or directory")
    if "/" in target:
        return None
    return resolve_via_daemon(target, socket_path)


class UsageError(ValueError):
    """A command line that cannot be carried out as given (exit 2)."""


class Targets:
    """What the command line names: fixed sources, and a selection under the log root."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.sources: list[LogSource] = []
        self.log_root = args.log_root
        patterns: list[str] = []
        bare: list[str] = []
        scoped = bool(args.namespace or args.all_namespaces)
        for target in args.targets:
            if scoped and "/" not in target and not os.path.exists(target):
                bare.append(target)
                continue
            found = resolve_target(target, args.rktlet_socket)
            if found is None:
                patterns.append(target)
            else:
                self.sources += found
        wanted = patterns or bare or scoped or args.selector is not None
        wanted = wanted or args.container is not None or args.exclude_container is not None
        self.selection: Selection | None = None
        self.pods: DaemonPods | None = None
        self.discovery: NodeDiscovery | None = None
        if not wanted:
            return
        # Only a selection needs these (and its label lookups, the daemon).
        from iottymux.logdiscover import NodeDiscovery
        from iottymux.logselect import DaemonPods, Selection, SelectionError

        try:
            self.selection = Selection.build(
                namespaces=args.namespace or (),
                all_namespaces=args.all_namespaces,
                patterns=patterns,
                bare_pods=bare,
                container=args.container,
                exclude_container=args.exclude_container,
                selector=args.selector,
            )
        except SelectionError as exc:
            raise UsageError(str(exc)) from None
        if args.selector is not None:
            self.pods = DaemonPods(args.rktlet_socket)
        lookup = self.pods.labels if self.pods is not None else None
        self.discovery = NodeDiscovery(self.log_root, self.selection, lookup)

    def one_container(self) -> bool:
        """A single ``NS/POD/CTR`` with plain names: its lines need no prefix."""
        selection = self.selection
        if selection is None or self.sources or len(selection.patterns) != 1:
            return False
        pattern = selection.patterns[0]
        return (
            pattern.namespace is not None
            and pattern.container is not None
            and _plain(pattern.pod.pattern)
            and _plain(pattern.container.pattern)
        )

    def one_pod(self) -> bool:
        selection = self.selection
        if selection is None or len(selection.patterns) != 1 or selection.labels is not None:
            return False
        pattern = selection.patterns[0]
        return pattern.namespace is not None and _plain(pattern.pod.pattern)

    def scan(self) -> list[LogSource]:
        """Everything to read once; raises LogReadError for a pattern matching nothing."""
        if self.discovery is None:
            return list(self.sources)
        found = self.discovery.scan()
        self._check_patterns(found)
        if not found and not self.sources:
            assert self.selection is not None
            raise LogReadError(f"nothing matches {self.selection.describe()} under {self.log_root}")
        return self.sources + found

    def _check_patterns(self, found: Sequence[LogSource]) -> None:
        assert self.selection is not None
        for pattern in self.selection.patterns:
            if pattern.namespace is None:
                continue
            pods = [
                s
                for s in found
                if s.info.namespace == pattern.namespace
                and s.info.pod is not None
                and pattern.pod.fullmatch(s.info.pod)
            ]
            if pods:
                continue
            from iottymux.logselect import newest_per_pod
            from iottymux.logselect import pod_dirs as all_pod_dirs

            pod_dirs = [
                pod
                for pod in newest_per_pod(all_pod_dirs(self.log_root))
                if pod.namespace == pattern.namespace and pattern.pod.fullmatch(pod.pod)
            ]
            if pod_dirs and pattern.container is not None:
                raise LogReadError(
                    f"{pattern.text}: pod has no container {pattern.container.pattern!r} "
                    f"in {pod_dirs[0].path}"
                )
            if not pod_dirs:
                raise LogReadError(
                    f"{pattern.text}: no such file, directory or pod under {self.log_root}"
                )

    def close(self) -> None:
        if self.pods is not None:
            self.pods.close()


def _plain(pattern: str) -> bool:
    """A name with no regular-expression syntax in it (matches itself only)."""
    return _REGEX_SYNTAX.search(pattern) is None


_REGEX_SYNTAX: Final = re.compile(r"[.^$*+?{}\[\]\\|()]")


class Output:
    """Filters and formats runs of lines, and writes them in large chunks.

    Honours ``--limit-bytes`` (counted on what is written).
    """

    def __init__(
        self,
        out: IO[bytes],
        formatter: Formatter,
        *,
        line_filter: LineFilter | None = None,
        limit_bytes: int | None = None,
    ) -> None:
        self.out = out
        self.formatter = formatter
        self.line_filter = line_filter if line_filter is not None and line_filter.active else None
        self.remaining = limit_bytes
        self.stopped = False
        self._buffer: list[bytes] = []
        self._buffered = 0

    def runs(self, runs: Iterable[LineRun]) -> bool:
        """Write ``runs``; False once ``--limit-bytes`` is reached."""
        fmt = self.formatter.run
        keep = self.line_filter
        for run in runs:
            if keep is not None:
                data, count = keep.apply(run.data, run.count)
                if not count:
                    continue
                if count != run.count:
                    run = run.with_data(data, count)
            if not self.raw(fmt(run)):
                return False
        return True

    def lines(self, lines: Iterable[LogLine]) -> bool:
        return self.runs(LineRun.of(line) for line in lines)

    def raw(self, data: bytes) -> bool:
        if self.stopped:
            return False
        if self.remaining is not None:
            if len(data) >= self.remaining:
                data = data[: self.remaining]
                self.remaining = 0
                self.stopped = True
            else:
                self.remaining -= len(data)
        if len(data) >= WRITE_CHUNK:
            # Big runs go out as they are: gluing them would only copy them again.
            self._write_buffer()
            self.out.write(data)
        else:
            self._buffer.append(data)
            self._buffered += len(data)
            if self._buffered >= WRITE_CHUNK:
                self._write_buffer()
        return not self.stopped

    def _write_buffer(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            self._buffer = []
            self._buffered = 0
            self.out.write(data)

    def flush(self) -> None:
        self._write_buffer()
        self.out.flush()


class _Reporter:
    """Malformed lines to stderr, the first :data:`MAX_REPORTED` of them one by one."""

    def __init__(self, err: IO[str]) -> None:
        self.err = err
        self.count = 0

    def __call__(self, issue: MalformedLine) -> None:
        self.count += 1
        if self.count <= MAX_REPORTED:
            self.err.write(f"iottymux logs: {issue}\n")

    def summary(self) -> None:
        if self.count > MAX_REPORTED:
            self.err.write(
                f"iottymux logs: {self.count - MAX_REPORTED} more problems not shown "
                f"({self.count} in all)\n"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iottymux logs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("targets", nargs="*", metavar="TARGET", help="what to read (below)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep reading new lines")
    parser.add_argument("--tail", type=int, metavar="N", help="only the last N lines")
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="lines from WHEN on: a duration ago (10m, 1h30s) or RFC 3339",
    )
    parser.add_argument("--until", metavar="WHEN", help="lines up to WHEN (same forms)")
    parser.add_argument(
        "-t", "--timestamps", action="store_true", help="show fixed-width UTC timestamps"
    )
    parser.add_argument("--stream", choices=("stdout", "stderr", "all"), default="all")
    parser.add_argument("--limit-bytes", type=int, metavar="N", help="stop after N bytes of output")
    parser.add_argument(
        "--all-rotated",
        action="store_true",
        help="also read rotated and gzipped files, and earlier restarts, oldest first",
    )
    select = parser.add_argument_group("selecting pods and containers")
    select.add_argument(
        "-n",
        "--namespace",
        action="append",
        metavar="NS",
        help="pods of namespace NS (repeatable)",
    )
    select.add_argument(
        "-A", "--all-namespaces", action="store_true", help="pods of every namespace"
    )
    select.add_argument("-c", "--container", metavar="RE", help="only containers matching RE")
    select.add_argument("--exclude-container", metavar="RE", help="no containers matching RE")
    select.add_argument(
        "-l",
        "--selector",
        metavar="SEL",
        help="pods whose labels match SEL (k=v,k!=v,...; needs the rktlet daemon)",
    )
    lines = parser.add_argument_group("lines and output")
    lines.add_argument(
        "--include", action="append", metavar="RE", help="only lines matching RE (repeatable)"
    )
    lines.add_argument(
        "--exclude", action="append", metavar="RE", help="no lines matching RE (repeatable)"
    )
    lines.add_argument(
        "--highlight", action="append", metavar="RE", help="mark matches of RE (with colours)"
    )
    lines.add_argument(
        "--prefix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prefix lines with their container (default: when reading several)",
    )
    lines.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour prefixes and highlights (auto: on a terminal, unless NO_COLOR is set)",
    )
    lines.add_argument("--no-color", action="store_true", help="same as --color never")
    lines.add_argument("--output", choices=("raw", "json", "template"), default=None)
    lines.add_argument(
        "--template",
        metavar="TEXT",
        help="with --output template: e.g. '{namespace}/{pod} {container} {line}'",
    )
    lines.add_argument(
        "--no-merge-partials",
        action="store_true",
        help="show each P piece as its own line instead of joining it to its F",
    )
    follow = parser.add_argument_group("following")
    follow.add_argument(
        "--merge-window",
        default="100ms",
        metavar="DURATION",
        help="hold lines of several containers this long to print them in time order "
        "(default 100ms; 0 prints them as read)",
    )
    follow.add_argument(
        "--max-open-files",
        type=int,
        default=DEFAULT_MAX_OPEN,
        metavar="N",
        help=f"followed files open at once; idle ones are closed (default {DEFAULT_MAX_OPEN})",
    )
    parser.add_argument(
        "--log-root",
        default=DEFAULT_LOG_ROOT,
        metavar="DIR",
        help=f"where NAMESPACE/POD targets live (default {DEFAULT_LOG_ROOT})",
    )
    parser.add_argument(
        "--rktlet-socket",
        default=os.environ.get("RKTLET_SOCKET", DEFAULT_RKTLET_SOCKET),
        metavar="PATH",
        help=f"rktlet daemon socket for container ids and -l (default {DEFAULT_RKTLET_SOCKET})",
    )
    parser.add_argument(
        "--debug-stats", action="store_true", help="print bytes and files read to stderr"
    )
    return parser


def _read_once(
    sources: Sequence[LogSource],
    options: ReadOptions,
    output: Output,
    stats: ReadStats,
    reporter: _Reporter,
) -> None:
    several = len(sources) > 1
    readers = [
        SourceReader(source, options, stats=stats, on_error=reporter, parse_times=several)
        for source in sources
    ]
    try:
        if options.tail is not None:
            # Tail counts lines; its reads are small whatever the file size.
            lines = [reader.lines() for reader in readers]
            merged: Iterable[LogLine] = merge_lines(lines) if several else lines[0]
            if several:
                merged = deque(merged, maxlen=options.tail)
            output.lines(merged)
            return
        runs = [reader.runs() for reader in readers]
        output.runs(merge_runs(runs) if several else runs[0])
    finally:
        for reader in readers:
            reader.close()


def _follow(
    targets: Targets,
    options: ReadOptions,
    output: Output,
    stats: ReadStats,
    reporter: _Reporter,
    *,
    parse_times: bool,
    merge_window_ns: int,
    max_open: int,
    notice: Callable[[str], None],
) -> None:
    group = FollowGroup(
        targets.sources,
        options,
        stats=stats,
        on_error=reporter,
        parse_times=parse_times,
        merge_window_ns=merge_window_ns,
        max_open=max_open,
        notice=notice,
    )
    try:
        if targets.discovery is not None:
            found = targets.discovery.attach(group)
            for source in found:
                group.add_source(source)
            if not found and not targets.sources:
                assert targets.selection is not None
                notice(f"nothing matches {targets.selection.describe()} yet; waiting")
        if not output.runs(group.history_runs()):
            return
        output.flush()

        def emit(batch: list[LineRun]) -> bool:
            more = output.runs(batch)
            output.flush()
            return more

        should_stop = exit_watcher(targets.sources) if targets.discovery is None else None
        group.run_runs(emit, should_stop=should_stop)
    finally:
        group.close()


def _rchar() -> str:
    try:
        with open("/proc/self/io") as io_file:
            for line in io_file:
                if line.startswith("rchar:"):
                    return line.split()[1]
    except OSError:
        pass
    return "?"


def _keep_buffers_on_the_heap() -> None:
    """Ask glibc to serve the reader's ~1 MiB buffers from the heap, not fresh mmaps.

    By default every block read and every run's copy above 128 KiB is a new mapping
    whose pages fault in one by one; reused heap memory is already mapped.  Full
    reads run about a fifth faster.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 8 << 20)
    mallopt(M_TRIM_THRESHOLD, 64 << 20)


def _raise_open_files_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit.

    Reading the history of many containers merged by time holds one file of each
    open at once (following then keeps at most --max-open-files); the common soft
    limit of 1024 would stop a node-wide read at a thousand containers.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _usage(message: str) -> int:
    sys.stderr.write(f"iottymux logs: {message}\n")
    return EXIT_USAGE


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    since_ns = until_ns = None
    try:
        if args.since is not None:
            since_ns = parse_time_arg(args.since)
        if args.until is not None:
            until_ns = parse_time_arg(args.until)
        merge_window_ns = parse_duration(args.merge_window)
    except ValueError as exc:
        return _usage(str(exc))
    if args.tail is not None and args.tail < 0:
        return _usage("--tail must not be negative")
    if args.limit_bytes is not None and args.limit_bytes <= 0:
        return _usage("--limit-bytes must be positive")
    if args.max_open_files < 1:
        return _usage("--max-open-files must be at least 1")
    selecting = args.namespace or args.all_namespaces or args.selector is not None
    selecting = selecting or args.container is not None or args.exclude_container is not None
    if not args.targets and not selecting:
        return _usage("give a TARGET, or select pods with -n, -A, -l or -c (see --help)")
    output_mode = args.output or ("template" if args.template is not None else "raw")
    if output_mode == "template" and args.template is None:
        return _usage("--output template needs --template")
    if args.template is not None and output_mode != "template":
        return _usage("--template goes with --output template")
    try:
        line_filter = LineFilter(args.include or (), args.exclude or ())
        formatter_for_template = (
            TemplateFormatter(args.template) if output_mode == "template" else None
        )
    except (re.error, TemplateError) as exc:
        return _usage(str(exc))

    try:
        targets = Targets(args)
    except UsageError as exc:
        return _usage(str(exc))
    except DaemonUnavailable as exc:
        sys.stderr.write(f"iottymux logs: {exc}\n")
        return EXIT_NO_DAEMON
    except (LogReadError, OSError) as exc:
        sys.stderr.write(f"iottymux logs: {exc}\n")
        return EXIT_ERROR
    try:
        return _run(
            args,
            targets,
            since_ns,
            until_ns,
            merge_window_ns,
            output_mode,
            line_filter,
            formatter_for_template,
        )
    finally:
        targets.close()


def _run(
    args: argparse.Namespace,
    targets: Targets,
    since_ns: int | None,
    until_ns: int | None,
    merge_window_ns: int,
    output_mode: str,
    line_filter: LineFilter,
    template: TemplateFormatter | None,
) -> int:
    sources: list[LogSource] = list(targets.sources)
    if not args.follow:
        try:
            sources = targets.scan()
        except (LogReadError, OSError) as exc:
            sys.stderr.write(f"iottymux logs: {exc}\n")
            return EXIT_ERROR
    elif targets.discovery is not None and not os.path.isdir(targets.log_root):
        sys.stderr.write(f"iottymux logs: {targets.log_root}: no such log root\n")
        return EXIT_ERROR

    streams = {"stdout": (STDOUT,), "stderr": (STDERR,), "all": (STDOUT, STDERR)}[args.stream]
    options = ReadOptions(
        tail=args.tail,
        since_ns=since_ns,
        until_ns=until_ns,
        streams=frozenset(streams),
        merge_partials=not args.no_merge_partials,
        all_rotated=args.all_rotated,
    )
    if len(sources) > 8 or (args.follow and targets.selection is not None):
        # Merging many containers holds a block of each: keep the blocks small.
        options.block_size = MANY_SOURCES_BLOCK
    out = sys.stdout.buffer
    widen_pipe(out.fileno())
    several = len(sources) > 1 or (targets.selection is not None and not targets.one_container())
    use_prefix = args.prefix if args.prefix is not None else several
    color_mode = "never" if args.no_color else args.color
    if color_mode == "auto":
        color = out.isatty() and not os.environ.get("NO_COLOR")
    else:
        color = color_mode == "always"
    labeller: Labeller | None = None
    if use_prefix:
        labeller = Labeller(color=color)
        if targets.selection is not None and not targets.sources:
            if targets.one_pod():
                labeller.default_show = "container"
            elif targets.selection.several_namespaces:
                labeller.default_show = "namespace"
            else:
                labeller.default_show = "pod"
        elif len({(source.info.namespace, source.info.pod) for source in sources}) == 1:
            labeller.default_show = "container"
    highlighter = (
        Highlighter(args.highlight, HIGHLIGHT, RESET) if args.highlight and color else None
    )
    formatter: Formatter
    if output_mode == "json":
        formatter = JsonFormatter()
    elif template is not None:
        formatter = template
    else:
        formatter = RawFormatter(
            labeller=labeller,
            timestamps=args.timestamps,
            plain_partial=not use_prefix and not args.timestamps and options.merge_partials,
            highlighter=highlighter,
        )
    output = Output(out, formatter, line_filter=line_filter, limit_bytes=args.limit_bytes)
    # A format that puts something of its own before each line does it in the same pass
    # that takes the record prefixes off; filters need the bare lines first.
    fuse = output_mode != "raw" or args.timestamps or labeller is not None
    options.keep_prefixes = fuse and not line_filter.active and highlighter is None
    stats = ReadStats()
    reporter = _Reporter(sys.stderr)

    def notice(text: str) -> None:
        output.flush()
        sys.stderr.write(f"iottymux logs: {text}\n")
        sys.stderr.flush()

    _keep_buffers_on_the_heap()
    _raise_open_files_limit()
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        pass  # not the main thread: the caller owns signals
    code = EXIT_OK
    try:
        if args.follow:
            _follow(
                targets,
                options,
                output,
                stats,
                reporter,
                parse_times=output_mode != "raw" or several,
                merge_window_ns=merge_window_ns,
                max_open=args.max_open_files,
                notice=notice,
            )
        else:
            _read_once(sources, options, output, stats, reporter)
        output.flush()
    except KeyboardInterrupt:
        try:
            output.flush()
        except BrokenPipeError:
            _silence_stdout()
    except BrokenPipeError:
        _silence_stdout()
    except (LogReadError, OSError) as exc:
        sys.stderr.write(f"iottymux logs: {exc}\n")
        code = EXIT_ERROR
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    reporter.summary()
    if args.debug_stats:
        sys.stderr.write(
            f"iottymux logs: stats: bytes_read={stats.bytes_read} reads={stats.reads} "
            f"files_opened={stats.files_opened} rchar={_rchar()}\n"
        )
    return code


def widen_pipe(fd: int) -> None:
    """Give a pipe on ``fd`` 1 MiB of room, so whole reads pass in a few writes.

    With the default 64 KiB a reader like ``wc -l`` and this command wake each other
    for every 64 KiB: piping a 1 GB log took twice as long as writing it to a file.
    Where the system refuses (``fs.pipe-max-size``, the per-user pipe quota) the pipe
    stays as it is.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_CAPACITY:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_CAPACITY)
    except OSError:
        pass


def _silence_stdout() -> None:
    # The reader went away (``| head``): nothing more can be written, and the
    # interpreter's final flush must not complain about it.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
