"""The one exception type users see: its message is printed as a single line by the CLI."""


class EdgeclsError(Exception):
    """A problem the user can fix: the message names the file or value at fault and what to do."""


def first_line(exc: object, limit: int = 200) -> str:
    """An exception (or any error object) as one short line for a message: its text on one line, else its type."""
    text = " ".join(str(exc).split())
    return text[:limit] if text else type(exc).__name__
