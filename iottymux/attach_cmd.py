"""``iottymux attach``: connect this terminal (or these pipes) to a running app.

Like ``rkt attach``, with what it never had: the attach protocol's framing
(:mod:`iottymux.attachproto`) carries stdout and stderr apart, the app's exit
code, terminal resizes and the end of stdin; the local terminal is put in raw
mode for a tty app and restored on every way out; a detach key sequence leaves
the app running.

Theory of operation
-------------------
One blocking ``selectors`` loop watches three things: our stdin, the attach
socket and a wake-up pipe that :func:`signal.set_wakeup_fd` writes signal
numbers into, so that signals are handled between events, never in the middle
of one.  The socket is non-blocking and what we send is buffered; when the
monitor stops taking input (the app does not read it) we stop reading our stdin
rather than stop reading the socket, so the app's output keeps flowing and our
attach session is not dropped for overflow.  Output is written to our stdout
and stderr with blocking writes: if our terminal stops taking it, the monitor
sees us fall behind and disconnects us, which is the protocol's answer to a
slow attacher.  A terminating signal that arrives while such a write is stuck
interrupts it, so even then the terminal is restored.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import selectors
import signal
import socket
import stat
import sys
import termios
import tty

from iottymux import attachproto as proto
from iottymux.attachclient import read_endpoints
from iottymux.unixsock import connect_unix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType
    from typing import Any, Final, NoReturn

DEFAULT_RUN_ROOT: Final = "/run/rktlet/pods"
DEFAULT_DETACH_KEYS: Final = "ctrl-p,ctrl-q"
#: rkt's dial timeout; here it also covers the monitor's READY answer.
DEFAULT_TIMEOUT: Final = 15.0

EXIT_DETACHED: Final = 0
#: iottymux attach itself failed (see the epilog of ``--help``).
EXIT_FAILED: Final = 125

READ_SIZE: Final = 1 << 16
RECV_SIZE: Final = 1 << 18
#: Input not yet taken by the monitor past which we stop reading our stdin.
MAX_PENDING_INPUT: Final = 1 << 20

#: Signals that end the session (exit status 128 + signal).
TERMINATING: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

EPILOG = f"""\
TARGET is one of
  PATH.sock       an app's attach socket
  DIR             an app directory (<run-dir>/apps/<app>, holding 'endpoints')
  POD/APP         <run-root>/POD/apps/APP/attach.sock (a path that exists wins)
or use --run-dir DIR --app NAME instead of TARGET.

For a tty app whose stdin is a terminal, the terminal is put in raw mode: every
key, ctrl-c included, goes to the app; type the detach keys (default
{DEFAULT_DETACH_KEYS}) to leave the app running.  Otherwise ctrl-c ends this
command, not the app.  The end of our stdin is passed on to the app (for an app
created with stdin_once, it ends the app's stdin; so does leaving any other way
than with the detach keys, which leave the app's stdin open).

--mode takes auto (the default: everything the app offers), list (print the
app's endpoints as JSON and exit), rkt's tty, tty-in and tty-out, or a comma
list of stdin, stdout and stderr.

exit status:
  N        the app exited with status N (128+S when signal S killed it)
  0        detached with the detach keys (the app keeps running), or --mode list
  125      iottymux attach failed: bad arguments, no such endpoint, the monitor
           refused or dropped the session (an ERROR from the monitor, such as
           falling too far behind the app's output), or lost the connection
           before the app exited
  128+S    iottymux attach itself ended by signal S (SIGINT, SIGTERM, SIGHUP);
           129 when our terminal went away, 141 when our output pipe closed
"""


class UsageError(Exception):
    """A bad command line (exit 125, with the usage)."""


class AttachFailed(Exception):
    """The attach could not be made or was lost (exit 125, with the message)."""


class _Interrupted(BaseException):
    """Raised out of a stuck output write by a terminating signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


# -- detach keys ---------------------------------------------------------------

_CTRL_PUNCTUATION: Final = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse_detach_keys(spec: str) -> bytes:
    """Docker's syntax: comma-separated ``ctrl-<key>`` or single characters.

    ``<key>`` is a letter or one of ``@ [ \\ ] ^ _``.  An empty string turns
    detaching off.
    """
    if spec == "":
        return b""
    keys = bytearray()
    for key in spec.split(","):
        if len(key) == 1 and " " < key < "\x7f":
            keys.append(ord(key))
            continue
        if len(key) == 6 and key[:5].lower() == "ctrl-":
            name = key[5]
            if name.isascii() and name.isalpha():
                keys.append(ord(name.lower()) - ord("a") + 1)
                continue
            if name in _CTRL_PUNCTUATION:
                keys.append(_CTRL_PUNCTUATION[name])
                continue
        raise ValueError(
            f"invalid detach key {key!r}: use a character or ctrl-<a-z, @, [, \\, ], ^, _>"
        )
    return bytes(keys)


class DetachScanner:
    """Finds the detach sequence in input that arrives in arbitrary pieces.

    Bytes that could be the start of the sequence are held back until the
    following bytes decide; as in docker, a lone ctrl-p reaches the app only
    with the next key.
    """

    __slots__ = ("_held", "_keys")

    def __init__(self, keys: bytes) -> None:
        self._keys = keys
        self._held = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The bytes to pass on, and whether the sequence was completed.

        After a completed sequence, the rest of ``data`` is dropped: the user
        asked to leave.
        """
        keys = self._keys
        if not keys:
            return data, False
        if not self._held:
            start = data.find(keys[0])
            if start < 0:
                return data, False
        else:
            start = 0
        out = bytearray(data[:start])
        held = self._held
        # Only input around a candidate start is scanned byte by byte.
        for byte in data[start:]:
            held.append(byte)
            while held and not keys.startswith(held):
                out.append(held.pop(0))
            if held == keys:
                held.clear()
                return bytes(out), True
        return bytes(out), False


# -- targets -------------------------------------------------------------------


def resolve_target(target: str, run_root: str) -> tuple[str, str]:
    """``(socket path, app directory)`` for a TARGET argument."""
    try:
        st = os.stat(target)
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        app_dir = target
        try:
            attach = read_endpoints(app_dir).get("attach")
        except (OSError, ValueError):
            attach = None
        if isinstance(attach, str) and attach:
            return attach, app_dir
        return os.path.join(app_dir, "attach.sock"), app_dir
    if st is not None:
        return target, os.path.dirname(target) or "."
    parts = target.split("/")
    if len(parts) == 2 and all(parts) and not {".", ".."} & set(parts):
        pod, app = parts
        app_dir = os.path.join(run_root, pod, "apps", app)
        return os.path.join(app_dir, "attach.sock"), app_dir
    return target, os.path.dirname(target) or "."


def parse_mode(mode: str) -> tuple[bool, bool, bool, bool | None]:
    """``(stdin, stdout, stderr, tty)`` wanted by a ``--mode``; tty None: either."""
    if mode == "auto":
        return True, True, True, None
    if mode == "tty":
        return True, True, True, True
    if mode == "tty-in":
        return True, False, False, True
    if mode == "tty-out":
        return False, True, True, True
    names = mode.split(",")
    if not names or not set(names) <= {"stdin", "stdout", "stderr"}:
        raise UsageError(
            f"--mode: {mode!r} is not auto, list, tty, tty-in, tty-out "
            "or a comma list of stdin, stdout, stderr"
        )
    return "stdin" in names, "stdout" in names, "stderr" in names, False


def _describe_connect_error(exc: OSError, path: str) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"no attach endpoint at {path} (is the app added and its pod's monitor running?)"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing listens on {path} (the pod's monitor is not running)"
    if isinstance(exc, PermissionError):
        return f"permission denied on {path} (attach sockets are private to their owner)"
    if isinstance(exc, TimeoutError):
        return f"the monitor did not answer on {path} in time"
    return f"cannot attach through {path}: {exc.strerror or exc}"


# -- the session -----------------------------------------------------------------


class Session:
    """One attach session, from READY to EXIT, ERROR, detach or a signal."""

    def __init__(
        self,
        sock: socket.socket,
        decoder: proto.FrameDecoder,
        ready: dict[str, Any],
        *,
        app: str,
        read_stdin: bool,
        detach_keys: bytes,
        stdin_fd: int = 0,
        stdout_fd: int = 1,
        stderr_fd: int = 2,
    ) -> None:
        self.sock = sock
        self.decoder = decoder
        self.app = app
        self.tty = bool(ready.get("tty"))
        #: Whether our input reaches the app (the monitor said so in READY).
        self.forward_stdin = read_stdin and bool(ready.get("stdin"))
        self.exited_before = ready.get("state") == "exited"
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd
        try:
            os.fstat(stdin_fd)
        except OSError:
            read_stdin = False  # started with stdin closed
        self.raw = self.tty and read_stdin and os.isatty(stdin_fd)
        self.raw_output = self.tty and not self.raw and os.isatty(stdout_fd)
        # Input is read to forward it, or only to watch for the detach keys
        # when the app takes none but the user is at a raw terminal.
        self.read_stdin = self.forward_stdin or self.raw
        self.scanner = DetachScanner(detach_keys if read_stdin else b"")
        self.size_fd = next((fd for fd in (stdout_fd, stdin_fd) if os.isatty(fd)), -1)
        self.last_size: tuple[int, int] | None = None
        self.selector = selectors.PollSelector()
        self.outbuf = bytearray()
        self.send_closed = False
        self.stdin_registered = False
        self.saved_attrs: list[Any] | None = None
        self.saved_out_attrs: list[Any] | None = None
        self.result: int | None = None
        self.message = ""
        self.exit_signal = 0
        self._writing = False
        self._wake_r = self._wake_w = -1
        self._old_handlers: dict[int, Any] = {}
        self._old_wakeup = -1

    # -- outcome ---------------------------------------------------------------

    def _finish(self, code: int, message: str = "") -> None:
        if self.result is None:
            self.result = code
            self.message = message

    # -- terminal ----------------------------------------------------------------

    def _enter_raw(self) -> None:
        """Raw input for a tty app; or, when only its output is shown, raw output.

        The app's own terminal already turned its ``\n`` into ``\r\n``; ours
        must not do it again.
        """
        if self.raw:
            if self.saved_attrs is None:
                self.saved_attrs = termios.tcgetattr(self.stdin_fd)
            # TCSANOW: TCSAFLUSH would throw away what the user typed ahead.
            tty.setraw(self.stdin_fd, termios.TCSANOW)
        elif self.raw_output:
            if self.saved_out_attrs is None:
                self.saved_out_attrs = termios.tcgetattr(self.stdout_fd)
            attrs = termios.tcgetattr(self.stdout_fd)
            attrs[1] &= ~termios.OPOST
            termios.tcsetattr(self.stdout_fd, termios.TCSANOW, attrs)

    def _restore_terminal(self) -> None:
        for fd, saved in (
            (self.stdin_fd, self.saved_attrs),
            (self.stdout_fd, self.saved_out_attrs),
        ):
            if saved is not None:
                with contextlib.suppress(OSError):
                    termios.tcsetattr(fd, termios.TCSANOW, saved)

    def _send_size(self) -> None:
        if not self.tty or self.size_fd < 0:
            return
        try:
            columns, lines = os.get_terminal_size(self.size_fd)
        except OSError:
            return
        size = (lines, columns)
        if size == self.last_size or size == (0, 0):
            return
        self.last_size = size
        self._send(proto.encode_resize(min(lines, 0xFFFF), min(columns, 0xFFFF)))

    # -- signals -------------------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in TERMINATING:
            self.exit_signal = self.exit_signal or signum
            if self._writing:
                raise _Interrupted(signum)

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        wanted = [*TERMINATING, signal.SIGWINCH]
        if self.raw or self.raw_output:
            # Being stopped (ctrl-z, kill -TSTP) must not leave the terminal
            # changed while the shell has it: restore it first.
            wanted += [signal.SIGTSTP, signal.SIGCONT]
        for signum in wanted:
            self._old_handlers[signum] = signal.signal(signum, self._on_signal)

    def _uninstall_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            signal.signal(signum, handler)
        self._old_handlers.clear()
        if self._wake_w >= 0:
            signal.set_wakeup_fd(self._old_wakeup)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1

    def _on_wakeup(self) -> None:
        try:
            received = os.read(self._wake_r, 512)
        except BlockingIOError:
            return
        if signal.SIGTSTP in received:
            self._suspend()
        if signal.SIGCONT in received:
            # Continued after a SIGSTOP: the shell may have reset the terminal.
            self._enter_raw()
        if signal.SIGWINCH in received or signal.SIGCONT in received:
            self._send_size()
        for signum in TERMINATING:
            if signum in received:
                self.exit_signal = self.exit_signal or signum
        if self.exit_signal:
            self._finish(128 + self.exit_signal)

    def _suspend(self) -> None:
        self._restore_terminal()
        previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)  # stops here until SIGCONT
        finally:
            signal.signal(signal.SIGTSTP, previous)
        self._enter_raw()

    # -- output ----------------------------------------------------------------------

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        self._writing = True
        try:
            if self.exit_signal:
                raise _Interrupted(self.exit_signal)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            self._writing = False

    def _output(self, fd: int, data: bytes) -> None:
        try:
            self._write(fd, data)
        except BrokenPipeError:
            self._finish(128 + signal.SIGPIPE)
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            self._finish(128 + signal.SIGHUP)  # our terminal hung up

    def _on_frames(self, frames: list[tuple[int, bytes]]) -> None:
        # Consecutive output frames of one stream become one write.
        pending_fd = -1
        pending: list[bytes] = []

        def flush() -> None:
            if pending:
                self._output(pending_fd, b"".join(pending))
                pending.clear()

        for kind, payload in frames:
            if self.result is not None:
                break
            if kind in (proto.STDOUT, proto.STDERR):
                fd = self.stdout_fd if kind == proto.STDOUT else self.stderr_fd
                if fd != pending_fd:
                    flush()
                    pending_fd = fd
                pending.append(payload)
                continue
            flush()
            if kind == proto.EXIT:
                self._on_exit(proto.decode_json(payload))
            elif kind == proto.ERROR:
                reason = payload.decode(errors="replace")
                self._finish(EXIT_FAILED, f"the monitor ended the session: {reason}")
            elif kind == proto.READY:
                raise proto.AttachProtocolError("READY sent twice")
        if self.result is None:
            flush()

    def _on_exit(self, body: dict[str, Any]) -> None:
        code = body.get("exit_code")
        signum = body.get("signal")
        if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 255:
            status = code
        elif isinstance(signum, int) and not isinstance(signum, bool) and signum > 0:
            status = 128 + signum
        else:
            self._finish(EXIT_FAILED, f"the app exited with an unknown status: {body}")
            return
        message = ""
        if self.exited_before:
            how = f"signal {signum}" if signum else f"exit code {status}"
            message = f"app {self.app!r} has exited ({how}, {body.get('reason') or 'no reason'})"
        self._finish(status, message)

    # -- socket ------------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if self.send_closed:
            return
        self.outbuf += frame
        self._flush_socket()

    def _flush_socket(self) -> None:
        while self.outbuf and not self.send_closed:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                # The monitor closed its end; what it sent before (EXIT,
                # ERROR) is still to be read, so keep reading.
                self.send_closed = True
                self.outbuf.clear()
                break
            del self.outbuf[:sent]
        self._update_interest()

    def _update_interest(self) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outbuf else 0)
        key = self.selector.get_key(self.sock)
        if key.events != events:
            self.selector.modify(self.sock, events, key.data)
        want_stdin = (
            self.read_stdin and not self.send_closed and len(self.outbuf) < MAX_PENDING_INPUT
        )
        if want_stdin != self.stdin_registered:
            if want_stdin:
                self.selector.register(self.stdin_fd, selectors.EVENT_READ, self._on_stdin)
            else:
                self.selector.unregister(self.stdin_fd)
            self.stdin_registered = want_stdin

    def _on_socket(self, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_socket()
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._finish(EXIT_FAILED, "the monitor closed the connection before the app exited")
            return
        self._on_frames(self.decoder.receive_data(data))

    # -- input ---------------------------------------------------------------------------

    def _on_stdin(self, mask: int) -> None:
        try:
            data = os.read(self.stdin_fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno != errno.EIO:
                raise
            data = None  # our terminal hung up
        if not data:
            if data is None or self.raw:
                # A raw terminal has no end-of-file key: it went away.
                self._finish(128 + signal.SIGHUP)
                return
            self.read_stdin = False
            if self.forward_stdin:
                self._send(proto.encode(proto.STDIN_CLOSE))
            else:
                self._update_interest()
            return
        data, detached = self.scanner.feed(data)
        if data and self.forward_stdin:
            for start in range(0, len(data), proto.MAX_PAYLOAD):
                self._send(proto.encode(proto.STDIN, data[start : start + proto.MAX_PAYLOAD]))
        if detached:
            self._detach()

    def _detach(self) -> None:
        # What was typed before the keys still belongs to the app; DETACH tells
        # the monitor this disconnect is not the end of our stdin.
        if not self.send_closed:
            with contextlib.suppress(OSError):
                self.sock.settimeout(5.0)
                self.sock.sendall(bytes(self.outbuf) + proto.encode(proto.DETACH))
        self.outbuf.clear()
        self._finish(EXIT_DETACHED, f"detached from app {self.app!r}; it keeps running")

    # -- the loop ------------------------------------------------------------------------

    def run(self, early_frames: list[tuple[int, bytes]]) -> int:
        self.sock.setblocking(False)
        self._install_signals()
        try:
            self._enter_raw()
            self.selector.register(self._wake_r, selectors.EVENT_READ, None)
            self.selector.register(self.sock, selectors.EVENT_READ, self._on_socket)
            self._update_interest()
            self._send_size()
            if early_frames:
                self._on_frames(early_frames)
            while self.result is None:
                events = self.selector.select()
                # Signals first, and even when select did not report the pipe:
                # a signal that came as select returned has its byte in the pipe
                # already, and the resize it stands for must reach the app
                # before keys typed after it.
                self._on_wakeup()
                for key, mask in events:
                    if self.result is not None:
                        break
                    if key.data is not None:
                        key.data(mask)
        except _Interrupted as exc:
            self._finish(128 + exc.signum)
        finally:
            self._restore_terminal()
            self._uninstall_signals()
            self.selector.close()
        assert self.result is not None
        return self.result


# -- command line ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iottymux attach",
        description="Attach to an app's stdio or tty through its pod monitor's attach socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", nargs="?", metavar="TARGET", help="socket, app dir or POD/APP")
    parser.add_argument(
        "--run-root",
        default=DEFAULT_RUN_ROOT,
        metavar="DIR",
        help=f"where POD/APP is looked up (default {DEFAULT_RUN_ROOT})",
    )
    parser.add_argument("--run-dir", metavar="DIR", help="a pod monitor's run directory")
    parser.add_argument("--app", metavar="NAME", help="the app, with --run-dir")
    parser.add_argument(
        "--mode",
        default="auto",
        help="auto (default), list, tty, tty-in, tty-out, or stdin,stdout,stderr",
    )
    parser.add_argument(
        "--no-stdin", action="store_true", help="attach to the output only; our stdin is left alone"
    )
    parser.add_argument(
        "--replay",
        action="store_true",
        help="first show the app's recent output (the monitor's ring buffer)",
    )
    parser.add_argument(
        "--detach-keys",
        default=DEFAULT_DETACH_KEYS,
        metavar="KEYS",
        help=f"detach sequence (default {DEFAULT_DETACH_KEYS}; '' disables it)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"for connecting and the monitor's answer (default {DEFAULT_TIMEOUT:g})",
    )
    return parser


def _say(message: str, *, raw_newline: bool = False) -> None:
    text = f"iottymux attach: {message}\n"
    with contextlib.suppress(OSError):
        os.write(2, (("\r\n" if raw_newline else "") + text).encode(errors="replace"))


def _handshake(
    path: str, *, stdin: bool, stdout: bool, stderr: bool, replay: bool, timeout: float
) -> tuple[socket.socket, proto.FrameDecoder, dict[str, Any], list[tuple[int, bytes]]]:
    """Connect and say HELLO; the READY body and any frames that came with it."""
    try:
        sock = connect_unix(path, timeout)
    except OSError as exc:
        raise AttachFailed(_describe_connect_error(exc, path)) from None
    try:
        sock.sendall(proto.encode_hello(stdin=stdin, stdout=stdout, stderr=stderr, replay=replay))
        decoder = proto.FrameDecoder(proto.SERVER_KINDS)
        frames: list[tuple[int, bytes]] = []
        while not frames:
            data = sock.recv(RECV_SIZE)
            if not data:
                raise AttachFailed(f"the monitor closed {path} without answering")
            frames = decoder.receive_data(data)
        kind, payload = frames.pop(0)
        if kind == proto.ERROR:
            raise AttachFailed(f"the monitor refused: {payload.decode(errors='replace')}")
        if kind != proto.READY:
            raise proto.AttachProtocolError(f"expected READY, got frame kind {kind}")
        return sock, decoder, proto.decode_json(payload), frames
    except OSError as exc:
        sock.close()
        raise AttachFailed(_describe_connect_error(exc, path)) from None
    except BaseException:
        sock.close()
        raise


def _list(app_dir: str) -> int:
    try:
        endpoints = read_endpoints(app_dir)
    except FileNotFoundError:
        raise AttachFailed(f"no endpoints file in {app_dir}") from None
    except (OSError, ValueError) as exc:
        raise AttachFailed(f"cannot read {os.path.join(app_dir, 'endpoints')}: {exc}") from None
    sys.stdout.write(json.dumps(endpoints, indent=4) + "\n")
    sys.stdout.flush()
    return 0


def _attach(args: argparse.Namespace) -> int:
    if args.run_dir is not None or args.app is not None:
        if args.target is not None or args.run_dir is None or args.app is None:
            raise UsageError("give either TARGET or both --run-dir and --app")
        app_dir = os.path.join(args.run_dir, "apps", args.app)
        path = os.path.join(app_dir, "attach.sock")
    elif args.target is None:
        raise UsageError("TARGET is required (or --run-dir and --app)")
    else:
        path, app_dir = resolve_target(args.target, args.run_root)
    if args.mode == "list":
        return _list(app_dir)
    want_stdin, want_stdout, want_stderr, want_tty = parse_mode(args.mode)
    want_stdin = want_stdin and not args.no_stdin
    try:
        detach_keys = parse_detach_keys(args.detach_keys)
    except ValueError as exc:
        raise UsageError(f"--detach-keys: {exc}") from None
    app = os.path.basename(os.path.normpath(app_dir))
    sock, decoder, ready, frames = _handshake(
        path,
        stdin=want_stdin,
        stdout=want_stdout,
        stderr=want_stderr,
        replay=args.replay,
        timeout=args.timeout,
    )
    try:
        if want_tty is not None and want_tty != bool(ready.get("tty")):
            kind = "a tty" if ready.get("tty") else "no tty"
            raise AttachFailed(f"--mode {args.mode}: app {app!r} has {kind}")
        session = Session(
            sock, decoder, ready, app=app, read_stdin=want_stdin, detach_keys=detach_keys
        )
        code = session.run(frames)
    finally:
        sock.close()
    if session.message:
        _say(session.message, raw_newline=session.raw or session.raw_output)
    return code


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _say(str(exc))
        return EXIT_FAILED
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return _attach(args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        _say(str(exc))
        return EXIT_FAILED
    except AttachFailed as exc:
        _say(str(exc))
        return EXIT_FAILED
    except proto.AttachProtocolError as exc:
        _say(f"protocol error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Only before the session installs its own handlers (while connecting).
        return 128 + signal.SIGINT
