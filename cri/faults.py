"""Test-only fault injection: the daemon SIGKILLs itself at a named point.

``RKTLET_FAULT_KILL_AT`` names one or more points (comma-separated); when the
daemon reaches one it kills itself with SIGKILL, exactly as an OOM kill or a
node's ``kill -9`` would, half-way through an RPC.  The fault suite
(``tests/faults``) uses it to prove that every RPC of the pod life cycle can be
interrupted at its worst moment and completed by the next daemon.  Unset (as
in production), :func:`point` is one falsy test.

Points are ``<Rpc>:<step>``; see the calls of :func:`point` for the steps.
"""

from __future__ import annotations

import os
import signal

_POINTS = frozenset(p for p in os.environ.get("RKTLET_FAULT_KILL_AT", "").split(",") if p)

#: Whether any point is armed (callers that must build a name first test this).
ACTIVE = bool(_POINTS)


def point(name: str) -> None:
    if _POINTS and name in _POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
