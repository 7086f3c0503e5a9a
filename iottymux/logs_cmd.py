"""``iottymux logs``: read CRI container logs on a node, with no API server or daemon.

Targets are resolved here (files, kubelet directories, ``NAMESPACE/POD[/CONTAINER]``);
all reading is :mod:`iottymux.logreader`.  The one thing added on top is the output
fast path: a block made only of whole ``F`` records with fixed-width timestamps (what
our writer produces) is turned into output with bytes operations over the block,
instead of one Python object per line.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from types import FrameType
from typing import IO, Final

from iottymux.logfilter import LineFilter
from iottymux.logformat import STDERR, STDOUT
from iottymux.logoutput import Formatter, JsonFormatter, Labeller, RawFormatter
from iottymux.logreader import (
    FollowGroup,
    LineRun,
    LogLine,
    LogReadError,
    LogSource,
    MalformedLine,
    ReadOptions,
    ReadStats,
    SourceInfo,
    SourceReader,
    classify_segment,
    merge_lines,
    merge_runs,
    parse_time_arg,
)

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_NO_DAEMON: Final = 3

DEFAULT_LOG_ROOT: Final = "/var/log/pods"
DEFAULT_RKTLET_SOCKET: Final = "/run/rktlet/rktlet.sock"
#: Output is written in pieces of at least this size.
WRITE_CHUNK: Final = 64 << 10
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
  NAMESPACE/POD[/CTR]    looked up under --log-root (newest pod uid if several;
                         an existing path of that name wins)
  CONTAINER_ID_OR_NAME   asks a running rktlet daemon (not available yet: exit 3)

--follow keeps reading until interrupted (SIGINT/SIGTERM end it cleanly, exit 0);
it crosses rotations and container restarts (N.log -> N+1.log).

exit codes:
  0  success; malformed lines, if any, were reported on stderr and skipped.
     Also when --follow is interrupted or the output is closed.
  1  a target does not exist, cannot be read, or holds no CRI logs
  2  usage error (unknown option, bad duration or time)
  3  a container id or name needs a rktlet daemon and none answered
"""

_COLORS: Final = (b"36", b"33", b"32", b"35", b"34", b"31", b"96", b"93", b"92", b"95")


class DaemonUnavailable(Exception):
    """A target needs the rktlet daemon and it cannot answer."""


def resolve_via_daemon(name: str, socket_path: str) -> list[LogSource]:
    """The log of a container id (or unique prefix) or name, asked of a running rktlet.

    The CRI client (grpc) is imported only here: reading files needs no daemon and no
    third-party package.
    """
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
    DAEMON_SOURCES[_source_key(source)] = (socket_path, container.id)
    return [source]


def _source_key(source: LogSource) -> str:
    return os.path.join(source.directory, source.base or "")


#: Sources a daemon resolved: log file -> (socket, container id), so that ``-f``
#: can stop once the daemon says the container has exited, as the kubelet's does.
DAEMON_SOURCES: dict[str, tuple[str, str]] = {}


def exit_watcher(sources: Sequence[LogSource], period: float = 1.0) -> Callable[[], bool] | None:
    """A ``should_stop`` for follow: true once every container has exited.

    Only when every source came from the daemon: a plain file says nothing about
    whether its writer is still alive.
    """
    keys = [_source_key(source) for source in sources]
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


def _sources_in_log_root(target: str, log_root: str) -> list[LogSource] | None:
    parts = target.split("/")
    if not 2 <= len(parts) <= 3 or not all(parts):
        return None
    namespace, pod = parts[0], parts[1]
    prefix = f"{namespace}_{pod}_"
    try:
        candidates = [
            entry.path
            for entry in os.scandir(log_root)
            if entry.name.startswith(prefix)
            and entry.is_dir()
            and "_" not in entry.name[len(prefix) :]
        ]
    except OSError:
        return None
    if not candidates:
        return None
    # A pod deleted and created again gets a new uid; the newest directory is the live one.
    pod_dir = max(candidates, key=lambda path: os.stat(path).st_mtime_ns)
    if len(parts) == 3:
        container_dir = os.path.join(pod_dir, parts[2])
        if not os.path.isdir(container_dir):
            raise LogReadError(f"{target}: pod has no container {parts[2]!r} in {pod_dir}")
        return [LogSource.for_container_dir(container_dir)]
    return _sources_in_dir(pod_dir)


def resolve_target(target: str, log_root: str, socket_path: str) -> list[LogSource]:
    """The log sources a command-line target names (see the epilog)."""
    if os.path.isfile(target):
        if not os.access(target, os.R_OK):
            raise LogReadError(f"{target}: permission denied")
        return [LogSource.for_file(target)]
    if os.path.isdir(target):
        return _sources_in_dir(target)
    if not target.startswith(("/", ".")):
        found = _sources_in_log_root(target, log_root)
        if found is not None:
            return found
        if "/" not in target:
            return resolve_via_daemon(target, socket_path)
        raise LogReadError(f"{target}: no such file, directory or pod under {log_root}")
    raise LogReadError(f"{target}: no such file or directory")


def _labels(sources: Sequence[LogSource]) -> list[str]:
    pods = {(source.info.namespace, source.info.pod) for source in sources}
    labels = []
    for source in sources:
        info = source.info
        same_pod = len(pods) == 1 and info.pod is not None and info.container is not None
        labels.append(info.container if same_pod and info.container else info.label)
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return unique


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
                    run = replace(run, data=data, count=count)
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
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="what to read (below)")
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
    parser.add_argument(
        "--prefix",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="prefix lines with their container (default: when reading several)",
    )
    parser.add_argument("--no-color", action="store_true", help="never color prefixes")
    parser.add_argument("--output", choices=("raw", "json"), default="raw")
    parser.add_argument(
        "--no-merge-partials",
        action="store_true",
        help="show each P piece as its own line instead of joining it to its F",
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
        help=f"rktlet daemon socket for container ids (default {DEFAULT_RKTLET_SOCKET})",
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
    sources: Sequence[LogSource],
    options: ReadOptions,
    output: Output,
    stats: ReadStats,
    reporter: _Reporter,
    parse_times: bool,
) -> None:
    group = FollowGroup(sources, options, stats=stats, on_error=reporter, parse_times=parse_times)
    try:
        if not output.lines(group.history()):
            return
        output.flush()

        def emit(batch: list[LogLine]) -> bool:
            more = output.lines(batch)
            output.flush()
            return more

        group.run(emit, should_stop=exit_watcher(sources))
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


M_TRIM_THRESHOLD: Final = -1
M_MMAP_THRESHOLD: Final = -3


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


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
    except ValueError as exc:
        sys.stderr.write(f"iottymux logs: {exc}\n")
        return EXIT_USAGE
    if args.tail is not None and args.tail < 0:
        sys.stderr.write("iottymux logs: --tail must not be negative\n")
        return EXIT_USAGE
    if args.limit_bytes is not None and args.limit_bytes <= 0:
        sys.stderr.write("iottymux logs: --limit-bytes must be positive\n")
        return EXIT_USAGE

    sources: list[LogSource] = []
    try:
        for target in args.targets:
            sources.extend(resolve_target(target, args.log_root, args.rktlet_socket))
    except DaemonUnavailable as exc:
        sys.stderr.write(f"iottymux logs: {exc}\n")
        return EXIT_NO_DAEMON
    except (LogReadError, OSError) as exc:
        sys.stderr.write(f"iottymux logs: {exc}\n")
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
    out = sys.stdout.buffer
    use_prefix = args.prefix if args.prefix is not None else len(sources) > 1
    color = use_prefix and not args.no_color and "NO_COLOR" not in os.environ and out.isatty()
    labeller: Labeller | None = None
    if use_prefix:
        labeller = Labeller(color=color)
        pods = {(source.info.namespace, source.info.pod) for source in sources}
        if len(pods) == 1:
            labeller.default_show = "container"
    json_mode = args.output == "json"
    formatter: Formatter
    if json_mode:
        formatter = JsonFormatter()
    else:
        formatter = RawFormatter(
            labeller=labeller,
            timestamps=args.timestamps,
            plain_partial=not use_prefix and not args.timestamps and options.merge_partials,
        )
    output = Output(out, formatter, limit_bytes=args.limit_bytes)
    stats = ReadStats()
    reporter = _Reporter(sys.stderr)
    _keep_buffers_on_the_heap()
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        pass  # not the main thread: the caller owns signals
    code = EXIT_OK
    try:
        if args.follow:
            _follow(sources, options, output, stats, reporter, json_mode or len(sources) > 1)
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


def _silence_stdout() -> None:
    # The reader went away (``| head``): nothing more can be written, and the
    # interpreter's final flush must not complain about it.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except OSError:
        pass
