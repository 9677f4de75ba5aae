"""Time the celebahq protocol on a full-size CelebA-HQ layout (30,000 files, the real
mapping and identity-file sizes) with the paper's defaults, and print the figures.

The images are hard links to one small face JPEG (the point is the file count, the
200k-line identity file and the 30k-row mapping, not pixels). Usage:

    python benchmarks/celebahq_full_layout.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.celebahq import CelebAHQProtocol

CELEBA_IMAGES = 202_599
CELEBA_IDENTITIES = 10_177
HQ_IMAGES = 30_000
HQ_IDENTITIES = 6_217  # distinct identities in CelebA-HQ


def write_tree(root: Path) -> None:
    rng = random.Random(0)
    img_dir = root / "CelebA-HQ-img"
    img_dir.mkdir(parents=True)
    face = Path(__file__).resolve().parents[1] / "protocols" / "demo_faces" / "astronaut.png"
    Image.open(face).convert("RGB").resize((128, 128)).save(root / "face.jpg", quality=90)
    for i in range(HQ_IMAGES):
        os.link(root / "face.jpg", img_dir / f"{i}.jpg")
    identity = [rng.randrange(1, CELEBA_IDENTITIES + 1) for _ in range(CELEBA_IMAGES)]
    hq_ids = rng.sample(range(1, CELEBA_IDENTITIES + 1), HQ_IDENTITIES)
    orig = rng.sample(range(CELEBA_IMAGES), HQ_IMAGES)
    for k, o in enumerate(orig):  # CelebA-HQ images cover 6,217 identities
        identity[o] = hq_ids[k % HQ_IDENTITIES]
    rows = [f"{'idx':<12}{'orig_idx':<12}{'orig_file':<12}"]
    rows += [f"{i:<12}{o:<12}{o + 1:06d}.jpg  " for i, o in enumerate(orig)]
    (root / "CelebA-HQ-to-CelebA-mapping.txt").write_text("\n".join(rows) + "\n")
    (root / "identity_CelebA.txt").write_text("".join(f"{i + 1:06d}.jpg {identity[i]}\n" for i in range(CELEBA_IMAGES)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", type=Path, help="write the tree here and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp) / "celebahq"
        t = time.perf_counter()
        write_tree(root)
        print(f"tree written: {time.perf_counter() - t:.1f} s")
        proto = CelebAHQProtocol(root=root, cache_dir=Path(tmp) / "cache")
        t = time.perf_counter()
        layout = proto.validate()
        print(f"validate: {len(layout.images):,} images, {layout.num_identities:,} identities in "
              f"{time.perf_counter() - t:.1f} s")
        for attempt in ("first build (1,000 resizes)", "second build (cached)"):
            proto = CelebAHQProtocol(root=root, cache_dir=Path(tmp) / "cache")
            t = time.perf_counter()
            ps = proto.build()
            print(f"{attempt}: {time.perf_counter() - t:.1f} s; {len(ps.pairs)} pairs, {len(ps.gallery)} gallery, "
                  f"{len({g.identity for g in ps.gallery})} distinct identities, manifest {ps.manifest_sha256[:12]}")
        assert max(Counter(g.identity for g in ps.gallery).values()) == 1
        assert all(p.source_id != p.target_id for p in ps.pairs)
        print("notes:", "; ".join(ps.notes))


if __name__ == "__main__":
    main()
