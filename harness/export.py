"""``harness export-pairs``: a protocol's pairs and aligned inputs, for other repositories.

Methods that cannot run inside the harness (FSGAN, MegaFS, InfoSwap, DiffSwap, BlendFace,
E4S: their own environments, CUDA extensions, weights behind request forms) are run in
their own repositories on exported inputs, and their outputs are scored with
``--method precomputed``. Layout written to ``OUT``::

    source/<pair_id>.png     the pair's source face (aligned crop, protocol resolution)
    target/<pair_id>.png     the pair's target face
    outputs/                 empty: put the swap of pair P here as <pair_id>.png
    pairs.csv                pair_id, source_file, target_file, output_file, source, target,
                             source_id, target_id  (one row per pair; paths relative to OUT)
    manifest/pairs.csv       the protocol's manifest (+ gallery.csv), byte-identical to a run's
    export.json              protocol, version, seed, resolution, manifest sha256
    README.md                this round trip and each repository's command shape

Naming source and target by pair id makes ``source/X.png`` and ``target/X.png`` share a
name, which tools that pair files by name across two folders expect.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from faceeval.api import PairSet
from faceeval.errors import HarnessError
from faceeval.images import atomic_write_bytes, load_rgb, save_png

# Command shapes of the official repositories (from their READMEs; flags change between
# versions: check the checkout you run). SRC / TGT / OUT stand for one row of pairs.csv.
REPO_NOTES: dict[str, str] = {
    "FSGAN (YuvalNirkin/fsgan)":
        "per pair: `python fsgan/inference/swap.py SRC -t TGT -o DIR` (image or video inputs; "
        "re-detects the face), then copy the result to outputs/<pair_id>.png",
    "MegaFS (zyainfal/One-Shot-Face-Swapping-on-Megapixels)":
        "swaps CelebA-HQ images by index with CelebAMask-HQ masks at 1024 px: on the celebahq protocol map "
        "each row's source/target to its CelebA-HQ index, run its inference script per pair, save "
        "outputs/<pair_id>.png (any square size: the harness resizes)",
    "InfoSwap (GGGHSL/InfoSwap-master)":
        "`python inference_demo.py -src SRC -tar DIR_OF_TARGETS -save DIR --ib_mode smooth`: one source over a "
        "folder of targets; per pair, pass a folder holding that row's target, rename the result to "
        "outputs/<pair_id>.png",
    "DiffSwap (wl-zhao/DiffSwap)":
        "put the source and target images where its README says (`data/portrait_jpg`), run `python pipeline.py`; "
        "results appear in `data/portrait/swap_res_ori`: map them back to pair ids and save as "
        "outputs/<pair_id>.png",
    "BlendFace (mapooon/BlendFace)":
        "its face-swapping demo (BlendSwap generator, `checkpoints/blendswap.pth`) takes an aligned source "
        "and target: call it per row and save outputs/<pair_id>.png",
    "E4S (e4s2022/e4s)":
        "per pair: `python scripts/face_swap.py --source=SRC --target=TGT --output_dir DIR`, then copy the "
        "swapped face to outputs/<pair_id>.png",
}

PAIR_EXPORT_COLUMNS = ("pair_id", "source_file", "target_file", "output_file", "source", "target",
                       "source_id", "target_id")


def _pairs_csv(pairset: PairSet) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PAIR_EXPORT_COLUMNS)
    for p in pairset.pairs:
        w.writerow((p.pair_id, f"source/{p.pair_id}.png", f"target/{p.pair_id}.png", f"outputs/{p.pair_id}.png",
                    p.source, p.target, p.source_id, p.target_id))
    return buf.getvalue().encode("utf-8")


def readme_text(pairset: PairSet) -> str:
    """The exported folder's README: the round trip and each repository's command shape."""
    lines = [
        f"# Pairs of `{pairset.protocol}` (v{pairset.version}, seed {pairset.seed}) for external methods",
        "",
        f"{len(pairset.pairs)} pairs, {pairset.resolution}x{pairset.resolution} aligned crops, "
        f"manifest sha256 `{pairset.manifest_sha256}`.",
        "",
        "1. Run a method on each row of `pairs.csv` (`source_file` onto `target_file`).",
        "2. Save the swap of each pair as `outputs/<pair_id>.png` (square; any size).",
        "3. Score: `harness run --protocol <same protocol, seed and options> --method precomputed "
        "--method-option precomputed.dir=<this folder>/outputs --method-option precomputed.label=<name>`",
        "",
        "A bash loop over the rows:",
        "",
        "```bash",
        "tail -n +2 pairs.csv | while IFS=, read -r pid src tgt out _; do",
        "  your_swap_command \"$src\" \"$tgt\" \"$out\"   # see below",
        "done",
        "```",
        "",
        "## Command shapes of the official repositories",
        "",
    ]
    lines += [f"- **{repo}**: {note}" for repo, note in REPO_NOTES.items()]
    return "\n".join(lines) + "\n"


def export_pairs(pairset: PairSet, out: Path) -> Path:
    """Write ``pairset``'s pairs and aligned inputs to ``out`` (see the module docstring).

    Re-exporting the same pair set into the same folder is allowed (files are rewritten);
    a different pair set into a folder that already holds one is an error.
    """
    out = Path(out).expanduser().resolve()
    manifest = out / "manifest" / "pairs.csv"
    if manifest.is_file() and manifest.read_bytes() != pairset.manifest_bytes():
        raise HarnessError(f"{out} already holds a different pair set (manifest/pairs.csv differs): "
                           "choose another --out")
    for sub in ("source", "target", "outputs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for p in pairset.pairs:
        save_png(out / "source" / f"{p.pair_id}.png", load_rgb(pairset.path(p.source)))
        save_png(out / "target" / f"{p.pair_id}.png", load_rgb(pairset.path(p.target)))
    pairset.write(out / "manifest")
    atomic_write_bytes(out / "pairs.csv", _pairs_csv(pairset))
    meta = {"protocol": pairset.protocol, "version": pairset.version, "seed": pairset.seed,
            "resolution": pairset.resolution, "num_pairs": len(pairset.pairs),
            "manifest_sha256": pairset.manifest_sha256, "settings": dict(pairset.settings)}
    atomic_write_bytes(out / "export.json", (json.dumps(meta, indent=1, default=str) + "\n").encode())
    atomic_write_bytes(out / "README.md", readme_text(pairset).encode())
    return out
