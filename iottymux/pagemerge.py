"""Offer a monitor's private memory to the kernel's same-page merging (KSM).

Every pod's monitor runs the same interpreter on the same code, forked from one
fork server.  CPython 3.11 writes to every object it uses — a reference count, a
code object's bytecode when it specialises it — so each monitor soon holds its own
copy of most of the pages it shares with the fork server at first, and those
copies are byte-for-byte alike from one monitor to the next (about 2.5 MiB of a
monitor's private memory at 30 pods; ``bench/fork_floor.py`` shows which objects).
KSM can fold such pages back into one.

The kernel only merges memory that asked for it (``madvise(MADV_MERGEABLE)``) and
only while the host runs ``ksmd`` (``/sys/kernel/mm/ksm/run`` is ``1``, the
operator's choice).  The advice is a flag on each mapping: it costs nothing while
KSM is off, follows the mapping into a forked child, and is dropped by ``exec`` —
so the OCI runtime and the containers it starts are never offered, only the
monitor's own memory.  ``PR_SET_MEMORY_MERGE`` would cover the whole process at
once, but a child keeps it across ``exec``, which would hand every container's
memory to KSM behind its back.

The fork server advises its memory before it forks (each monitor inherits the
flag); a monitor advises again when it goes idle, for mappings made since, but
only while ksmd runs: with KSM off, the advising itself (``/proc/self/maps``,
ctypes) would cost each monitor ~100 KiB of pages it otherwise leaves shared.
``IOTTYMUX_PAGE_MERGE=0`` in the environment turns the advice off.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: ``madvise`` advice numbers (asm-generic/mman-common.h).
MADV_MERGEABLE = 12

#: The environment variable that turns the advice off when it is ``0``.
ENV = "IOTTYMUX_PAGE_MERGE"

KSM_RUN = "/sys/kernel/mm/ksm/run"


def enabled(environ: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """Whether this process should offer its memory (not ``IOTTYMUX_PAGE_MERGE=0``)."""
    env = os.environ if environ is None else environ
    return env.get(ENV, "1") != "0"


def ksm_running(path: str = KSM_RUN) -> bool:
    """Whether the host's ``ksmd`` merges pages now (``run`` is ``1``).

    Plain descriptor calls: an idle monitor asks this each time it goes quiet,
    and every interpreter object it touched would be a page of its own.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return os.read(fd, 16).strip() == b"1"
    except OSError:
        return False
    finally:
        os.close(fd)


def mergeable_ranges(maps_text: str) -> list[tuple[int, int]]:
    """The private, writable mappings of a ``/proc/PID/maps`` text, as (start, end).

    Those are where a forked process's copies of shared pages land: the
    interpreter's arenas and other anonymous memory, the C heap, the writable data
    of libpython and the extension modules, the stack.  Shared mappings and
    read-only ones (code, constants) are never copied; ``[vsyscall]`` and the vDSO
    are the kernel's.
    """
    ranges: list[tuple[int, int]] = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            continue
        perms = fields[1]
        if len(perms) < 4 or perms[1] != "w" or perms[3] != "p":
            continue
        name = fields[5].strip() if len(fields) > 5 else ""
        if name in ("[vsyscall]", "[vdso]", "[vvar]") or name.startswith("/dev/"):
            continue
        low, _, high = fields[0].partition("-")
        ranges.append((int(low, 16), int(high, 16)))
    return ranges


class Offer:
    """Offers this process's private writable mappings to KSM, each range once."""

    def __init__(self, libc: Any) -> None:
        import ctypes

        self._madvise = libc.madvise
        self._madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        self._madvise.restype = ctypes.c_int
        self._offered: set[tuple[int, int]] = set()

    def __call__(self) -> int:
        """Offer the mappings not offered yet; how many took the advice.

        A mapping that refuses (a kernel without KSM says EINVAL, some special
        mappings too) is left as it is: the advice is an offer, never a requirement.
        """
        try:
            with open("/proc/self/maps") as maps:
                text = maps.read()
        except OSError:
            return 0
        advised = 0
        for low, high in mergeable_ranges(text):
            if (low, high) in self._offered:
                continue
            self._offered.add((low, high))
            if self._madvise(low, high - low, MADV_MERGEABLE) == 0:
                advised += 1
        return advised


def advise(libc: Any) -> int:
    """Offer every private writable mapping of this process once; how many took it."""
    return Offer(libc)()
