"""The one exception type the CLI turns into a clear one-line error."""


class AvvpError(Exception):
    """A user-facing error: its message is one line naming the file, row or video and what is wrong."""
