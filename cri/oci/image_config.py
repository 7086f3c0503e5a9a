"""The parts of an OCI image configuration that shape a container's process."""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cri.errors import InvalidArgument

__all__ = ["ImageConfig", "parse_stop_signal"]


def _strings(value: Any, field: str) -> tuple[str, ...]:
    # Docker writes null for an unset Entrypoint/Cmd/Env.
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"image config {field}: expected a list of strings")
    return tuple(value)


def _string(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"image config {field}: expected a string")
    return value


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """``config.Entrypoint``, ``Cmd``, ``Env``, ``WorkingDir``, ``User``, ``StopSignal``."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ImageConfig:
        """Parse an image configuration document (the whole JSON object, as stored).

        The runtime-relevant fields live under ``config``; a document without it (a
        ``FROM scratch`` image with nothing set) yields the empty configuration.
        """
        if not isinstance(doc, Mapping):
            raise InvalidArgument("image config: expected a JSON object")
        cfg = doc.get("config")
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise InvalidArgument("image config config: expected an object")
        return cls(
            entrypoint=_strings(cfg.get("Entrypoint"), "config.Entrypoint"),
            cmd=_strings(cfg.get("Cmd"), "config.Cmd"),
            env=_strings(cfg.get("Env"), "config.Env"),
            working_dir=_string(cfg.get("WorkingDir"), "config.WorkingDir"),
            user=_string(cfg.get("User"), "config.User"),
            stop_signal=_string(cfg.get("StopSignal"), "config.StopSignal"),
        )


def parse_stop_signal(value: str, field: str = "image config config.StopSignal") -> int | None:
    """The number of a signal written as ``SIGTERM``, ``TERM`` or ``15``; None when empty.

    ``SIGRTMIN+3`` style names are accepted, as the image spec allows them.
    """
    text = value.strip().upper()
    if not text:
        return None
    if text.isdigit():
        number = int(text)
        if 0 < number < signal.NSIG:
            return number
        raise InvalidArgument(f"{field}: {value!r} is not a valid signal number")
    if not text.startswith("SIG"):
        text = "SIG" + text
    for base, sign in (("SIGRTMIN+", 1), ("SIGRTMAX-", -1)):
        if text.startswith(base) and text[len(base) :].isdigit():
            anchor = signal.SIGRTMIN if sign > 0 else signal.SIGRTMAX
            number = int(anchor) + sign * int(text[len(base) :])
            if signal.SIGRTMIN <= number <= signal.SIGRTMAX:
                return number
            raise InvalidArgument(f"{field}: {value!r} is out of the real-time signal range")
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise InvalidArgument(f"{field}: unknown signal {value!r}") from None
