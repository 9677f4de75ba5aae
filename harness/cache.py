"""Content-addressed caches: swapped images and metric features.

* ``SwapStore``: one PNG per (method fingerprint, source pixels, target pixels, size).
  Written atomically, so a killed run resumes where it stopped.
* ``FeatureStore``: one float32 vector per (backend fingerprint, image pixel sha256), in
  SQLite: many small rows, transactional, shared by every metric that uses the backend.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from harness.images import atomic_write_bytes, load_rgb, save_png


def stable_hash(obj: Any, n: int = 16) -> str:
    """Short sha256 of a JSON-serialisable object with sorted keys (dict order ignored)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


class SwapStore:
    """Swapped crops on disk, keyed by content, not by run."""

    def __init__(self, root: Path, method_fingerprint: dict[str, Any]) -> None:
        self.method_key = stable_hash(method_fingerprint)
        self.folder = root / "swaps" / f"{method_fingerprint.get('name', 'method')}-{self.method_key}"
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.folder / "fingerprint.json",
                           json.dumps(method_fingerprint, sort_keys=True, indent=1, default=str).encode())

    @staticmethod
    def pair_key(source_sha: str, target_sha: str, size: int) -> str:
        return hashlib.sha256(f"{source_sha}|{target_sha}|{size}".encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.png"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, key: str, image: np.ndarray, flag: str | None = None) -> None:
        """Store a swap; ``flag`` (e.g. ``non_finite``) marks an output the method got wrong.
        The flag is written before the image, so a kill between the two never loses it."""
        marker = self.path(key).with_suffix(".flag")
        if flag:
            atomic_write_bytes(marker, flag.encode())
        else:
            marker.unlink(missing_ok=True)
        save_png(self.path(key), image)

    def flag(self, key: str) -> str | None:
        """The flag stored with a swap (None for a clean output)."""
        marker = self.path(key).with_suffix(".flag")
        return marker.read_text().strip() or None if marker.is_file() else None

    def get(self, key: str) -> np.ndarray:
        return load_rgb(self.path(key))


class FeatureStore:
    """Vectors keyed by (namespace, image sha256); namespace = backend, version and a digest of
    the weight files (see :func:`cached_features`)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS features (ns TEXT, sha TEXT, dtype TEXT, shape TEXT, data BLOB,"
            " PRIMARY KEY (ns, sha))"
        )
        self._db.commit()

    def get_many(self, ns: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
        shas = list(dict.fromkeys(shas))
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for i in range(0, len(shas), 500):
                chunk = shas[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(
                    f"SELECT sha, dtype, shape, data FROM features WHERE ns=? AND sha IN ({marks})",
                    [ns, *chunk],
                ).fetchall()
                for sha, dtype, shape, data in rows:
                    out[sha] = np.frombuffer(data, dtype=dtype).reshape(json.loads(shape))
        return out

    def put_many(self, ns: str, items: dict[str, np.ndarray]) -> None:
        rows = [
            (ns, sha, str(v.dtype), json.dumps(list(v.shape)), np.ascontiguousarray(v).tobytes())
            for sha, v in items.items()
        ]
        with self._lock:
            self._db.executemany("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?)", rows)
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def weights_tag(weights) -> str:
    """Short digest of ((file name, sha256), ...): part of every feature namespace, so that
    replacing a weight file (many have no pinned checksum) never reuses stale features."""
    text = ";".join(f"{name}:{sha}" for name, sha in sorted(weights))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cached_features(
    store: FeatureStore,
    ns: str,
    shas: list[str],
    images: list[np.ndarray] | None,
    compute: "callable",  # list[np.ndarray] -> np.ndarray (N, D)
    load: "callable | None" = None,  # index -> image, when ``images`` is None
    weights=(),  # ((file name, sha256), ...) the features depend on
) -> np.ndarray:
    """Features for each image, computing only those not in the store. Returns (N, D).

    The store key is (``ns`` + the weights' digest, image content sha256)."""
    if weights:
        ns = f"{ns}@{weights_tag(weights)}"
    found = store.get_many(ns, shas)
    missing = [i for i, s in enumerate(shas) if s not in found]
    # Duplicates inside one batch are computed once.
    todo: dict[str, int] = {}
    for i in missing:
        todo.setdefault(shas[i], i)
    if todo:
        idx = list(todo.values())
        batch = [images[i] if images is not None else load(i) for i in idx]
        feats = np.asarray(compute(batch), dtype=np.float32)
        new = {shas[i]: feats[j] for j, i in enumerate(idx)}
        store.put_many(ns, new)
        found.update(new)
    return np.stack([found[s] for s in shas]) if shas else np.zeros((0, 0), np.float32)
