"""The one exception type the CLI turns into a one-line message with exit code 1."""


class HarnessError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The message is printed alone on one line; set ``HARNESS_DEBUG=1`` for the traceback.
    """
