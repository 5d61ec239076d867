"""Writing files: atomic writes, one error for a failed write, and the one way this project writes JSON.

A failed write is one line. A full disk (ENOSPC), a file size limit (EFBIG under RLIMIT_FSIZE), a
quota (EDQUOT), a read-only file system (EROFS) or a missing permission (EACCES) is no bug of the
program: the command ends with `error: cannot write <path> (<reason>)`, exit status 2, naming the
file that could not be written, the file it was replacing intact. Every place that writes goes
through one of these doors, and a new command (an HTML page, an ONNX export, a study directory)
should too:

    atomic_write_bytes / _text / _json   a whole file, atomically (below)
    atomic_write_files                   files that belong together: all replaced, or none on a full disk
    save_figure(fig, path)               a matplotlib figure, atomically
    with writing(path): ...              anything else that writes `path` (mkdir, unlink, a stream
                                         written in place): an OSError inside names `path`
    summary_writer(logdir)               TensorBoard's writer, which fails late, in a thread (see
                                         its docstring); wrap its add_* / flush / close in `writing`

Each raises `WriteError`, both a `UserError` (the CLI prints it as one line) and an `OSError`, so
code that shrugs off a failed write of something optional (the kernels' measurement cache, the
prepared corpora's shortcut files) by catching OSError keeps doing so. Every OSError inside
`atomic_write_bytes` is blamed on its target, the callback's included: a callback that also reads
(score reading its input) reports its read errors itself, as UserErrors. Under torchrun only rank 0
writes; put the write inside `World.from_writer` so that its failure stops every rank (see
training/trainer.py). Prepared corpora keep a message of their own (data/prepare.py), and
`cli.run` catches a write-only errno that escaped all this as a last resort (the standard output
of `predict ... > out.txt` on a full disk).

torch.save reports a failed write of its file object as a RuntimeError ("[enforce fail at
inline_container.cc] unexpected pos ..."), which no longer says why; the file object that
`atomic_write_bytes` hands to `write` remembers the OSError of its failed write, and that is the
error reported.

Atomic: checkpoints, run files, sweep results and plots, downloads, `score --per-char` and the
pinyin cache are all written to a temporary file in the target's directory, flushed to disk, then
renamed over the target with `os.replace`: the old file stays intact until the new one is
complete, so a reader (or a crash, or a full disk) never sees half a file, and the temporary file
is removed when anything fails. `tempfile.mkstemp` creates owner-only files, so the mode is set to
what a plain `open()` would give (0o666 less the umask).

Strict JSON: Python's `json` writes `NaN` and `Infinity`, which are not JSON; `jq`, JavaScript and
most other readers reject the whole file. A diverged run's loss or a run without a validation split
is a real non-finite number, so every JSON file and line the project writes goes through
`strict_json`, where such a number becomes `null`.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import json
import math
import os
import shlex
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from rnn_train.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


class WriteError(UserError, OSError):
    """`path` could not be written; `reason` is the system's word for why ("No space left on device")."""

    def __init__(self, path: str | Path, error: OSError):
        reason = error.strerror or str(error) or error.__class__.__name__
        if error.errno in (errno.EEXIST, errno.ENOTDIR) and reason == os.strerror(error.errno):
            blocker = _file_in_the_way(path)  # the system's "File exists" or "Not a directory" of a mkdir:
            if blocker is not None and blocker.is_file():  # a file stands where the path needs a directory
                reason = f"{blocker} is a file, not a directory"
        OSError.__init__(self, error.errno, reason, str(path))
        self.path, self.reason = path, reason

    def __str__(self) -> str:
        return f"cannot write {self.path} ({self.reason})"

    def __reduce__(self):
        return WriteError, (self.path, OSError(self.errno, self.reason))


def _file_in_the_way(path: str | Path) -> Path | None:
    """The nearest existing path of `path` and its parents, where it is not a directory."""
    for p in (Path(path), *Path(path).parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Inside, an OSError becomes a WriteError naming `path` (a WriteError passes as it is)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as error:
        raise WriteError(path, error) from None


class _RecordingFile:
    """A binary file that remembers the OSError of its first failed write or flush, and closes
    itself on leaving a `with`. torch.save reports such a failure as a RuntimeError that no longer
    says why; on leaving, that error is replaced by the remembered OSError."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as error:
            self.error = self.error or error
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)  # seek, tell, fileno, ...

    def __enter__(self) -> "_RecordingFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._f.close()  # flushes what is buffered: may fail too
        except OSError:
            if exc is None:
                raise
            # else the error in flight is the first failure (closing re-fails on the same bytes)
        if isinstance(exc, Exception) and not isinstance(exc, OSError) and self.error is not None:
            raise self.error
        return False


def atomic_write_bytes(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(file_object)` on a temp file beside `path`, then rename it over `path`. Any
    OSError on the way (from mkdir, the file object, fsync, the rename; or from `write` itself: a
    callback that also reads must report its own read errors) is a WriteError naming `path`; the
    temp file is removed and an earlier `path` stays as it was."""
    atomic_write_files([(path, write)])


def atomic_write_files(writes: list[tuple[str | Path, Callable[[BinaryIO], object]]]) -> None:
    """`atomic_write_bytes` for files that belong together (a graph and the metadata beside it):
    every one is written to its temp file first, and they are renamed over their targets, in order,
    only when all are complete, so a full disk leaves all the earlier files as they were. (A rename
    that fails, which takes no space, leaves the files renamed before it new.)"""
    for path, _ in writes:  # a rename over a directory fails: find out before replacing anything
        if Path(path).is_dir():
            raise WriteError(path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
        if not_a_plain_file(path):  # a rename would replace the device, pipe or link itself
            raise WriteError(path, OSError(errno.EEXIST, "it is a device, a pipe or a link, not a regular file"))
    staged: list[tuple[Path, str]] = []
    try:
        for path, write in writes:
            path = Path(path)
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_STAGED_SUFFIX, dir=path.parent)
                staged.append((path, tmp))
                with _RecordingFile(os.fdopen(fd, "wb")) as f:
                    write(f)  # type: ignore[arg-type]
                    f.flush()
                    os.fsync(f.fileno())
                default_permissions(tmp)
        while staged:
            path, tmp = staged[0]
            with writing(path):
                os.replace(tmp, path)
            staged.pop(0)
    finally:
        for _, tmp in staged:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def cache_hint(error: OSError) -> str:
    """What to do about a cache that could not be written: only a full disk (or quota) is cured by
    space; a file in the way or a missing permission by another --cache-dir."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space or pass --cache-dir"
    return "pass another --cache-dir"


def output_arg(text: str) -> str:
    """argparse `type` of a file or directory a command writes: an empty name would quietly mean
    the current directory (a sweep's results all over it), and "-" a file named "-" where the user
    meant standard output, which no command writes its files to; both are refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; give a file or directory name")
    if text == "-":
        raise argparse.ArgumentTypeError("'-' (standard output): give a file or directory name (./- for one named '-')")
    return text


_STAGED_SUFFIX = ".tmp"


def staged_glob(name: str) -> str:
    """The glob of the temp files atomic_write_files writes file `name` through: one is left where
    the process was killed (SIGKILL, power loss) during the write."""
    return f".{name}.*{_STAGED_SUFFIX}"


def default_permissions(path: str | Path) -> None:
    """Give a file or directory that mkstemp / mkdtemp made (owner-only, 0600 / 0700) the mode a
    plain open or mkdir would have given it, the umask's: written through a temp name, a checkpoint
    or a cache entry is still readable by whoever could read the directory (a cache shared by users)."""
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~_UMASK)


def shell_word(path: str | Path) -> str:
    """`path` as a word of a command printed to be pasted into a shell: quoted where it needs it (a
    space, a quote), and a relative one that starts with "-" as ./-x, which no option parser takes
    for an option."""
    text = str(path)
    return shlex.quote(f"./{text}" if text.startswith("-") else text)


def not_a_plain_file(path: str | Path) -> bool:
    """`path` exists and is a symbolic link, or neither a regular file nor a directory (a device,
    a FIFO, a socket): what an atomic write (a rename over the name) would replace instead of writing to."""
    return os.path.islink(path) or (os.path.lexists(path) and not os.path.isfile(path) and not os.path.isdir(path))


def refuse_special(path: str | Path, what: str) -> None:
    """Stop with one line where the input `path` (`what` names it: "config file") is a pipe, a
    device or a socket: reading one blocks until something writes to it, or never ends (/dev/zero)."""
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is not a regular file (a pipe or a device)")


def refuse_replacing(out: str | Path, flag: str, *, reads: tuple = (), own: Callable[[Path], bool] | None = None,
                     kind: str = "") -> None:
    """Stop, before anything is written, a command whose output `out` (given as `flag`) would
    replace a file it reads (`reads`: the same file by any name) or, with `own`, an existing file
    that `own` does not recognise as an earlier output of this `kind`: a typo in --out must not
    turn a checkpoint, a config or a corpus into an HTML page."""
    out = Path(out)
    try:
        _refuse_output_path(out, flag)
    except OSError as e:  # a name past the file system's limit, a loop of links
        raise UserError(f"{flag} {out}: {e.strerror or e}; nothing written") from None
    if not out.exists():
        return
    for source in reads:
        with contextlib.suppress(OSError):
            if Path(source).exists() and out.samefile(source):
                raise UserError(f"{flag} {out} is a file this command reads; nothing written (choose another name)")
    if own is not None and out.is_file() and not own(out):
        raise UserError(f"{flag} {out} exists and is not {kind}; nothing written (remove it or choose another name)")


def _refuse_output_path(out: Path, flag: str) -> None:
    """What refuse_replacing says of the path itself, before the work whose result could not be written."""
    if not_a_plain_file(out):
        raise UserError(f"{flag} {out} is a device, a pipe or a link, not a regular file; nothing written "
                        "(choose another name)")
    blocker = _file_in_the_way(out.parent)
    if blocker is not None:
        what = "a file" if blocker.is_file() else "a device, a pipe or a dangling link"
        raise UserError(f"{flag} {out}: {blocker} is {what}, not a directory; nothing written")
    if out.is_dir():
        raise UserError(f"{flag} {out} is a directory; nothing written (remove it or choose another name)")


def starts_with(prefix: bytes) -> Callable[[Path], bool]:
    """An `own` test for refuse_replacing: the file's first bytes are `prefix`."""
    def test(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return f.read(len(prefix)) == prefix
        except OSError:
            return False
    return test


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def save_figure(fig, path: str | Path, **savefig) -> None:
    """A matplotlib figure saved as `path` (the format its suffix names), atomically; `savefig` are
    more arguments of `fig.savefig` (dpi=...)."""
    path = Path(path)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or None, **savefig))


def _finite_or_none(value: Any) -> Any:
    """The same structure with every NaN / ±inf float replaced by None (dicts, lists, tuples walked)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def strict_json(value: Any, indent: int | None = None, ascii_only: bool = True) -> str:
    """JSON text that every JSON reader accepts: non-finite floats become null; with `ascii_only`
    other characters as \\u escapes (files), else as they are (the server's UTF-8 answers)."""
    return json.dumps(_finite_or_none(value), indent=indent, allow_nan=False, ensure_ascii=ascii_only)


def atomic_write_json(path: str | Path, value: Any) -> None:
    """`value` as strict, indented JSON (plus a final newline), written atomically."""
    atomic_write_text(path, strict_json(value, indent=2) + "\n")


# --------------------------------------------------------------------------- TensorBoard


def summary_writer(logdir: str | Path, in_order: bool = True, **kwargs):
    """torch's SummaryWriter for `logdir` (created inside `writing(logdir)`); `in_order`: its file
    sorts after those already there (`_wait_past_event_files`), which a file that holds no steps
    (the hparams record) does not need.

    Why it needs care: the writer hands events to a background thread that writes them. An OSError
    there ends the thread, which prints its traceback, and the writer raises the same error again
    at the caller's next add_*, flush or close: the failure arrives late, in the caller's code.
    So wrap those calls in `writing(event_file(writer))`; the thread's own print is silenced here
    (`_quiet_event_threads`), since its error is not lost but raised again."""
    _quiet_event_threads()
    from torch.utils.tensorboard import SummaryWriter

    if in_order:
        _wait_past_event_files(Path(logdir))
    with writing(logdir):
        return SummaryWriter(str(logdir), **kwargs)


def _wait_past_event_files(logdir: Path) -> None:
    """Wait, for under a second, until the clock has left the second in which `logdir`'s newest
    event file was opened.

    Why: TensorBoard reads a directory's event files in name order, and a name is
    "events.out.tfevents.<whole seconds>.<host>.<pid>...". A file opened in the same second as
    one already there sorts by pid, so a run resumed within a second of its start (a crash at
    once, a small model on a fast CPU) could be read before the events it continues, and its
    purge of the steps it redoes would come first and drop nothing. A newest file more than
    two seconds ahead of the clock (copied from a machine whose clock ran ahead) is not
    waited for."""
    newest = -1
    for f in logdir.glob("events.out.tfevents.*"):
        stamp = (f.name.split(".") + [""] * 4)[3]
        if stamp.isdigit():
            newest = max(newest, int(stamp))
    delay = newest + 1 - time.time()
    if 0 < delay <= 2:
        time.sleep(delay)


def event_file(writer) -> Path:
    """The event file an open SummaryWriter writes (its directory, should torch's layout change)."""
    try:
        return Path(writer.file_writer.event_writer._file_name)
    except AttributeError:
        return Path(writer.get_logdir())


def _quiet_event_threads() -> None:
    """A threading.excepthook (installed once) that drops the OSError ending a TensorBoard writer
    thread, and passes everything else to the hook it replaced."""
    if getattr(threading.excepthook, "quiet_event_threads", False):
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and type(args.thread).__module__.startswith("tensorboard."):
            return  # raised again by the writer's next call (see summary_writer)
        previous(args)

    hook.quiet_event_threads = True  # type: ignore[attr-defined]
    threading.excepthook = hook
