"""Atomic file writes: a reader (or a crash) never sees half a file.

Checkpoints, run files, sweep results and the pinyin cache are all written to a temporary file in
the target's directory, flushed to disk, then renamed over the target with `os.replace`: the old
file stays intact until the new one is complete. `tempfile.mkstemp` creates owner-only files, so
the mode is set to what a plain `open()` would give (0o666 less the umask).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, BinaryIO

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file_object)` on a temp file beside `path`, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
