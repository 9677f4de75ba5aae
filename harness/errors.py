"""The one exception type the CLI turns into a one-line message with exit code 1."""

from __future__ import annotations

from typing import Sequence

#: problems named in full inside a LayoutError's one-line message; the rest are counted
MAX_LISTED_PROBLEMS = 12


class HarnessError(Exception):
    """A user-facing error: bad input, a missing file, an unknown name.

    The message is printed alone on one line; set ``HARNESS_DEBUG=1`` for the traceback.
    """


class LayoutError(HarnessError):
    """A dataset tree that is not in the expected layout.

    ``problems`` lists every missing or malformed item, one short line each; the message
    is one line that names the first :data:`MAX_LISTED_PROBLEMS` and counts the rest.
    """

    def __init__(self, protocol: str, root: object, problems: Sequence[str]) -> None:
        self.protocol = protocol
        self.root = root
        self.problems = list(problems)
        shown = "; ".join(self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        tail = f"; ... and {more} more" if more > 0 else ""
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__(f"{protocol} layout at {root}: {count}: {shown}{tail}")
