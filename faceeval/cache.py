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
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from faceeval.errors import HarnessError, is_no_space, no_space
from faceeval.images import atomic_write_bytes, load_rgb, save_png


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
        _put_swap((self.path(key), image, flag))

    def put_many(self, items: list[tuple[str, np.ndarray, str | None]]) -> None:
        """:meth:`put` for many (key, image, flag), encoded in the worker pool when there is one."""
        from faceeval.parallel import pool_map

        pool_map(_put_swap, [(self.path(key), image, flag) for key, image, flag in items])

    def get_many(self, keys: list[str]) -> list[np.ndarray]:
        """:meth:`get` for many keys, decoded in the worker pool when it runs already. A
        stored crop that does not decode (truncated, damaged) is deleted and
        :class:`DamagedSwaps` names them: the runner swaps those pairs again."""
        from faceeval.parallel import pool_map

        images = pool_map(_load_or_none, [self.path(k) for k in keys], light=True)
        bad = [k for k, img in zip(keys, images) if img is None]
        if bad:
            for k in bad:
                self.path(k).unlink(missing_ok=True)
                self.path(k).with_suffix(".flag").unlink(missing_ok=True)
            raise DamagedSwaps(bad, self.path(bad[0]))
        return images

    def flag(self, key: str) -> str | None:
        """The flag stored with a swap (None for a clean output)."""
        marker = self.path(key).with_suffix(".flag")
        return marker.read_text().strip() or None if marker.is_file() else None

    def get(self, key: str) -> np.ndarray:
        return load_rgb(self.path(key))


class DamagedSwaps(HarnessError):
    """Cached swapped crops that did not decode (now deleted); ``keys`` says which."""

    def __init__(self, keys: list[str], example: Path) -> None:
        super().__init__(f"{len(keys)} cached swapped crops did not decode (e.g. {example}); "
                         "deleted, to be swapped again")
        self.keys = keys


def _load_or_none(path: Path) -> np.ndarray | None:
    """A cached crop's pixels, or None when the file is there but does not decode (a pool task)."""
    try:
        return load_rgb(path)
    except HarnessError:
        if not path.is_file():
            raise
        return None


def _put_swap(item: tuple[Path, np.ndarray, str | None]) -> None:
    """Write one swap (path, uint8 image, flag): the flag marker first, then the PNG, each
    by rename. Two processes writing one key write the same bytes: either rename wins."""
    path, image, flag = item
    marker = path.with_suffix(".flag")
    if flag:
        atomic_write_bytes(marker, flag.encode())
    else:
        marker.unlink(missing_ok=True)
    save_png(path, image)


#: SQLite's own wait for a lock held by another process, then our retries on top
BUSY_TIMEOUT_S = 60
RETRIES = 8
#: ``1``: write features to one file per process, merged by rank 0 (see :class:`FeatureStore`);
#: on by itself when the torchrun ranks span several machines
SHARDS_ENV = "HARNESS_FEATURE_SHARDS"
_SCHEMA = ("CREATE TABLE IF NOT EXISTS features (ns TEXT, sha TEXT, dtype TEXT, shape TEXT, data BLOB,"
           " PRIMARY KEY (ns, sha))")


def _retry(fn, *args):
    """``fn(*args)``, again after a short wait while SQLite says another process holds the
    lock beyond the busy timeout (WAL recovery, a schema change, a long checkpoint)."""
    for attempt in range(RETRIES):
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if ("locked" not in text and "busy" not in text) or attempt == RETRIES - 1:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the busy timeout set. ``readonly``: opened ``immutable`` (no locks,
    no WAL index): only for a file nobody writes while it is open."""
    if readonly:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return db
    db = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    _retry(db.execute, f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    return db


class FeatureStore:
    """Vectors keyed by (namespace, image sha256); namespace = backend, version and a digest of
    the weight files (see :func:`cached_features`).

    Shared by concurrent processes. On one machine (any number of ``harness run``
    processes, torchrun ranks included) all use one SQLite file in WAL mode: readers never
    wait, writers take turns (busy timeout, then retries), rows are only ever inserted
    (``INSERT OR IGNORE``: the first writer of a key wins; every writer computes the same
    value). WAL needs the processes on one host, so ranks on several machines (or
    ``HARNESS_FEATURE_SHARDS=1``) use ``shard``: each process writes its own file
    ``features.d/<shard>.sqlite`` and reads the main file read-only; rank 0 merges the
    files into the main one (:func:`merge_feature_shards`) while the others wait.
    """

    def __init__(self, path: Path, shard: str | None = None, log=None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.shard = path, shard
        self._lock = threading.RLock()
        self.counts = {"hits": 0, "misses": 0}  # lookups served / vectors computed (cached_features)
        self._main: sqlite3.Connection | None = None
        self._db: sqlite3.Connection | None = None
        self._log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self._damaged: set[tuple[str, str]] = set()  # rows found damaged: rewritten when recomputed
        self._said: set[str] = set()
        try:
            self._open()
        except sqlite3.DatabaseError as exc:
            self.close()
            if self.shard is not None or "malformed" not in str(exc).lower():
                raise self._unreadable(exc) from None
            self._recover(exc)  # damaged pages: a new file with what still reads

    def _unreadable(self, exc: BaseException) -> HarnessError:
        """The one-line error for a store that cannot be used at all."""
        if is_no_space(exc):
            return no_space(self.path.parent)
        return HarnessError(f"the feature cache {self.path} cannot be read ({exc}): delete it (rm {self.path}*) "
                            "and run again; its features are recomputed")

    def _note(self, msg: str) -> None:
        if msg not in self._said:
            self._said.add(msg)
            self._log(f"  note: {msg}")

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """A page of the store is damaged ("malformed"): move the file aside, start a new
        one with every row that still reads, say so once. The rest is recomputed."""
        if self.shard is not None or "malformed" not in str(exc).lower():
            raise self._unreadable(exc) from None
        aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
        self.close()
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                src.replace(aside.with_name(aside.name + suffix))
        self._open()
        kept = 0
        try:
            old = _connect(aside)
            try:
                last = old.execute("SELECT MAX(rowid) FROM features").fetchone()[0] or 0
            except sqlite3.DatabaseError:
                last = 0
            for start in range(0, last + 1, 500):
                try:
                    rows = old.execute("SELECT ns, sha, dtype, shape, data FROM features WHERE rowid BETWEEN ? AND ?",
                                       (start, start + 499)).fetchall()
                except sqlite3.DatabaseError:
                    continue  # a damaged page: these rows are recomputed
                self._db.executemany("INSERT OR IGNORE INTO features VALUES (?,?,?,?,?)", rows)
                kept += len(rows)
            self._db.commit()
            old.close()
        except sqlite3.DatabaseError:
            pass
        self._note(f"the feature cache {self.path} was damaged ({exc}); {kept} readable rows kept, the rest "
                   f"is recomputed; the damaged file is {aside.name}")

    def _open(self) -> None:
        if self.shard is None:
            self._db = _connect(self.path)
            _retry(self._db.execute, "PRAGMA journal_mode=WAL")
            _retry(self._db.execute, _SCHEMA)
            _retry(self._db.commit)
            return
        if not self.path.is_file():
            init = _connect(self.path)
            _retry(init.execute, _SCHEMA)
            _retry(init.commit)
            init.close()
        self._main = _connect(self.path, readonly=True)
        shard_path = shard_folder(self.path) / f"{self.shard}.sqlite"
        shard_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _connect(shard_path)
        _retry(self._db.execute, _SCHEMA)
        _retry(self._db.commit)

    def reopen(self) -> None:
        """Close and open again: after a merge, the read-only main file has changed."""
        self.close()
        self._open()

    def get_many(self, ns: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
        """The stored vectors of ``shas`` under ``ns`` (absent ones left out). A row whose
        bytes do not fit its shape is left out too, named once, and rewritten when recomputed."""
        with self._lock:
            try:
                return self._get_many(ns, shas)
            except sqlite3.DatabaseError as exc:
                if isinstance(exc, sqlite3.OperationalError) and "malformed" not in str(exc).lower():
                    raise
                self._recover(exc)
                return self._get_many(ns, shas)

    def _get_many(self, ns: str, shas: Iterable[str]) -> dict[str, np.ndarray]:
        shas = list(dict.fromkeys(shas))
        out: dict[str, np.ndarray] = {}
        for db in (self._main, self._db):
            if db is None:
                continue
            todo = [s for s in shas if s not in out]
            for i in range(0, len(todo), 500):
                chunk = todo[i : i + 500]
                marks = ",".join("?" * len(chunk))
                rows = _retry(lambda con, sql, params: con.execute(sql, params).fetchall(), db,
                              f"SELECT sha, dtype, shape, data FROM features WHERE ns=? AND sha IN ({marks})",
                              [ns, *chunk])
                for sha, dtype, shape, data in rows:
                    vec = _decode_row(dtype, shape, data)
                    if vec is None:
                        self._damaged.add((ns, sha))
                        self._note(f"the feature cache {self.path} holds damaged rows (e.g. {ns} {sha[:12]}); "
                                   "they are recomputed")
                        continue
                    out[sha] = vec
        return out

    def put_many(self, ns: str, items: dict[str, np.ndarray]) -> None:
        rows = [
            (ns, sha, str(v.dtype), json.dumps(list(v.shape)), np.ascontiguousarray(v).tobytes())
            for sha, v in items.items()
        ]
        with self._lock:
            def write() -> None:
                db = self._db
                try:
                    fresh = [r for r in rows if (r[0], r[1]) not in self._damaged]
                    repaired = [r for r in rows if (r[0], r[1]) in self._damaged]
                    db.executemany("INSERT OR IGNORE INTO features VALUES (?,?,?,?,?)", fresh)
                    db.executemany("INSERT OR REPLACE INTO features VALUES (?,?,?,?,?)", repaired)
                    db.commit()
                except sqlite3.DatabaseError:
                    db.rollback()
                    raise
                self._damaged.difference_update((r[0], r[1]) for r in repaired)

            try:
                _retry(write)
            except sqlite3.DatabaseError as exc:
                if is_no_space(exc):
                    raise no_space(self.path.parent) from None
                if "malformed" not in str(exc).lower():
                    raise
                self._recover(exc)
                _retry(write)

    def close(self) -> None:
        with self._lock:
            for db in (self._main, self._db):
                if db is not None:
                    db.close()
            self._main = self._db = None


def _decode_row(dtype: str, shape: str, data: bytes) -> np.ndarray | None:
    """A stored vector, or None when its bytes, dtype or shape are damaged."""
    try:
        dims = json.loads(shape)
        dt = np.dtype(dtype)
        if not isinstance(dims, list) or len(data) != int(np.prod(dims, dtype=np.int64)) * dt.itemsize:
            return None
        return np.frombuffer(data, dtype=dt).reshape(dims)
    except (ValueError, TypeError):
        return None


def shard_folder(path: Path) -> Path:
    """Where the per-process files of a sharded feature store live."""
    return path.parent / f"{path.stem}.d"


def merge_feature_shards(path: Path) -> int:
    """Copy every row of ``features.d/*.sqlite`` into the main file, delete those files, and
    checkpoint (so read-only readers see everything in the main file). One process, while
    no other writes them. Returns the rows added."""
    folder = shard_folder(path)
    files = sorted(folder.glob("*.sqlite")) if folder.is_dir() else []
    path.parent.mkdir(parents=True, exist_ok=True)
    db = _connect(path)
    try:
        _retry(db.execute, _SCHEMA)
        before = db.execute("SELECT COUNT(*) FROM features").fetchone()[0]
        for f in files:
            _retry(db.execute, "ATTACH DATABASE ? AS shard", (str(f),))
            try:
                _retry(db.execute, "INSERT OR IGNORE INTO main.features SELECT * FROM shard.features")
                _retry(db.commit)
            except sqlite3.DatabaseError:
                pass  # a shard torn by a kill mid-write: its rows are recomputed when needed
            finally:
                db.execute("DETACH DATABASE shard")
        added = db.execute("SELECT COUNT(*) FROM features").fetchone()[0] - before
        _retry(db.execute, "PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    for f in files:
        for extra in (f, f.with_name(f.name + "-journal"), f.with_name(f.name + "-wal"), f.with_name(f.name + "-shm")):
            extra.unlink(missing_ok=True)
    return added


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
    compute: callable,  # list[np.ndarray] -> np.ndarray (N, D)
    load: callable | None = None,  # index -> image, when ``images`` is None
    weights=(),  # ((file name, sha256), ...) the features depend on
) -> np.ndarray:
    """Features for each image, computing only those not in the store. Returns (N, D).

    The store key is (``ns`` + the weights' digest, image content sha256)."""
    if weights:
        ns = f"{ns}@{weights_tag(weights)}"
    found = store.get_many(ns, shas)
    missing = [i for i, s in enumerate(shas) if s not in found]
    store.counts["hits"] += len(shas) - len(missing)
    # Duplicates inside one batch are computed once.
    todo: dict[str, int] = {}
    for i in missing:
        todo.setdefault(shas[i], i)
    if todo:
        idx = list(todo.values())
        batch = [images[i] if images is not None else load(i) for i in idx]
        feats = np.asarray(compute(batch), dtype=np.float32)
        new = {shas[i]: feats[j] for j, i in enumerate(idx)}
        store.counts["misses"] += len(new)
        store.put_many(ns, new)
        found.update(new)
    return np.stack([found[s] for s in shas]) if shas else np.zeros((0, 0), np.float32)
