"""Atomic file writes, and the one way this project writes JSON.

Atomic: checkpoints, run files, sweep results and the pinyin cache are all written to a temporary
file in the target's directory, flushed to disk, then renamed over the target with `os.replace`:
the old file stays intact until the new one is complete, so a reader (or a crash) never sees half a
file. `tempfile.mkstemp` creates owner-only files, so the mode is set to what a plain `open()`
would give (0o666 less the umask).

Strict JSON: Python's `json` writes `NaN` and `Infinity`, which are not JSON; `jq`, JavaScript and
most other readers reject the whole file. A diverged run's loss or a run without a validation split
is a real non-finite number, so every JSON file and line the project writes goes through
`strict_json`, where such a number becomes `null`.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

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


def _finite_or_none(value: Any) -> Any:
    """The same structure with every NaN / ±inf float replaced by None (dicts, lists, tuples walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, indent: int | None = None) -> str:
    """JSON text that every JSON reader accepts: non-finite floats become null."""
    return json.dumps(_finite_or_none(value), indent=indent, allow_nan=False)


def atomic_write_json(path: str | Path, value: Any) -> None:
    """`value` as strict, indented JSON (plus a final newline), written atomically."""
    atomic_write_text(path, strict_json(value, indent=2) + "\n")
