"""The benchmarks' log writer: ``bench/writer.c``, compiled static at run time.

Every runtime and every limit row runs the same binary (bind-mounted into CRI
containers, copied into conmon's rootfs, run directly for the limit), so the
writer costs them all the same and never bounds what a log path can take.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("writer.c")
#: Where CRI containers see the writer (a read-only bind mount).
CONTAINER_PATH = "/bench-writer"


def build_writer(directory: Path) -> Path:
    """Compile ``writer.c`` with ``gcc -static -O2`` into ``directory``; the binary."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("bench/writer.c needs gcc (apt-get install -y gcc libc6-dev)")
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "writer"
    done = subprocess.run(
        [gcc, "-static", "-O2", "-Wall", "-Werror", "-o", str(binary), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot build {SOURCE}: {done.stderr.strip()}")
    return binary


def writer_args(line_size: int, total: int, then_sleep: int = 0) -> list[str]:
    """The writer's arguments: ``total`` bytes of ``line_size``-byte lines, then a sleep."""
    args = [str(line_size), str(total)]
    return [*args, str(then_sleep)] if then_sleep else args
