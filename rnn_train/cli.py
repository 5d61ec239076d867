"""What both entry scripts share: one-line errors and exit status 2 for anything the user can fix.

argparse's own errors print a usage block plus a message; ours print just `error: ...` so that
every user mistake, from a bad flag to a bad config value, looks the same and is easy to grep.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from rnn_train.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def program() -> str:
    """How the user called us, for usage lines and hints: `rnn-train` when installed, else `python -m rnn_train`.

    `python -m rnn_train` is the spelling that also works in a bare checkout, so it is the default.
    """
    return "rnn-train" if sys.argv and sys.argv[0].endswith("rnn-train") else "python -m rnn_train"


def report(error: UserError) -> int:
    """Print a user's mistake as the one line `error: <message>` on stderr -> exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call main; a UserError becomes `error: <message>` on stderr and exit status 2."""
    try:
        return main(argv)
    except UserError as e:
        return report(e)
    except BrokenPipeError:  # `predict.py ... | head`
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves a checkpoint itself)
        print("error: interrupted", file=sys.stderr)
        return 130
