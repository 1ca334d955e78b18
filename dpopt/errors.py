"""The one exception type that means "the user asked for something we cannot do".

The CLI turns a UserError into one line on stderr and exit status 2; anything else is a
bug in dpopt and keeps its traceback.
"""


class UserError(Exception):
    """A mistake the user can fix: bad model name, bad mask, unreadable data file..."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's multi-line error as one line)."""
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]
