"""The one exception type for mistakes a user can fix.

Entry scripts catch `UserError` and print `error: <message>` on one line with exit status 2;
everything else is a bug and keeps its traceback. Messages name the file, key or character at
fault so the user can act on them without reading code.
"""


class UserError(Exception):
    """A problem with the user's input (config, corpus, checkpoint, prefix), not with the program."""
