"""What both entry scripts share: one-line errors and exit status 2 for anything the user can fix.

argparse's own errors print a usage block plus a message; ours print just `error: ...` so that
every user mistake, from a bad flag to a bad config value, looks the same and is easy to grep.

A full disk is one line too. Files are written through rnn_train.files, whose WriteError is a
UserError naming the file; what is left is the standard output (`predict ... > out.txt` on a full
disk) and any write not routed through rnn_train.files: an OSError that only a write can raise
(ENOSPC, EDQUOT, EFBIG, EROFS) is caught here as the last resort.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import signal
import sys
import threading
from typing import Any, Callable, Iterator

from rnn_train.errors import UserError

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""Errors only a write raises: a full disk, a quota, a file size limit, a read-only file system."""


@contextlib.contextmanager
def signals_handled(handler: Callable[[int, Any], None], *signals: int) -> Iterator[None]:
    """Inside, `handler(signum, frame)` answers these signals; the handlers found are put back on
    leaving. Only the main thread may set handlers: elsewhere nothing is set (a command run from a
    thread, as tests do, keeps the process's own). A signal found ignored stays ignored: whoever
    started the process ignored it (a shell does so for Ctrl-C in a script's `cmd &`), and the
    process took it or not by chance, depending on the moment it came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for s, found in previous.items():
            signal.signal(s, found)


def not_empty(text: str) -> str:
    """argparse `type` of a value that has no meaning empty (an encoding): `--encoding ''` was taken
    as not given, the model's own used without a word."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty: give a value or leave the option out")
    return text


class Once(argparse.Action):
    """An option that may be given once: argparse keeps the last of `--config a --config b`, which
    then trained on b with a's name in the user's mind, without a word."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = f"_{self.dest}_given"
        if getattr(namespace, given, False):
            parser.error(f"{option_string} is given twice ({getattr(namespace, self.dest)!r} and {values!r}): give "
                         f"it once")
        setattr(namespace, given, True)
        setattr(namespace, self.dest, values)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with one-line errors, and negative numbers in every spelling float()
    reads (-1e10, -2.5E-3, -inf) taken as values: argparse itself takes only -5 and -0.5 for
    numbers, so `--whh-scale -1e10` was "expected one argument" instead of the value's own check."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*(e[+-]?\d+)?|\.\d+(e[+-]?\d+)?|inf|infinity|nan)$",
                                                   re.IGNORECASE)

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def seed_arg(text: str) -> int:
    """argparse `type` of a command's --seed: an integer in [0, 2^32), the range every generator
    a command seeds (NumPy's, Optuna's samplers') takes."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= seed < 2**32:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^32), got {seed}")
    return seed


def program() -> str:
    """How the user called us, for usage lines and hints: `rnn-train` when installed, else `python -m rnn_train`.

    `python -m rnn_train` is the spelling that also works in a bare checkout, so it is the default.
    """
    return "rnn-train" if sys.argv and sys.argv[0].endswith("rnn-train") else "python -m rnn_train"


def report(error: UserError) -> int:
    """Print a user's mistake as the one line `error: <message>` on stderr -> exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def _failed_write(error: OSError) -> int:
    """A write that failed outside rnn_train.files, as one line. Every file the project writes goes
    through rnn_train.files (whose errors name the file), so an error naming no file is the standard
    output's; it is pointed at /dev/null, or Python's own flush at exit may fail again, printing a
    traceback and changing the exit status to 120."""
    from rnn_train.files import WriteError

    if error.filename:
        return report(WriteError(error.filename, error))
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return report(WriteError("the standard output", error))


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call main; a UserError becomes `error: <message>` on stderr and exit status 2."""
    try:
        status = main(argv)
        sys.stdout.flush()  # here, not at exit: a full disk under `> out.txt` is one line too
        return status
    except UserError as e:
        return report(e)
    except BrokenPipeError:  # `predict.py ... | head`
        return 0
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG and e.filename:  # a path typed too long: Path.exists and is_file raise it
            return report(UserError(f"{e.filename}: file name too long"))
        if e.errno not in WRITE_ERRNOS:
            raise
        return _failed_write(e)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves a checkpoint itself)
        if os.environ.get("RANK", "0") == "0" or "TORCHELASTIC_RUN_ID" not in os.environ:  # under torchrun every
            # rank got it: said once, by rank 0 (a RANK set by something else silences nothing)
            print("error: interrupted", file=sys.stderr)
        return 130
