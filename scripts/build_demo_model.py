"""Pack the shipped demo CodeSwap (codeswap/demo_model/codeswap-demo.pt) from a trained recipe folder.

    python benchmarks/codeswap_short_training.py --out runs/demo-model     # train (resumable) + judge
    python scripts/build_demo_model.py --from runs/demo-model               # pack what it trained

The folder must hold the default :class:`codeswap.demo.DemoRecipe` (its summary.json says
which recipe it trained); the bundle records the training data and the prior's identity
ceiling measured by the benchmark, which every CodeSwap demo result then states.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeswap.demo import BUNDLE, DEMO_FACES, DemoRecipe, pack
from faceeval.images import file_sha256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=BUNDLE)
    args = ap.parse_args()
    summary = json.loads((args.src / "summary.json").read_text())
    recipe = DemoRecipe()
    trained = {k: tuple(v) if isinstance(v, list) else v for k, v in summary["recipe"].items()}
    if trained != asdict(recipe):
        sys.exit(f"error: {args.src} trained another recipe than the default DemoRecipe")
    prior = summary["prior_train"]
    ceiling = {"dlib_top1": prior["dlib/top1"], "facenet_top1": prior["facenet_trained_with/top1"],
               "psnr": prior["psnr"]}
    faces = json.loads((DEMO_FACES / "faces.json").read_text())
    training = {"faces": summary["train_faces"], "resolution": recipe.resolution,
                "data": "protocols/demo_faces (every face)",
                "faces_json_sha256": file_sha256(DEMO_FACES / "faces.json"),
                "command": "python benchmarks/codeswap_short_training.py --out runs/demo-model",
                "listed_faces": len(faces) if isinstance(faces, list) else len(faces.get("faces", []))}
    out = pack(recipe, args.src, args.out, training, ceiling)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, sha256 {file_sha256(out)})")


if __name__ == "__main__":
    main()
