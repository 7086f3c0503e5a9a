"""The monitor's control protocol: newline-delimited JSON over a unix socket.

The socket is ``<run-dir>/control.sock`` (mode 0600).  Any number of clients may
be connected; a client that dies leaves nothing behind, and a new one (a
restarted daemon) sees the same apps.  Each request is one JSON object on one
line; each gets exactly one response line carrying the same ``id``::

    -> {"id": 1, "op": "add", "app": "web", "command": ["/bin/sh", "-c", "echo hi"],
        "stdout": "log", "stderr": "log", "log_path": "/var/log/pods/.../0.log"}
    <- {"id": 1, "ok": true}
    -> {"id": 2, "op": "start", "app": "web"}
    <- {"id": 2, "ok": true, "pid": 4242}
    -> {"id": 3, "op": "reopen", "app": "nope"}
    <- {"id": 3, "ok": false, "error": {"code": "NotFound", "message": "app 'nope' not found"}}

Operations (fields beyond ``id`` and ``op``):

``add``
    ``app`` (name, ``[a-z0-9][a-z0-9._-]*``, at most 128 bytes), ``command``
    (non-empty list of strings), ``env`` (list of ``"K=V"``), ``cwd``,
    ``stdin`` (``null|stream|tty``), ``stdout``/``stderr``
    (``null|log|stream|tty``), ``log_path`` (absolute; required when a stream
    logs), ``max_line_size`` (bytes, default 16384), ``stdin_once`` (bool),
    ``attach_queue_size`` and ``ring_size`` (bytes; see :mod:`iottymux.attach`).
    Creates the app's stdio, its log file and its attach endpoint; the app does
    not run yet.  With ``oci`` (``runtime``, ``root``, ``bundle``, ``id``,
    optional ``log``) the app is an OCI container: ``command`` may be left out,
    the runtime's ``create`` runs now and the answer (with the container's
    ``pid``) comes when it has finished; ``start`` and ``remove`` then run the
    runtime's ``start`` and ``delete --force`` (see :mod:`iottymux.oci`).
``start``
    ``app``.  Runs it; answers with ``pid``.
``signal``
    ``app``, ``signal`` (number or name such as ``"SIGTERM"``).
``status``
    optional ``app``.  Answers ``apps`` (a list) and ``monitor`` (pid, RSS,
    start time).  Each app has ``state`` (``created|running|exited``), ``pid``,
    ``created_at``, ``started_at``, ``finished_at`` (ns since the epoch),
    ``exit_code``, ``signal`` and ``log`` counters (lines, bytes, partial
    splits, dropped lines and bytes, write errors).
``reopen``
    ``app``.  Synchronous: when the answer comes the new log file exists and
    every complete line read so far is in the old file.  An app that is not
    running gets ``FailedPrecondition`` and no file is created.
``wait``
    ``app``.  Answers once the app has exited and its exit is recorded.
``remove``
    ``app``.  Only for an app that is not running.
``subscribe``
    From then on the connection also receives event lines without an ``id``:
    ``{"event": "exited", "app": ..., "exit_code": ..., "signal": ...}``.
``shutdown``
    Kills running apps, records their exits, answers, and ends the monitor.
``ping``
    Answers ``pid`` and ``version``.

Error codes follow gRPC's names so the daemon maps them one to one:
``InvalidArgument``, ``NotFound``, ``AlreadyExists``, ``FailedPrecondition``,
``ResourceExhausted``, ``Internal``.

The codec here does no I/O; :class:`ControlClient` is a small blocking client
used by tests and the CLI (the daemon has its own asyncio one).
"""

from __future__ import annotations

import json

from iottymux.unixsock import connect_unix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

PROTOCOL_VERSION: Final = 1
MAX_MESSAGE_SIZE: Final = 1 << 20

OPS: Final = frozenset(
    {
        "add",
        "start",
        "signal",
        "status",
        "reopen",
        "wait",
        "remove",
        "subscribe",
        "shutdown",
        "ping",
    }
)


class ControlError(Exception):
    """An error answered to a request; ``code`` is a gRPC status name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def invalid(message: str) -> ControlError:
    return ControlError("InvalidArgument", message)


class ProtocolError(Exception):
    """The peer broke the framing; the connection is closed.

    ``messages`` holds the good messages that came before the bad bytes, so
    they are still answered.
    """

    def __init__(self, message: str, messages: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.messages = messages or []


class ControlCodec:
    """Splits a byte stream into JSON messages and encodes replies."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def receive_data(self, data: bytes) -> list[dict[str, Any]]:
        """Feed bytes; return the complete messages they finish."""
        self._buffer += data
        messages: list[dict[str, Any]] = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_MESSAGE_SIZE:
                    raise ProtocolError(f"message longer than {MAX_MESSAGE_SIZE} bytes", messages)
                return messages
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError as exc:
                raise ProtocolError(f"not JSON: {exc}", messages) from None
            if not isinstance(message, dict):
                raise ProtocolError("a message must be a JSON object", messages)
            messages.append(message)

    @staticmethod
    def encode(message: dict[str, Any]) -> bytes:
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


class ControlClient:
    """A blocking client for one monitor's control socket."""

    def __init__(self, path: str, timeout: float | None = 30.0) -> None:
        self.path = path
        self._sock = connect_unix(path, timeout)
        self._codec = ControlCodec()
        self._next_id = 0
        self._backlog: list[dict[str, Any]] = []
        #: Events that arrived while waiting for a response.
        self.events: list[dict[str, Any]] = []

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, op: str, **fields: Any) -> int:
        self._next_id += 1
        self._sock.sendall(ControlCodec.encode({"id": self._next_id, "op": op, **fields}))
        return self._next_id

    def receive(self) -> dict[str, Any]:
        """The next message, event or response."""
        if self.events:
            return self.events.pop(0)
        return self._next_message()

    def _next_message(self) -> dict[str, Any]:
        """The next message off the socket (events set aside earlier are not looked at)."""
        while not self._backlog:
            data = self._sock.recv(65536)
            if not data:
                raise ConnectionError("monitor closed the control connection")
            self._backlog.extend(self._codec.receive_data(data))
        return self._backlog.pop(0)

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send a request and return its successful response, or raise ControlError."""
        request_id = self.send(op, **fields)
        while True:
            message = self._next_message()
            if message.get("id") == request_id:
                break
            if "event" in message:
                self.events.append(message)
        if not message.get("ok"):
            error = message.get("error") or {}
            raise ControlError(str(error.get("code", "Internal")), str(error.get("message", "")))
        return message
