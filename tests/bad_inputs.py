"""The bad-input corpus: every kind of broken input, generated (no binaries shipped).

Used by tests/harness/test_bad_inputs.py and by scripts/bad_input_corpus.py, which runs each case
end to end through the CLI. Photos are the demo faces (real people, shipped with the
repository); everything bad is made from them or from scratch here.
"""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from faceeval.api import SwapMethod

DEMO_FACES = Path(__file__).resolve().parents[1] / "protocols" / "demo_faces"


def demo_face(i: int) -> np.ndarray:
    """The i-th demo face, uint8 (256, 256, 3)."""
    files = sorted(p for p in DEMO_FACES.glob("*.png"))
    return np.asarray(Image.open(files[i % len(files)]).convert("RGB"))


def photo_folder(root: Path, n: int = 3, start: int = 0) -> Path:
    """A flat folder protocol root: ``n`` photos, one identity each (p0.png, p1.png, ...)."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(demo_face(start + i)).save(root / f"p{i}.png")
    return root


# -- bad image files ----------------------------------------------------------------------
def png_16bit_grey(path: Path, face: int = 0) -> Path:
    """A face as a 16-bit greyscale PNG (mode I;16): Pillow's RGB conversion clips it white."""
    grey = demo_face(face).astype(np.float64).mean(axis=2)  # (H, W) 0..255
    Image.fromarray((grey * 257).round().astype(np.uint16)).save(path)
    return path


def decompression_bomb(path: Path, side: int = 40_000) -> Path:
    """A tiny PNG declaring ``side`` x ``side`` 1-bit pixels (1.6 G pixels, a few KB on disk)."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed 1-bit row
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def truncated_png(path: Path, face: int = 0) -> Path:
    Image.fromarray(demo_face(face)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def not_an_image(path: Path) -> Path:
    path.write_bytes(b"this is not an image\n")
    return path


# -- bad weight files ---------------------------------------------------------------------
def garbage_weights(path: Path) -> Path:
    path.write_bytes(b"\x80\x04not a torch file at all" * 10)
    return path


def torch_file(path: Path, obj) -> Path:
    import torch

    torch.save(obj, path)
    return path


# -- bad method outputs -------------------------------------------------------------------
class _Bad(SwapMethod):
    resolution = None

    def fingerprint(self) -> dict:
        return {"name": self.name, "kind": type(self).__name__, "v": 1}

    def describe(self) -> dict:
        return {"kind": type(self).__name__}


class NaNMethod(_Bad):
    """Returns the target with NaN in the top half of every other pair's image, and +Inf
    in one pixel of the rest (a diverged checkpoint, a buggy plugin)."""

    name = "nan_method"

    def swap(self, source, target):
        out = target.clone()
        out[0::2, :, : out.shape[2] // 2] = float("nan")
        out[1::2, :, 0, 0] = float("inf")
        return out


class BlankMethod(_Bad):
    """All-white outputs."""

    name = "blank_method"

    def swap(self, source, target):
        return target.clone().fill_(1.0)


class NoFaceMethod(_Bad):
    """Textured outputs without a face: seeded noise."""

    name = "noface_method"

    def swap(self, source, target):
        import torch

        g = torch.Generator().manual_seed(0)
        return torch.rand(target.shape, generator=g).to(target.device)


class HalfBadMethod(_Bad):
    """The target for even pairs (a good-looking swap), white for odd ones."""

    name = "halfbad_method"

    def swap(self, source, target):
        out = target.clone()
        out[1::2] = 1.0
        return out


BAD_METHODS = {"nan_method": "bad_inputs:NaNMethod", "blank_method": "bad_inputs:BlankMethod",
               "noface_method": "bad_inputs:NoFaceMethod", "halfbad_method": "bad_inputs:HalfBadMethod"}

#: Python source that registers the bad methods, then runs the harness CLI (``python -c``)
CLI_WITH_BAD_METHODS = (
    "from harness.registry import METHODS\n"
    + "".join(f"METHODS.register({n!r}, {t!r}, description='bad-output test method')\n" for n, t in BAD_METHODS.items())
    + "from harness.cli import main\nmain()\n"
)


# -- bad folders and files around a run ---------------------------------------------------
def same_stem_folder(root: Path) -> Path:
    """alex.jpg and alex.png: two different people with one stem, plus two others."""
    photo_folder(root, 2, start=2)
    Image.fromarray(demo_face(0)).save(root / "alex.jpg", quality=95)
    Image.fromarray(demo_face(1)).save(root / "alex.png")
    return root


def folder_with_links(root: Path, outside: Path) -> Path:
    """Three photos, a symlink to a photo outside the root and a dangling symlink."""
    photo_folder(root, 3)
    outside.mkdir(parents=True, exist_ok=True)
    Image.fromarray(demo_face(5)).save(outside / "secret.png")
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "dangling.png").symlink_to(root / "gone.png")
    return root


def comma_named_folder(root: Path) -> Path:
    """Three photos and an unreadable file whose name holds a comma and a quote."""
    photo_folder(root, 3)
    not_an_image(root / 'smith, "jr".png')
    return root


def precomputed_outputs(folder: Path, pair_ids: list[str], kind: str) -> Path:
    """Outputs for ``pair_ids``: ``tiny`` (4x4 crops of a face), ``sixteen`` (16-bit
    greyscale faces) or ``white``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pid in enumerate(pair_ids):
        if kind == "tiny":
            Image.fromarray(demo_face(i)).resize((4, 4)).save(folder / f"{pid}.png")
        elif kind == "sixteen":
            png_16bit_grey(folder / f"{pid}.png", i)
        elif kind == "white":
            Image.fromarray(np.full((256, 256, 3), 255, np.uint8)).save(folder / f"{pid}.png")
        else:
            raise ValueError(kind)
    return folder


def malformed_export(folder: Path) -> Path:
    """An outputs folder beside a broken export.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder.parent / "export.json").write_text('{"protocol": "demo", "manifest_sha2')
    return folder


def torn_summary(out: Path) -> Path:
    """A run folder whose summary.json was cut mid-write (by a crash before atomic writes)."""
    run = out / "runs" / "demo" / "source-0000000000000000"
    run.mkdir(parents=True, exist_ok=True)
    (run / "summary.json").write_text(json.dumps({"run_id": "0", "metrics": {}})[:20])
    return run / "summary.json"


def training_folder(root: Path, n: int = 8, bad: bool = True) -> Path:
    """Aligned faces for `harness train`, one of them truncated when ``bad``."""
    photo_folder(root, n)
    if bad:
        truncated_png(root / "p3.png", 3)
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


# -- method outputs that break the interface (issue 28 item 1) and plugins that fail (item 9)
class MinusOneMethod(_Bad):
    """The target in [-1, 1], a common network convention the interface does not accept."""

    name = "minus_one_method"

    def swap(self, source, target):
        return target * 2.0 - 1.0


class Times255Method(_Bad):
    """The target in [0, 255] as floats."""

    name = "times255_method"

    def swap(self, source, target):
        return target * 255.0


class Uint8Method(_Bad):
    """The target as a uint8 tensor (0..255)."""

    name = "uint8_method"

    def swap(self, source, target):
        import torch

        return (target * 255).round().to(torch.uint8)


class NumpyMethod(_Bad):
    """The target as a numpy array instead of a tensor."""

    name = "numpy_method"

    def swap(self, source, target):
        return target.cpu().numpy()


class NoneMethod(_Bad):
    """Returns None (a forgotten ``return``)."""

    name = "none_method"

    def swap(self, source, target):
        return None


class RaisingMethod(_Bad):
    """Returns the target, but raises ValueError on the pair set's second pair (the
    whole batch call fails whenever that pair is in it)."""

    name = "raising_method"
    bad_pair = ""

    def prepare(self, pairset):
        self.bad_pair = pairset.pairs[1].pair_id
        return []

    def swap_batch(self, pairs, source, target):
        if any(p.pair_id == self.bad_pair for p in pairs):
            raise ValueError(f"cannot swap this face (plugin bug on {self.bad_pair})")
        return self.swap(source, target)

    def swap(self, source, target):
        return target.clone()


CONTRACT_METHODS = {"minus_one_method": "bad_inputs:MinusOneMethod", "times255_method": "bad_inputs:Times255Method",
                    "uint8_method": "bad_inputs:Uint8Method", "numpy_method": "bad_inputs:NumpyMethod",
                    "none_method": "bad_inputs:NoneMethod", "raising_method": "bad_inputs:RaisingMethod"}
BAD_METHODS.update(CONTRACT_METHODS)
#: a plugin (entry point of another distribution) whose module raises at import
BROKEN_PLUGIN = ("broken_plugin", "broken_plugin:Swapper", "broken-plugin-dist")
CLI_WITH_BAD_METHODS = (
    "from harness.registry import METHODS\n"
    + "".join(f"METHODS.register({n!r}, {t!r}, description='bad-output test method')\n" for n, t in BAD_METHODS.items())
    + f"METHODS.register({BROKEN_PLUGIN[0]!r}, {BROKEN_PLUGIN[1]!r}, description='fails at import', "
    f"origin={BROKEN_PLUGIN[2]!r})\n"
    + "from harness.cli import main\nmain()\n"
)


# -- labels and files inside --out that point elsewhere (item 2), moved folders (item 3)
ESCAPING_LABELS = ("../../x", "/tmp/abs-label", "a/b", ".hidden")


def point_summary_elsewhere(summary_path: Path, where: str = "/etc") -> Path:
    """Edit a run's summary.json so that its run_dir (and root) name another folder."""
    data = json.loads(summary_path.read_text())
    data["run_dir"] = where
    summary_path.write_text(json.dumps(data))
    return summary_path


# -- a full disk (simulated: the writes fail with ENOSPC, as they do on a full device) ---------
def full_disk_code(after_writes: int = 0) -> str:
    """Python source that makes every atomic file write after the first ``after_writes``
    fail with ENOSPC (run it before the harness; in-process work only, ``--workers 1``)."""
    return (
        "import errno, os, types\n"
        "import faceeval.images as _hi\n"
        f"_left = [{after_writes}]\n"
        "def _fdopen(fd, *a, **k):\n"
        "    f = os.fdopen(fd, *a, **k)\n"
        "    if _left[0] > 0:\n"
        "        _left[0] -= 1\n"
        "        return f\n"
        "    return _Full(f)\n"
        "class _Full:\n"
        "    def __init__(self, f):\n"
        "        self.f = f\n"
        "    def __enter__(self):\n"
        "        return self\n"
        "    def __exit__(self, *exc):\n"
        "        self.f.close()\n"
        "    def write(self, data):\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "_hi.os = types.SimpleNamespace(**{n: getattr(os, n) for n in dir(os) if not n.startswith('__')})\n"
        "_hi.os.fdopen = _fdopen\n"
    )


def half_migrated_mlflow_store(db: Path) -> Path:
    """What a full disk during MLflow's first migration used to leave: a store with
    ``_alembic_tmp_latest_metrics`` and no runs (every later run failed: table ... already exists)."""
    import sqlite3

    db.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(db)
    con.executescript("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);"
                      "INSERT INTO alembic_version VALUES ('867495a8f9d4');"
                      "CREATE TABLE runs (run_uuid VARCHAR(32) PRIMARY KEY);"
                      "CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250));")
    con.commit()
    con.close()
    return db


# -- damaged caches -----------------------------------------------------------------------------
def garbage_feature_store(path: Path) -> Path:
    """A features.sqlite that is not a database at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a database, just bytes\n" * 400)
    return path


def truncate_file(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to ``keep`` of its bytes (a copy interrupted, a disk that filled up)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def truncate_feature_row(path: Path) -> tuple[str, str]:
    """Cut one stored feature vector's bytes in half; returns its (namespace, sha)."""
    import sqlite3

    con = sqlite3.connect(path)
    ns, sha, data = con.execute("SELECT ns, sha, data FROM features ORDER BY rowid LIMIT 1").fetchone()
    con.execute("UPDATE features SET data=? WHERE ns=? AND sha=?", (data[: len(data) // 2], ns, sha))
    con.commit()
    con.close()
    return ns, sha


# -- worker processes ---------------------------------------------------------------------------
def die_in_worker(chunk: list) -> list:
    """A pool task that kills its own process with SIGKILL (as the out-of-memory killer does)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)
    return chunk


#: a script that calls evaluate() at its top level, without ``if __name__ == "__main__":``
#: (argv: OUT); it prints TOPLEVEL each time its top level runs
NO_MAIN_GUARD_SCRIPT = """
import sys, threading
print("TOPLEVEL", flush=True)
from harness import evaluate
def go():
    res = evaluate("demo", ["classical"], num_pairs=2, metrics=["pose"], out=sys.argv[1], mlflow=False,
                   report=False, workers=2, progress=False, device="cpu", log=lambda m: None)
    print("SWAPPED", res.summaries[0]["swaps"]["computed"], flush=True)
t = threading.Thread(target=go) if "thread" in sys.argv else None
go() if t is None else (t.start(), t.join())
"""
