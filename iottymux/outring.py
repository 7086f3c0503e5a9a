"""The attach output ring: an app's output written once, read by every attacher.

Theory of operation
-------------------
Fanning a read out through sockets copies it into every attacher's socket buffer:
with a hundred attachers the monitor spends its time in the kernel copying, not
logging.  An attacher that says ``ring`` in its ``HELLO`` is instead handed a
read-only descriptor of this ring (a ``memfd``, so always memory, never disk) and
the monitor writes each read into the ring once, whatever the number of
attachers; the socket then carries only small ``RING`` frames ("there is output
for you in the ring, at least up to offset N": a wake-up for an attacher that
has read everything) and the attacher's ``ACK`` frames ("I have read up to N").
An attacher that is behind never waits for the monitor: it reads on up to the
*write end* the header publishes.  See :mod:`iottymux.attachproto` for the
frames.

The ring holds the same byte stream a socket attacher receives: ``STDOUT`` and
``STDERR`` frames, one after the other.  Offsets are absolute (bytes written
since the ring was made, never reset); offset ``x`` lives at
``DATA_START + x % capacity``.  The first page holds a header::

    magic "IOTRING1" | capacity (u64) | valid from (u64) | write end (u64)

the numbers big-endian.  *write end* is where the output written so far ends;
the monitor raises it after writing the bytes, so whatever a reader finds there
is complete.  *valid from* is the oldest offset not yet overwritten: before the
monitor overwrites a region it first raises *valid from* past it, so a reader
that copies ``[a, b)`` out and then finds *valid from* still at most ``a`` knows
its copy is intact; otherwise it has been lapped.  (Each update is its own
``pwrite``, in that order.)  The monitor never laps an attacher it still serves:
it disconnects one that falls too far behind (see :mod:`iottymux.attach`), and
the ring is larger than that.

Readers use ``pread`` (never ``mmap``): reading is a copy the reader pays for, the
syscalls order it against the monitor's writes on every architecture, and
the monitor can punch the pages out when nobody reads (:meth:`OutputRing.idle`).
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from iottymux.logformat import Buffer

MAGIC = b"IOTRING1"
HEADER = struct.Struct(">8sQQQ")
#: Where the data starts: the header has a page to itself.
DATA_START = 4096
_VALID_FROM = 16  # byte offsets of the fields the monitor updates
_WRITE_END = 24
_OFFSET = struct.Struct(">Q")


class RingLapped(Exception):
    """The reader fell so far behind that its data has been overwritten."""


class OutputRing:
    """The monitor's side: a memfd ring of ``capacity`` bytes of frames."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.write_end = 0
        self.valid_from = 0
        self.fd = os.memfd_create("iottymux-attach-ring", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, DATA_START + capacity)
            os.pwrite(self.fd, HEADER.pack(MAGIC, capacity, 0, 0), 0)
        except BaseException:
            os.close(self.fd)
            raise
        self._dirty = False

    def reader_fd(self) -> int:
        """A new read-only descriptor of the ring, to hand to an attacher (caller closes it)."""
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def append(self, parts: Sequence[Buffer]) -> int:
        """Write ``parts`` (one frame) at the end; the new write end."""
        size = sum(len(p) for p in parts)
        if size > self.capacity:
            raise ValueError(f"a frame of {size} bytes does not fit a {self.capacity}-byte ring")
        start = self.write_end
        end = start + size
        if end - self.capacity > self.valid_from:
            # Announce the overwrite before making it.
            self.valid_from = end - self.capacity
            os.pwrite(self.fd, _OFFSET.pack(self.valid_from), _VALID_FROM)
        pos = start % self.capacity
        written = 0
        if pos + size <= self.capacity:
            written = os.pwritev(self.fd, parts, DATA_START + pos)  # the usual case
        if written < size:
            rest = memoryview(b"".join(parts))[written:]
            pos = (pos + written) % self.capacity
            while rest:
                done = os.pwrite(self.fd, rest[: self.capacity - pos], DATA_START + pos)
                rest = rest[done:]
                pos = (pos + done) % self.capacity
        self.write_end = end
        os.pwrite(self.fd, _OFFSET.pack(end), _WRITE_END)  # published only once written
        self._dirty = True
        return end

    def idle(self) -> None:
        """Nobody reads the ring now: give its pages back (offsets go on where they were)."""
        if not self._dirty:
            return
        # Everything written so far is gone for any reader that comes back.
        self.valid_from = self.write_end
        os.ftruncate(self.fd, DATA_START)
        os.ftruncate(self.fd, DATA_START + self.capacity)
        os.pwrite(self.fd, HEADER.pack(MAGIC, self.capacity, self.valid_from, self.write_end), 0)
        self._dirty = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class RingReader:
    """An attacher's side: reads ``[start, end)`` of the ring it was handed."""

    def __init__(self, fd: int) -> None:
        """Take ``fd`` (closed here if it is no ring)."""
        self.fd = fd
        try:
            magic, capacity, _valid, _end = HEADER.unpack(os.pread(fd, HEADER.size, 0))
            if magic != MAGIC or capacity <= 0:
                raise ValueError("not an iottymux attach ring")
        except BaseException:
            os.close(fd)
            raise
        self.capacity: int = capacity

    def read(self, start: int, end: int) -> bytes:
        """The ring's bytes ``[start, end)``; :class:`RingLapped` if they were overwritten."""
        buffer = bytearray(end - start)
        self.read_into(buffer, start, end)
        return bytes(buffer)

    def read_into(self, buffer: bytearray | memoryview, start: int, end: int) -> int:
        """Copy ``[start, end)`` into the start of ``buffer`` (a reader's own, reused);
        the size.  :class:`RingLapped` if the bytes were overwritten."""
        size = end - start
        if size < 0 or size > self.capacity or size > len(buffer):
            raise ValueError(f"cannot read [{start}, {end}) from a {self.capacity}-byte ring")
        view = memoryview(buffer)
        done = 0
        while done < size:
            pos = (start + done) % self.capacity
            want = min(size - done, self.capacity - pos)
            got = os.preadv(self.fd, [view[done : done + want]], DATA_START + pos)
            if got <= 0:
                raise RingLapped("the ring is shorter than its header says")
            done += got
        # Only now: whatever overwrote our bytes announced itself before it did.
        if self.valid_from() > start:
            raise RingLapped(f"output from offset {start} was overwritten before it was read")
        return size

    def valid_from(self) -> int:
        (valid,) = _OFFSET.unpack(os.pread(self.fd, _OFFSET.size, _VALID_FROM))
        return int(valid)

    def write_end(self) -> int:
        """Where the output written so far ends (every byte before it is there)."""
        (end,) = _OFFSET.unpack(os.pread(self.fd, _OFFSET.size, _WRITE_END))
        return int(end)

    def available(self, start: int, told: int) -> int:
        """How far to read from ``start``: past ``told`` (a RING's offset) when the
        monitor has written more since, but never more than the ring holds."""
        return min(max(told, self.write_end()), start + self.capacity)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
