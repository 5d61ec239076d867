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


def lone_surrogate(text: str, bytes_ok: bool = False) -> str:
    """What `text` holds that no UTF-8 encoder takes, as a message says it ("the byte 0xe9, which is
    not UTF-8, at character 3" or "a lone surrogate U+D800, at character 0"), or "" where it holds
    none. Python keeps a command-line or file-name byte that is not UTF-8 as U+DC80-U+DCFF
    (surrogateescape); `bytes_ok`: those are fine (a file name, which open() takes), others not."""
    bad = next((i for i, c in enumerate(text)
                if "\ud800" <= c <= "\udfff" and not (bytes_ok and "\udc80" <= c <= "\udcff")), None)
    if bad is None:
        return ""
    code = ord(text[bad])
    what = f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8" if 0xDC80 <= code <= 0xDCFF else \
        f"a lone surrogate U+{code:04X}"
    return f"{what}, at character {bad}"
