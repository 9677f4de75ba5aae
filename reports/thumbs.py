"""Thumbnails for the HTML report's pair browser, generated once and named by content.

A thumbnail's file name is the sha256 of the image it shows (its pixels' sha for swaps,
recorded by the runner; the file's bytes for input crops) plus the thumbnail size, so the
same face used by many pairs or runs is one file, and a re-render makes only new ones.
Input crops' sha256 are remembered in ``index.json`` by (path, size, mtime) so that a
re-render does not hash them again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from faceeval.errors import HarnessError
from faceeval.images import atomic_write_bytes, file_sha256

QUALITY = 82


@dataclass
class ThumbnailStore:
    folder: Path
    size: int = 112
    names: list[str] = field(default_factory=list)  # thumbnails in first-use order (the page's index)
    made: int = 0  # generated in this render (the rest were already there)
    _index: dict[str, int] = field(default_factory=dict)  # name -> position in names
    _by_path: dict[str, int] = field(default_factory=dict)  # input crop path -> position (this render)
    _hashes: dict[str, list] = field(default_factory=dict)  # path -> [size, mtime_ns, sha256]
    _dirty: bool = False

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        index = self.folder / "index.json"
        if index.is_file():
            try:
                self._hashes = json.loads(index.read_text())
            except ValueError:
                self._hashes = {}  # a broken index only costs re-hashing

    def file_key(self, path: Path) -> str:
        """sha256 of a file's bytes, remembered by (size, mtime)."""
        st = path.stat()
        memo = self._hashes.get(str(path))
        if memo and memo[0] == st.st_size and memo[1] == st.st_mtime_ns:
            return memo[2]
        sha = file_sha256(path)
        self._hashes[str(path)] = [st.st_size, st.st_mtime_ns, sha]
        self._dirty = True
        return sha

    def add(self, image: Path, key: str | None = None) -> int:
        """Index (into ``names``) of the thumbnail of ``image``; ``key`` is its content
        sha256 when known. Made from the image only if no thumbnail of that content exists."""
        if key is None and str(image) in self._by_path:
            return self._by_path[str(image)]
        if key is not None and f"{key[:24]}-{self.size}.jpg" in self._index:
            return self._index[f"{key[:24]}-{self.size}.jpg"]
        if not image.is_file():
            raise HarnessError(f"image for the report not found: {image}")
        key = key or self.file_key(image)
        name = f"{key[:24]}-{self.size}.jpg"
        if name in self._index:
            self._by_path[str(image)] = self._index[name]
            return self._index[name]
        path = self.folder / name
        if not path.is_file():
            self._make(image, path)
        self._index[name] = len(self.names)
        self.names.append(name)
        self._by_path[str(image)] = self._index[name]
        return self._index[name]

    def _make(self, image: Path, path: Path) -> None:
        import io

        from PIL import Image

        with Image.open(image) as im:
            im = im.convert("RGB")
            im.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=QUALITY, optimize=True)
        atomic_write_bytes(path, buf.getvalue())
        self.made += 1

    def close(self) -> None:
        if self._dirty:
            tmp = self.folder / f"index.json.{os.getpid()}"
            tmp.write_text(json.dumps(self._hashes))
            tmp.replace(self.folder / "index.json")
            self._dirty = False
