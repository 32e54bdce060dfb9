"""The one exception type users see: its message is printed as a single line by the CLI."""


class EdgeclsError(Exception):
    """A problem the user can fix: the message names the file or value at fault and what to do."""
