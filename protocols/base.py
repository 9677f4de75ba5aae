"""Shared pieces of protocols: seeded pairing that is identical on every machine.

Randomness comes from sha256 of ``(seed, purpose, key)``, not from a library RNG, so a
manifest does not change with the Python, NumPy or platform version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from faceeval.api import FacePair, GalleryItem
from faceeval.errors import MAX_LISTED_PROBLEMS, HarnessError, LayoutError  # noqa: F401 - re-exported

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def seeded_key(seed: int, purpose: str, key: str) -> str:
    """A uniformly distributed sort key: sorting by it is a seeded random permutation."""
    return hashlib.sha256(f"{seed}\x00{purpose}\x00{key}".encode()).hexdigest()


def seeded_order(keys: Sequence[str], seed: int, purpose: str) -> list[str]:
    """``keys`` in a random order fixed by (seed, purpose)."""
    return sorted(keys, key=lambda k: seeded_key(seed, purpose, k))


def pair_images(images: Sequence[GalleryItem], seed: int, num_pairs: int | None = None) -> list[FacePair]:
    """Random (source, target) pairs of different identities.

    The images are put in a seeded random order; pair ``i`` takes image ``i`` (cycling
    when more pairs than images are asked for) as the source and, as the target, the
    next image in that order whose identity differs. With one image per identity this
    is a random cyclic derangement: every image is a source once and a target once.
    """
    if len({g.identity for g in images}) < 2:
        raise HarnessError(f"pairing needs at least 2 identities, got {len({g.identity for g in images})}")
    by_path = {g.path: g for g in images}
    if len(by_path) != len(images):
        raise HarnessError("an image is listed twice")
    order = [by_path[p] for p in seeded_order(list(by_path), seed, "pair-order")]
    n = len(order)
    count = n if num_pairs is None else num_pairs
    if count < 1:
        raise HarnessError(f"number of pairs must be positive, got {count}")
    width = max(5, len(str(count - 1)))
    pairs = []
    for i in range(count):
        src = order[i % n]
        j = (i + 1) % n
        while order[j].identity == src.identity:
            j = (j + 1) % n
        tgt = order[j]
        pairs.append(FacePair(f"{i:0{width}d}", src.path, tgt.path, src.identity, tgt.identity))
    return pairs


# ---------------------------------------------------------------------------------------
# Dataset layouts and protocol options
# ---------------------------------------------------------------------------------------

def summarise(items: Sequence[str], limit: int = 5) -> str:
    """``a, b, c, ... (+N more)``: a short listing for one problem line."""
    items = list(items)
    head = ", ".join(items[:limit])
    return head + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def option_int(value: object, name: str, *, minimum: int | None = None, allow_none: bool = False) -> int | None:
    """An integer option that may arrive as a string from ``--option key=value``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "default")):
        if allow_none:
            return None
        raise HarnessError(f"option {name} needs an integer value")
    if isinstance(value, bool):
        raise HarnessError(f"option {name} must be an integer, got {value!r}")
    try:
        number = int(value) if not isinstance(value, str) else int(value.strip(), 10)
    except (TypeError, ValueError):
        raise HarnessError(f"option {name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise HarnessError(f"option {name} must be at least {minimum}, got {number}")
    return number


def option_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """A string option restricted to ``choices`` (case-insensitive)."""
    from faceeval.options import suggest

    text = str(value).strip().lower()
    if text not in choices:
        raise HarnessError(f"option {name} must be one of {', '.join(choices)}; got {value!r}{suggest(text, choices)}")
    return text


def path_inside_root(root: Path, value: str, option: str) -> Path:
    """A relative path option (``identity_file=``, ``splits_dir=``) resolved inside the
    dataset root: absolute paths and ``..`` that leave the root are refused, so an option
    never makes the harness read (and quote, in layout errors) files outside the dataset."""
    from pathlib import Path as _Path

    given = _Path(str(value)).expanduser()
    root = _Path(root).resolve()
    if given.is_absolute():
        raise HarnessError(f"option {option}={value}: give a path relative to the dataset root {root}, "
                           "not an absolute one (copy or link the file into the root)")
    path = (root / given).resolve()
    if not path.is_relative_to(root):
        raise HarnessError(f"option {option}={value} leaves the dataset root {root}: "
                           "files outside the root are not read")
    return path
