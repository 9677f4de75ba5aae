"""``precomputed``: score swaps that another program produced (FSGAN, MegaFS, InfoSwap, ...).

The outputs live in one folder, one image per pair, named in either of two ways:

* by pair id:            ``<pair_id>.png``            (what ``harness export-pairs`` asks for)
* by source/target name: ``<source_stem>__<target_stem>.png`` where the stems are the file
  names without suffix of the pair's source and target images in the protocol
  (``alice/003.png`` -> ``003``); two underscores separate them.

Any of ``.png .jpg .jpeg .bmp .webp`` is accepted. ``key=auto`` (default) takes whichever
naming matches more files. Outputs must be square aligned crops (any size; they are
resized to the protocol's resolution, as every method's output is).

Nothing is silently ignored: before any swap the folder is checked against the whole
pair set; missing outputs are an error that lists them (``allow_missing=true`` turns
that into a counted, reported skip: a missing output is scored as the unchanged target,
and the run's notes say how many), and files that match no pair are reported.

The runner passes pair identity through the optional :meth:`swap_batch` hook (see
``harness.runner.run_swaps``); plain :meth:`swap` cannot know which pair it is given.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

from faceeval.api import FacePair, PairSet, SwapMethod
from faceeval.checks import check_name
from faceeval.errors import HarnessError
from faceeval.images import file_sha256, load_rgb, to_tensor
from faceeval.options import parse_bool

OUTPUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
NAME_SEPARATOR = "__"
ENV_DIR = "HARNESS_PRECOMPUTED_DIR"


def names_key(pair: FacePair) -> str:
    """The ``<source_stem>__<target_stem>`` key of a pair."""
    return f"{Path(pair.source).stem}{NAME_SEPARATOR}{Path(pair.target).stem}"


def _listing(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


class PrecomputedMethod(SwapMethod):
    """Reads swapped faces from a folder instead of computing them.

    Options (``--method-option precomputed.KEY=VALUE`` on the CLI):
        dir:            the folder of outputs (or the ``HARNESS_PRECOMPUTED_DIR`` variable)
        key:            ``auto`` | ``pair_id`` | ``names``
        label:          name of the row in tables (default ``precomputed``), e.g. ``fsgan``
        allow_missing:  score a missing output as the unchanged target and report it
    """

    name = "precomputed"
    resolution = None

    def __init__(self, device: str = "cpu", dir: str | Path | None = None, key: str = "auto",
                 label: str | None = None, allow_missing: bool = False) -> None:
        super().__init__(device)
        folder = dir if dir is not None else os.environ.get(ENV_DIR)
        if not folder:
            raise HarnessError(f"method precomputed needs a folder of outputs: --method-option "
                               f"precomputed.dir=PATH (or set {ENV_DIR})")
        self.folder = Path(folder).expanduser().resolve()
        if not self.folder.is_dir():
            raise HarnessError(f"precomputed outputs folder not found: {self.folder}")
        if key not in ("auto", "pair_id", "names"):
            raise HarnessError(f"precomputed key must be auto, pair_id or names, got {key!r}")
        self.key = key
        if label:
            # the label names the run folder and the swap cache: a name, never a path
            self.name = check_name("precomputed label", str(label))
        self.allow_missing = parse_bool(allow_missing, "allow_missing")
        self._files = self._scan()
        self._by_pair: dict[str, Path] = {}
        self.notes: list[str] = []
        self._resolved_key: str | None = None

    def _scan(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for p in sorted(self.folder.iterdir()):
            if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in OUTPUT_SUFFIXES:
                continue
            if p.stem in files:
                raise HarnessError(f"{self.folder}: two outputs for {p.stem!r} ({files[p.stem].name}, {p.name})")
            files[p.stem] = p
        return files

    def prepare(self, pairset: PairSet) -> list[str]:
        """Match every pair to its output file, before any swap. Returns report notes.

        Raises a HarnessError listing the missing pairs unless ``allow_missing``.
        """
        self._check_export(pairset)
        pairs = list(pairset.pairs)
        keyings = {"pair_id": {p.pair_id: p.pair_id for p in pairs}, "names": {p.pair_id: names_key(p) for p in pairs}}
        if len(set(keyings["names"].values())) != len(pairs):
            dup = len(pairs) - len(set(keyings["names"].values()))
            if self.key == "names":
                raise HarnessError(f"{dup} pairs share a <source_stem>__<target_stem> name in {pairset.protocol}: "
                                   f"name outputs by pair id (<pair_id>.png) instead")
            keyings.pop("names")
        if self.key == "auto":
            chosen = max(keyings, key=lambda k: sum(v in self._files for v in keyings[k].values()))
        else:
            chosen = self.key
        self._resolved_key = chosen
        wanted = keyings[chosen]
        missing = [pid if pid == stem else f"{pid} ({stem})" for pid, stem in wanted.items() if stem not in self._files]
        extra = sorted(set(self._files) - set(wanted.values()))
        notes = []
        if missing:
            msg = (f"{len(missing)} of {len(pairs)} pairs have no output in {self.folder} "
                   f"(keyed by {chosen}): {_listing(missing)}")
            if not self.allow_missing:
                raise HarnessError(msg + "; pass precomputed.allow_missing=true to score them as the unchanged target")
            notes.append(msg + "; scored as the unchanged target")
        if extra:
            notes.append(f"{len(extra)} files in {self.folder} match no pair of {pairset.protocol} "
                         f"(keyed by {chosen}): {_listing([self._files[s].name for s in extra])}")
        self._by_pair = {pid: self._files[stem] for pid, stem in wanted.items() if stem in self._files}
        small = self._small_outputs(pairset.resolution)
        if small:
            side = min(s for _, s in small)
            notes.append(f"{len(small)} of {len(self._by_pair)} outputs are smaller than the protocol's "
                         f"{pairset.resolution}px crops (smallest {side}x{side}, e.g. {small[0][0]}) and were upscaled "
                         "to it; their scores reflect the upscaling")
        self.notes = notes
        return notes

    def _small_outputs(self, resolution: int) -> list[tuple[str, int]]:
        """(file name, side) of outputs under the protocol's resolution (read from the headers)."""
        from PIL import Image

        small = []
        for path in self._by_pair.values():
            try:
                with Image.open(path) as im:
                    side = min(im.size)
            except Exception:  # noqa: BLE001 - unreadable files are reported when they are loaded
                continue
            if side < resolution:
                small.append((path.name, side))
        return small

    def _check_export(self, pairset: PairSet) -> None:
        """Outputs inside a ``harness export-pairs`` folder must be for the same pair set."""
        import json

        for meta_path in (self.folder / "export.json", self.folder.parent / "export.json"):
            if meta_path.is_file():
                try:
                    meta = json.loads(meta_path.read_text())
                    if not isinstance(meta, dict):
                        raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
                except (ValueError, UnicodeDecodeError) as exc:
                    raise HarnessError(f"{meta_path}: not a readable harness export ({exc}); re-run "
                                       "`harness export-pairs` or remove it") from None
                if meta.get("manifest_sha256") != pairset.manifest_sha256:
                    raise HarnessError(
                        f"{self.folder} holds outputs for pairs exported from {meta.get('protocol')} "
                        f"(seed {meta.get('seed')}, {meta.get('num_pairs')} pairs, manifest "
                        f"{str(meta.get('manifest_sha256'))[:12]}), not for this run's pairs "
                        f"({pairset.protocol}, seed {pairset.seed}, {len(pairset.pairs)} pairs, manifest "
                        f"{pairset.manifest_sha256[:12]}): use the same protocol options as the export")
                return

    def swap_batch(self, pairs: list[FacePair], source, target):
        """The outputs of ``pairs`` as (B, 3, H, W) float [0, 1], at ``target``'s size."""
        import torch

        if self._resolved_key is None:
            raise HarnessError("precomputed: prepare(pairset) must run before swap_batch (the runner does this)")
        size = target.shape[-1]
        out = []
        for i, p in enumerate(pairs):
            path = self._by_pair.get(p.pair_id)
            if path is None:
                out.append(target[i : i + 1].clone())  # allowed missing: counted in the notes
                continue
            img = load_rgb(path)
            if img.shape[0] != img.shape[1]:
                raise HarnessError(f"{path}: outputs must be square aligned crops, got {img.shape[1]}x{img.shape[0]}")
            out.append(to_tensor(img[None], size, str(target.device)))  # (1, 3, S, S)
        return torch.cat(out)  # (B, 3, S, S)

    def swap(self, source, target):
        raise HarnessError("precomputed outputs are looked up by pair: run through the harness runner "
                           "(it calls swap_batch with the batch's pairs)")

    @cached_property
    def _outputs_sha(self) -> str:
        from faceeval.cache import stable_hash

        return stable_hash(sorted((p.name, file_sha256(p)) for p in self._files.values()))

    def fingerprint(self) -> dict[str, Any]:
        # Content of every output file: replacing an image in the folder invalidates the cache.
        return {"name": self.name, "method": "precomputed", "key": self.key,
                "allow_missing": self.allow_missing, "outputs_sha": self._outputs_sha}

    def describe(self) -> dict[str, Any]:
        return {**self.fingerprint(), "dir": str(self.folder), "files": len(self._files),
                "resolved_key": self._resolved_key, "notes": list(self.notes)}

