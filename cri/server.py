"""``rktlet serve``: the gRPC server on a unix socket, and its lifetime.

SIGTERM (or SIGINT) stops serving and closes the daemon's connections; the
pods, their monitors and containers keep running, and the next daemon picks
them up (:func:`cri.recovery.recover`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import grpc

from cri.api import api_pb2_grpc
from cri.config import Config
from cri.monitors import prestart_fork_server
from cri.recovery import recover
from cri.runtime import Runtime
from cri.service import ImageServicer, RuntimeServicer

log = logging.getLogger("rktlet")

MAX_MESSAGE = 40 << 20  # ExecSync may answer 2 x 16 MiB of output


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    runtime = Runtime(config)
    await recover(runtime)
    await prestart_fork_server()
    front = None
    if config.stream_address:
        from cri.streaming_runtime import StreamingFront

        front = StreamingFront(
            runtime,
            config.stream_address,
            tls_cert=config.stream_tls_cert,
            tls_key=config.stream_tls_key,
        )
        await front.start()
        runtime.streaming = front
        log.info("streaming server on %s", front.server.base_url)
    metrics = None
    if config.metrics_address:
        from cri.metrics_server import MetricsServer

        metrics = MetricsServer(runtime, config.metrics_address)
        metrics.start()
        log.info("metrics on %s (/metrics)", metrics.address)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
    )
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(RuntimeServicer(runtime), server)
    api_pb2_grpc.add_ImageServiceServicer_to_server(ImageServicer(runtime.image_service), server)
    socket_path = config.socket
    os.makedirs(os.path.dirname(socket_path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    old_umask = os.umask(0o117)  # the socket is 0660 from its first instant
    try:
        server.add_insecure_port(f"unix://{socket_path}")
        await server.start()
    finally:
        os.umask(old_umask)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("serving CRI on %s (root %s, run dir %s)", socket_path, config.root, config.run_dir)
    if ready is not None:
        ready.set()
    runtime.start()
    try:
        await stop.wait()
    finally:
        log.info("stopping; pods keep running")
        await server.stop(grace=2)
        if front is not None:
            await front.stop()
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        await runtime.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(socket_path)
