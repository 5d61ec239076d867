"""The one exception type for mistakes a user can fix.

Entry scripts catch `UserError` and print `error: <message>` on one line with exit status 2;
everything else is a bug and keeps its traceback. Messages name the file, key or character at
fault so the user can act on them without reading code.
"""
import operator


class UserError(Exception):
    """A problem with the user's input (config, corpus, checkpoint, prefix), not with the program."""


def integer(value, what: str) -> int:
    """`value` as the int it stands for (a NumPy integer too: np.random's seeds, sizes computed with
    NumPy), or a UserError naming `what` (a flag or key): 2.5 from the Python API was a TypeError
    deep inside, and True, which Python counts as 1, is refused as the slip it is."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise UserError(f"{what} must be an integer, got {value!r}") from None
