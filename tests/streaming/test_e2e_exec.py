"""exec and attach end to end: real sockets, real host processes (the test-double
runtime), our SPDY client, a raw WebSocket client, the ``kubernetes`` package's
client, and the captured crictl byte streams replayed against our server."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

from streaming import AttachRequest, ExecRequest, Server, spdy
from streaming import remotecommand as rc
from streaming.client import SpdyExec, spdy_exec

from .captures import load
from .conftest import run_server
from .hostruntime import HostRuntime


def exec_request(script: str, **flags: bool) -> ExecRequest:
    flags.setdefault("stdout", True)
    flags.setdefault("stderr", not flags.get("tty", False))
    return ExecRequest("c1", ("sh", "-c", script), **flags)


# --- SPDY ---------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 3, 255])
def test_spdy_exit_codes(code: int) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        result = await spdy_exec(
            server.get_exec(exec_request(f"echo out; echo err >&2; exit {code}"))
        )
        assert result.protocol == "v5.channel.k8s.io"
        assert (result.stdout, result.stderr, result.exit_code) == (b"out\n", b"err\n", code)
        assert result.status.success is (code == 0)

    run_server(main)


def test_spdy_stdin_is_delivered_and_eof_ends_it() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value

    async def main(server: Server, runtime: HostRuntime) -> None:
        result = await spdy_exec(server.get_exec(exec_request("cat", stdin=True)), stdin=payload)
        assert result.stdout == payload and result.exit_code == 0

    run_server(main)


def test_spdy_tty_resize_seen_by_stty() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("stty size; read x; stty size", tty=True, stdin=True))
        session = await SpdyExec.connect(url, stdin=True, tty=True)
        assert session.resize_stream is not None and session.stderr is None
        assert session.stdout is not None
        assert await session.stdout.read() == b"24 80\r\n"
        await session.resize(100, 40)
        # Type only once the size is applied (the transport may reorder the streams).
        await asyncio.wait_for(runtime.wait_for(lambda: runtime.resizes[-1:] == [(100, 40)]), 10)
        await session.write_stdin(b"\r")
        result = await session.wait(10)
        assert result.stdout.endswith(b"40 100\r\n") and result.exit_code == 0

    run_server(main)


@pytest.mark.parametrize(
    ("protocol", "status_text"),
    [("v4.channel.k8s.io", False), ("v3.channel.k8s.io", True), ("v2.channel.k8s.io", True)],
)
def test_spdy_older_versions(protocol: str, status_text: bool) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("exit 4"))
        result = await spdy_exec(url, protocols=[protocol])
        assert result.protocol == protocol
        if status_text:
            assert result.exit_code is None and "exit code 4" in result.status.message
        else:
            assert result.exit_code == 4

    run_server(main)


def test_spdy_v1_resets_the_error_stream() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        result = await spdy_exec(
            server.get_exec(exec_request("echo v1")), protocols=["channel.k8s.io"]
        )
        assert result.stdout == b"v1\n" and result.status.success

    run_server(main)


def test_spdy_runtime_failure_is_internal_error() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(ExecRequest("missing-ctr", ("true",), stdout=True))
        result = await spdy_exec(url, stderr=False)
        assert not result.status.success and result.status.reason == "InternalError"
        assert "missing-ctr not found" in result.status.message

    run_server(main)


def test_spdy_ping_is_echoed_during_a_session() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("read x; echo $x", stdin=True))
        session = await SpdyExec.connect(url, stdin=True)
        assert await session.session.ping(5) < 5
        await session.write_stdin(b"pong\n")
        assert (await session.wait(10)).stdout == b"pong\n"

    run_server(main)


def test_spdy_missing_streams_time_out_silently() -> None:
    from streaming import StreamingConfig
    from streaming.client import spdy_connect

    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("true"))
        session, _, reader = await spdy_connect(url, ["v4.channel.k8s.io"])
        await session.open_stream([("streamtype", "error")])  # stdout/stderr never come
        await asyncio.wait_for(session.closed.wait(), 10)
        reader.cancel()
        await session.aclose()
        assert runtime.exec_calls == 0

    run_server(main, config=StreamingConfig(stream_creation_timeout=0.2))


def test_spdy_client_disconnect_kills_the_exec() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("sleep 300"))
        session = await SpdyExec.connect(url)
        await runtime.wait_for(lambda: bool(runtime.running))
        await session.session.aclose()
        await runtime.wait_for(lambda: not runtime.running)

    run_server(main, timeout=20)


def test_spdy_slow_reader_gets_everything_and_holds_the_writer() -> None:
    """Back-pressure: output waits for the client instead of piling up in memory."""

    async def main(server: Server, runtime: HostRuntime) -> None:
        size = 16 * 1024 * 1024
        url = server.get_exec(exec_request(f"head -c {size} /dev/zero"))
        session = await SpdyExec.connect(url)
        await asyncio.sleep(0.5)  # not synchronisation: the reader stalls on purpose
        assert session.stdout is not None
        # While we did not read, the server could not have pushed everything.
        assert session.stdout._buffered < size
        result = await session.wait(30)
        assert len(result.stdout) == size and result.exit_code == 0

    run_server(main)


def test_spdy_over_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.create_default_context(cafile=str(cert))

    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("echo secret"))
        assert url.startswith("https://127.0.0.1:")
        result = await spdy_exec(url, ssl_context=context)
        assert result.stdout == b"secret\n"

    run_server(main, tls_cert_file=str(cert), tls_key_file=str(key))


def test_fifty_concurrent_exec_sessions() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        async def one(i: int) -> None:
            url = server.get_exec(exec_request(f"read x; echo $x-{i}; exit {i % 4}", stdin=True))
            result = await spdy_exec(url, stdin=f"n{i}\n".encode(), timeout=60)
            assert (result.stdout, result.exit_code) == (f"n{i}-{i}\n".encode(), i % 4)

        await asyncio.gather(*(one(i) for i in range(50)))
        assert runtime.exec_calls == 50

    run_server(main, timeout=120)


def test_session_waits_for_the_client_to_close() -> None:
    """The newer upstream ending: outputs and status sent, TCP left open for the client."""

    async def main(server: Server, runtime: HostRuntime) -> None:
        session = await SpdyExec.connect(server.get_exec(exec_request("echo bye")))
        assert session.stdout is not None
        assert await session.stdout.read() == b"bye\n"
        assert await session.stdout.read() == b""
        while await session.error.read():
            pass
        # Everything is delivered, yet the server has not hung up: pings still work.
        assert not session.session.closed.is_set()
        await session.session.ping(5)
        await session.session.goaway()
        await asyncio.wait_for(session.session.closed.wait(), 5)  # now it closes
        await session.close()

    run_server(main)


# --- attach -------------------------------------------------------------------------


def test_attach_stdin_once_sh_exits_on_eof() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        await runtime.add_container("ctr-once", ["sh"], stdin_once=True)
        url = server.get_attach(AttachRequest("ctr-once", stdin=True, stdout=True, stderr=True))
        result = await spdy_exec(url, stdin=b"echo attached; hello\n")
        assert result.stdout == b"attached\n"
        assert b"hello: not found" in result.stderr
        assert result.status.success  # attach reports Success even though sh exited 127

    run_server(main)


# --- WebSocket ----------------------------------------------------------------------


def ws_url(url: str) -> str:
    return "ws" + url[len("http") :]


async def ws_exec(
    url: str, protocol: str, stdin: Sequence[bytes] = (), close_stdin: bool = False
) -> dict[int, bytes]:
    base64_mode = rc.is_base64(protocol)
    got: dict[int, bytes] = {}
    async with ws_connect(ws_url(url), subprotocols=[protocol]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == protocol
        first = await ws.recv()
        assert rc.decode_channel_message(_bytes(first), base64_mode=base64_mode) in (
            (1, b""),
            (2, b""),
            (3, b""),
        )
        for chunk in stdin:
            await ws.send(
                rc.encode_channel_message(0, chunk, base64_mode=base64_mode).decode()
                if base64_mode
                else rc.encode_channel_message(0, chunk, base64_mode=False)
            )
        if close_stdin:
            await ws.send(rc.encode_close_signal(0))
        async for message in ws:
            decoded = rc.decode_channel_message(_bytes(message), base64_mode=base64_mode)
            assert decoded is not None
            got[decoded[0]] = got.get(decoded[0], b"") + decoded[1]
        assert ws.close_code == 1000
    return got


def _bytes(message: Any) -> bytes:
    return message.encode() if isinstance(message, str) else bytes(message)


@pytest.mark.parametrize(
    "protocol",
    [
        "v5.channel.k8s.io",
        "v4.channel.k8s.io",
        "v4.base64.channel.k8s.io",
        "channel.k8s.io",
        "base64.channel.k8s.io",
    ],
)
def test_websocket_exec_protocols(protocol: str) -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        got = await ws_exec(
            server.get_exec(exec_request("echo out; echo err >&2; exit 3")), protocol
        )
        assert got[1] == b"out\n" and got[2] == b"err\n"
        if rc.version_of(protocol).json_status:
            assert rc.parse_status(got[3]).exit_code == 3
        else:
            assert got[3].startswith(b"command terminated with non-zero exit code")

    run_server(main)


def test_websocket_v5_close_signal_is_stdin_eof() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("cat; echo done", stdin=True))
        got = await ws_exec(url, "v5.channel.k8s.io", [b"abc", b"def\n"], close_stdin=True)
        assert got[1] == b"abcdef\ndone\n" and rc.parse_status(got[3]).success

    run_server(main)


def test_websocket_tty_resize() -> None:
    async def main(server: Server, runtime: HostRuntime) -> None:
        url = server.get_exec(exec_request("read x; stty size", tty=True, stdin=True))
        resize = b"\x04" + b'{"Width":100,"Height":40}'
        got = await ws_exec(url, "v4.channel.k8s.io", [b"\r"])
        assert b"24 80" in got[1]
        url = server.get_exec(exec_request("read x; stty size", tty=True, stdin=True))
        async with ws_connect(ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
            await ws.recv()
            await ws.send(resize)
            applied = runtime.wait_for(lambda: runtime.resizes[-1:] == [(100, 40)])
            await asyncio.wait_for(applied, 10)
            await ws.send(b"\x00\r")
            out = b""
            async for message in ws:
                if _bytes(message)[0] == 1:
                    out += _bytes(message)[1:]
        assert out.endswith(b"40 100\r\n")

    run_server(main)


def test_kubernetes_python_client_exec() -> None:
    """The ``kubernetes`` package's own WebSocket stream client, against our URL."""
    from kubernetes.client import Configuration
    from kubernetes.stream import ws_client

    async def main(server: Server, runtime: HostRuntime) -> None:
        def client_side(url: str) -> tuple[str, str, int | None, str]:
            config = Configuration()
            config.host = server.base_url
            client = ws_client.websocket_call(  # type: ignore[no-untyped-call]
                config, "GET", url, _preload_content=False
            )
            client.write_stdin("from python\n")
            client.close_channel(ws_client.STDIN_CHANNEL)  # v5 CLOSE, honoured by rktlet
            client.run_forever(timeout=20)
            result = client.read_stdout(), client.read_stderr(), client.returncode
            client.close()
            client.sock.shutdown()  # the library leaves the socket open once the server closed
            return (*result, client.subprotocol)

        url = server.get_exec(exec_request("read x; echo got $x; echo e >&2; exit 3", stdin=True))
        out, err, code, protocol = await asyncio.to_thread(client_side, url)
        assert (out, err, code, protocol) == ("got from python\n", "e\n", 3, "v5.channel.k8s.io")

    run_server(main)


# --- captured crictl sessions, replayed against rktlet ------------------------------


REPLAYS: dict[str, tuple[ExecRequest | AttachRequest, bytes, bytes | None]] = {
    "exec_spdy_echo": (
        ExecRequest("c1", ("echo", "-n", "hello"), stdout=True, stderr=True),
        b"hello",
        b'{"metadata":{},"status":"Success"}',
    ),
    "exec_spdy_exit7": (
        ExecRequest("c1", ("sh", "-c", "exit 7"), stdout=True, stderr=True),
        b"",
        None,
    ),
    "exec_spdy_tty_resize_stty": (
        ExecRequest("c1", ("sh",), tty=True, stdin=True, stdout=True),
        b"40 100\r\n",
        None,
    ),
    # printf hello | crictl attach -i: sh reads "hello", fails it, exits on stdin EOF.
    "attach_spdy_stdin_once": (
        AttachRequest("once", stdin=True, stdout=True, stderr=True),
        b"",
        b'{"metadata":{},"status":"Success"}',
    ),
}


@pytest.mark.parametrize("name", sorted(REPLAYS))
def test_crictl_bytes_replayed_against_rktlet(name: str) -> None:
    """Send crictl's recorded bytes (token swapped) and decode what rktlet answers."""
    request, stdout_has, exact_status = REPLAYS[name]
    cap = load(name)
    expected_status = [
        bytes.fromhex(f["data_hex"])
        for f in cap.frames("s2c")
        if f["type"] == "DATA" and f.get("stream_label") == "error" and f["data_hex"]
    ]

    async def main(server: Server, runtime: HostRuntime) -> None:
        if isinstance(request, AttachRequest):
            await runtime.add_container("once", ["sh"], stdin_once=True)
            url = server.get_attach(request)
        else:
            url = server.get_exec(request)
        head = cap.request_head()
        old = head.split(b" ", 2)[1]
        head = head.replace(old, ("/" + url.split("/", 3)[3]).encode(), 1)
        body = cap.after_head("c2s")
        labels = {
            f["stream_id"]: f["headers"][0][1][0]
            for f in cap.frames("c2s")
            if f["type"] == "SYN_STREAM"
        }
        # Drop the client's own trailing shutdown frames: it sent them after reading.
        # crictl typed only after its resizes had taken effect (it saw the shell
        # redraw): hold the input back until the runtime has applied them too.
        buf, decoder = bytearray(body), spdy.HeaderBlockDecoder()
        before_input, typed = b"", b""
        last_size: tuple[int, int] | None = None
        while len(buf) >= 8:
            before = bytes(buf)
            frame = spdy.maybe_read_frame(buf, decoder)
            if frame is None or isinstance(frame, spdy.GoAwayFrame | spdy.RstStreamFrame):
                break
            raw = before[: len(before) - len(buf)]
            label = labels.get(getattr(frame, "stream_id", -1))
            if typed or (isinstance(frame, spdy.DataFrame) and label == "stdin"):
                typed += raw
            else:
                before_input += raw
                if isinstance(frame, spdy.DataFrame) and label == "resize":
                    size = json.loads(frame.data)
                    last_size = (size["Width"], size["Height"])
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + before_input)
        await writer.drain()
        response = await reader.readuntil(b"\r\n\r\n")
        if last_size is not None:
            # Sizes sent back to back may be coalesced (newest wins): wait for the last.
            applied = runtime.wait_for(lambda: runtime.resizes[-1:] == [last_size])
            await asyncio.wait_for(applied, 10)
        writer.write(typed)
        await writer.drain()
        # crictl offers v5 first; rktlet serves it (containerd would pick v4).
        assert b"X-Stream-Protocol-Version: v5.channel.k8s.io" in response
        inbound, inflate = bytearray(), spdy.HeaderBlockDecoder()
        data: dict[str, bytes] = {}
        fins: set[str] = set()
        while "error" not in fins:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            assert chunk
            inbound += chunk
            while (frame := spdy.maybe_read_frame(inbound, inflate)) is not None:
                if isinstance(frame, spdy.DataFrame):
                    label = labels[frame.stream_id]
                    data[label] = data.get(label, b"") + frame.data
                    if frame.fin:
                        fins.add(label)
        writer.close()
        await writer.wait_closed()
        assert {"stdout", "error"} <= fins
        assert stdout_has in data.get("stdout", b"")
        if isinstance(request, AttachRequest):
            assert b"hello: not found" in data["stderr"]
        status = data["error"]
        if exact_status is not None:
            assert status == exact_status == expected_status[0]
        else:
            assert json.loads(status)["details"] == json.loads(expected_status[0])["details"]

    run_server(main)


def test_idle_session_is_closed_and_its_exec_killed() -> None:
    from streaming import StreamingConfig

    async def main(server: Server, runtime: HostRuntime) -> None:
        session = await SpdyExec.connect(server.get_exec(exec_request("sleep 300")))
        await asyncio.wait_for(session.session.closed.wait(), 10)
        assert session.session.goaway_received.is_set()
        await runtime.wait_for(lambda: not runtime.running)
        await session.close()

    run_server(main, config=StreamingConfig(idle_timeout=0.3))
