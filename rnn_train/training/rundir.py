"""RunDir: the files of one run directory, and how a stored config compares with a new one.

    runs/<log.name>/
        config.yaml               the resolved config (written first, before training starts)
        best.pt  last.pt          checkpoints (see training.state for what they hold)
        metrics.json              the TrainResult of a run that ended (none while it runs again or is interrupted)
        explore.html  gradflow/   what explore and gradflow wrote from its checkpoints (by default)
        events.out.tfevents.*     TensorBoard: the hparams record and text samples
        train/ val/ test/         TensorBoard: each split's series (training/events.py)
(the names: rnn_train/runfiles.py)

Why one object: train.py (--force, "already holds a run"), the trainer (writing), the sweep
(finished / resumable / another config) and the benchmark (reading metrics) all need the same
names and the same idea of "the same config"; spelled out in each, they drift apart.

Only rank 0 of a multi-process run writes here; the other ranks never construct the writers' side.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Iterator

import yaml

from rnn_train.config import Config, build_config, config_to_yaml
from rnn_train.errors import UserError
from rnn_train.files import atomic_write_json, atomic_write_text, staged_glob, writing
from rnn_train.runfiles import BEST, CONFIG, DERIVED, EXPLORE_MARK, EXPLORE_PAGE, LAST, METRICS, RUN_FILES


@contextlib.contextmanager
def claimed(path: Path) -> Iterator[None]:
    """Hold, inside, this machine's lock on run directory `path`: a second training started into the
    same directory (two shells, two `train.py` with the same log.name) stops with one line instead of
    both writing it, one run's files silently replacing the other's. The lock is a file in the
    per-user cache (rnn_train.kernels.build.cache_root, nothing written beside the runs), keyed by
    the directory's absolute path, and released by the kernel when the process ends, however it
    ends. Where no lock can be taken (no fcntl, an unwritable cache) training goes on without one.
    Re-entrant in the thread that holds it (`train()` claims the directory its command already
    holds); another thread of the same process is refused like another process."""
    real = os.path.realpath(path)  # one key for every spelling of the directory (runs/../runs/x, a link to it)
    holder = _HELD.get(real)
    if holder == threading.get_ident():
        yield
        return
    if holder is not None:
        raise _in_use(path)
    try:
        import fcntl

        from rnn_train.kernels.build import cache_root

        locks = cache_root() / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(os.fsencode(real)).hexdigest()[:24]
        fd = os.open(locks / f"{key}.lock", os.O_CREAT | os.O_RDWR, 0o666)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(path) from None
        _HELD[real] = threading.get_ident()
        try:
            yield
        finally:
            del _HELD[real]
    finally:
        os.close(fd)  # releases the lock


_HELD: dict[str, int] = {}
"""The run directories (real paths) whose lock this process holds -> the thread that holds each."""


def _in_use(path: Path) -> UserError:
    return UserError(f"{path} is in use: another training on this machine is writing it; wait for it to end, or "
                     f"train into another directory (log.name=...)")


IGNORED_IN_MATCH = {("train", "threads"), ("train", "device")}
"""Config keys that do not change what a run computes (nor does the `log` section)."""


def comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A config dict without the keys that do not change what a run computes."""
    out = {}
    for section, body in cfg_dict.items():
        if section == "log" or not isinstance(body, dict):
            continue
        out[section] = {k: v for k, v in body.items() if (section, k) not in IGNORED_IN_MATCH}
    return out


def portable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """`comparable`, less data.paths: what a run computes wherever its corpus lies (another machine
    may read the same text under another path; the study a tune or sweep joins with --study)."""
    out = comparable(cfg_dict)
    out.get("data", {}).pop("paths", None)
    return out


def config_changes(old: dict[str, Any], new: dict[str, Any], keys: tuple[str, ...] | None = None) -> list[str]:
    """'section.key: old -> new' for each key whose value differs between two config dicts (both
    normalised through build_config, so a key an older version did not write has its default).
    `keys` limits the comparison to those sections ("model") or dotted keys ("model.cell")."""
    changes = []
    for section, body in new.items():
        for key, value in body.items():
            dotted = f"{section}.{key}"
            if keys is not None and section not in keys and dotted not in keys:
                continue
            before = old.get(section, {}).get(key)
            if before != value:
                changes.append(f"{dotted}: {before!r} -> {value!r}")
    return changes


def normalised(cfg_dict: dict[str, Any], source: str) -> dict[str, Any]:
    """A stored config dict as this version would write it (defaults for keys added since)."""
    return build_config(cfg_dict, source=source).to_dict()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return str(self.path)

    @property
    def best(self) -> Path:
        return self.path / BEST

    @property
    def last(self) -> Path:
        return self.path / LAST

    # -- what is there -------------------------------------------------------------------------------
    def existing(self) -> list[str]:
        """The run files present (config.yaml, checkpoints, metrics.json), in that order."""
        return [name for name in (BEST, LAST, METRICS, CONFIG) if (self.path / name).exists()]

    def holds_run(self) -> bool:
        """A checkpoint is there: starting a new run here would destroy a run."""
        return self.best.exists() or self.last.exists()

    def stored_config(self) -> dict[str, Any] | None:
        """The config.yaml of this run as a normalised dict; None if absent or unreadable."""
        path = self.path / CONFIG
        try:
            return normalised(yaml.safe_load(path.read_text(encoding="utf-8")), str(path))
        except (OSError, yaml.YAMLError, UserError):
            return None

    def read_metrics(self) -> dict[str, Any] | None:
        """metrics.json, with the nulls that stand for NaN turned back into NaN, and a perplexity's
        null beside a finite loss into inf (exp overflowed: a diverged run); None if absent."""
        metrics = self.read_json(METRICS)
        if metrics is None:
            return None
        out = {k: (math.nan if v is None else v) for k, v in metrics.items()}
        for split in ("val", "test"):
            loss = out.get(f"{split}_loss")
            if metrics.get(f"{split}_ppl", 0) is None and isinstance(loss, (int, float)) and math.isfinite(loss):
                out[f"{split}_ppl"] = math.inf
        return out

    def read_json(self, name: str) -> dict[str, Any] | None:
        return _read_json(self.path / name)

    def status(self, cfg: Config) -> str:
        """What is here relative to a planned run of `cfg`: 'done' (finished with this config),
        'resume' (last.pt to continue), 'new', or 'mismatch' (a run of another config)."""
        stored = self.stored_config()
        metrics = self.read_json(METRICS)
        if stored is not None and comparable(stored) != comparable(cfg.to_dict()) and \
                (metrics is not None or self.last.exists()):
            return "mismatch"
        if metrics is not None and stored is not None and not metrics.get("interrupted", False):
            return "done"
        return "resume" if self.last.exists() else "new"

    def config_diff(self, cfg: Config, limit: int = 4) -> str:
        """How `cfg` differs from the stored config, for an error message."""
        diffs = config_changes(comparable(self.stored_config() or {}), comparable(cfg.to_dict()))
        return ", ".join(diffs[:limit]) + (" ..." if len(diffs) > limit else "")

    # -- writing -------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Delete what an earlier run wrote here (RUN_FILES), with what the tools made from its
        checkpoints where it has any (DERIVED: explore's own page, not a file of that name someone
        else wrote), and the directories that leaves empty. Nothing else: nothing through a link to
        a directory (a link itself goes like a file), nothing outside. The checkpoints and the config
        go last, so that a file that cannot be removed (the error names it) leaves the run resumable."""
        emptied = set()
        for f in self._cleared():  # in the patterns' order
            with writing(f):  # a read-only file or directory is one line naming it, like a full disk
                f.unlink()
            emptied.update(p for p in f.parents if self.path in p.parents)
        for d in sorted(emptied, key=lambda p: len(p.parts), reverse=True):  # the deepest first
            with writing(d):
                if not any(d.iterdir()):
                    d.rmdir()

    def _cleared(self) -> list[Path]:
        """The files `clear` removes, in the order it removes them."""
        if not self.path.is_dir():
            return []
        last = (CONFIG, LAST, BEST)
        patterns = (DERIVED if self.holds_run() else ()) + tuple(p for p in RUN_FILES if p not in last) + last
        return list(dict.fromkeys(f for pattern in patterns for f in sorted(self.path.glob(pattern))
                                  if self._removable(f)))

    def clears(self, path: str | Path) -> bool:
        """Whether `clear` would remove the file `path` (however spelt: a link to it, another directory's
        name for it): a checkpoint a new run reads must not be one of them."""
        target = os.path.realpath(path)
        # a link is removed, not what it names: compare where the link itself lies
        return any(os.path.join(os.path.realpath(f.parent), f.name) == target if f.is_symlink()
                   else os.path.realpath(f) == target for f in self._cleared())

    def _removable(self, f: Path) -> bool:
        """A file a pattern matched that clear may remove: reached without a link to a directory on
        the way, a file or a link, and for explore's page one that explore wrote."""
        inner = f.relative_to(self.path).parents  # the directories between the run's and f: no links
        if any((self.path / d).is_symlink() for d in inner if d != Path(".")):
            return False
        if f.is_symlink():
            return True
        if not f.is_file():
            return False
        if f.name == EXPLORE_PAGE and f.parent == self.path:
            try:
                with open(f, "rb") as page:
                    return EXPLORE_MARK in page.read(8192)
            except OSError:  # unreadable: not known to be ours, so kept
                return False
        return True

    def create(self, cfg: Config) -> None:
        """Make the directory and write the resolved config.yaml: the first write of a run (new or
        resumed), which also removes the temp files a killed write left (the directory is claimed:
        no write of ours is under way in it)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"the run directory {self.path} is a file (log.dir / log.name); pick another log.name")
        try:
            for left in (f for name in (BEST, LAST, METRICS, CONFIG) for f in self.path.glob(staged_glob(name))):
                if left.is_file() and not left.is_symlink():
                    left.unlink()
            self.path.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path / CONFIG, config_to_yaml(cfg))
        except OSError as e:
            raise UserError(f"cannot write the run directory {self.path} ({e.strerror or e}); set log.dir") from None

    def write_json(self, name: str, value: dict[str, Any]) -> None:
        """A strict-JSON file (NaN written as null) in the run directory, atomically."""
        atomic_write_json(self.path / name, value)

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        self.write_json(METRICS, metrics)

    def forget_result(self) -> None:
        """Remove metrics.json: the run goes on past the end it reports (written again at the new end)."""
        with writing(self.path):
            (self.path / METRICS).unlink(missing_ok=True)
