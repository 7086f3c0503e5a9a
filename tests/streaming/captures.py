"""Real crictl <-> containerd streaming exchanges, recorded byte for byte (tests/data/interop).

They are protocol facts the tests replay and compare against; the repository carries
them (see tests/data/interop/README.md for how they were made and what each holds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

INTEROP = Path(__file__).resolve().parents[1] / "data" / "interop"


@dataclass(frozen=True)
class Capture:
    name: str
    doc: dict[str, Any]

    @property
    def conn(self) -> dict[str, Any]:
        conn: dict[str, Any] = self.doc["connections"][0]
        return conn

    def stream(self, direction: str) -> bytes:
        return b"".join(
            bytes.fromhex(s["hex"]) for s in self.doc["segments"] if s["dir"] == direction
        )

    def after_head(self, direction: str) -> bytes:
        """The bytes after the HTTP head (the upgraded protocol)."""
        data = self.stream(direction)
        return data[data.index(b"\r\n\r\n") + 4 :]

    def request_head(self) -> bytes:
        data = self.stream("c2s")
        return data[: data.index(b"\r\n\r\n") + 4]

    def packets(self, direction: str) -> list[bytes]:
        """Every TCP payload in one direction, unmerged (spdystream's write pattern)."""
        return [
            bytes.fromhex(p["hex"])
            for p in self.conn["tcp_packets_with_payload"]
            if p["dir"] == direction
        ]

    def frames(self, direction: str) -> list[dict[str, Any]]:
        key = "spdy_frames" if "spdy_frames" in self.conn else "websocket_frames"
        return [f for f in self.conn.get(key, []) if f["dir"] == direction]


@cache
def load(name: str) -> Capture:
    # A missing capture is a broken checkout, not a reason to skip.
    return Capture(name, json.loads((INTEROP / f"{name}.json").read_text()))


SPDY_CAPTURES = [
    "exec_spdy_echo",
    "exec_spdy_exit7",
    "exec_spdy_ping",
    "exec_spdy_tty_resize",
    "exec_spdy_tty_resize_stty",
    "attach_spdy_stdin_once",
    "portforward_spdy",
]
WS_CAPTURES = ["exec_wsv4_echo", "exec_wsv4_exit7", "exec_wsv4b64_echo", "exec_wsv4_tty_resize"]
