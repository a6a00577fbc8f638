"""Reading small sysfs and procfs files cheaply, again and again.

The sampler reads the same few files (``energy_uj``, ``/proc/stat``) many
times a second. Opening a file each time costs more than reading it, so
:class:`FileReader` keeps each one open and re-reads it with ``pread`` at
offset 0, which makes the kernel produce fresh contents. Blocking: call it
from the sampler's thread, never from the event loop.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

MAX_BYTES = 4096
"""Only the start of a file is read (``/proc/stat``'s first line is all that is used)."""


class FileReader:
    """Reads files through descriptors kept open; raises OSError like ``open``."""

    def __init__(self) -> None:
        self._fds: dict[Path, int] = {}
        self._lock = threading.Lock()

    def __call__(self, path: Path) -> str:
        """The file's first :data:`MAX_BYTES`, decoded and stripped."""
        fd = self._fds.get(path)
        if fd is None:
            with self._lock:
                fd = self._fds.get(path)
                if fd is None:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    self._fds[path] = fd
        return os.pread(fd, MAX_BYTES, 0).decode("ascii", "replace").strip()

    def close(self) -> None:
        """Close every descriptor (the reader opens them again if used)."""
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def read_once(path: Path) -> str:
    """Open, read and close a small file (for files read only at start-up)."""
    with path.open("rb") as f:
        return f.read().decode("ascii", "replace").strip()
