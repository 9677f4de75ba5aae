"""The one exception type the CLI turns into a one-line message with exit code 1."""

from __future__ import annotations

import errno
from collections.abc import Sequence
from pathlib import Path

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


#: errno values that mean the disk (or the user's quota) is full
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_no_space(exc: BaseException) -> bool:
    """True for a full disk: ``OSError`` ENOSPC/EDQUOT, or SQLite's "database or disk is full"
    (also when a library wrapped it, e.g. SQLAlchemy inside MLflow)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return True
        if "database or disk is full" in str(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def no_space(folder: object) -> HarnessError:
    """The one-line error for a full disk, naming the folder being written."""
    where = Path(str(folder)).resolve() if folder else "the output folder"
    return HarnessError(f"no space left on the device of {where}: free space there (df -h shows it), then run the "
                        "same command again: finished work is cached")
