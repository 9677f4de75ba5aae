"""Rebuild protocols/demo_faces/ from the real photos that ship inside packages.

Sources (see protocols/demo_faces/ORIGIN.md for licences):
  * insightface 2.1 wheel, insightface/data/images/t1.jpg and Tom_Hanks_54745.png
  * scikit-image, skimage.data.astronaut() (NASA, public domain)
  * matplotlib sample data, grace_hopper.jpg (U.S. Navy, public domain)
  * npm @vladmandic/face-api 1.7.15, demo/sample1.jpg ... sample6.jpg (MIT package)

Usage:
    python scripts/build_demo_faces.py                 # runs `npm pack` for face-api
    python scripts/build_demo_faces.py --face-api DIR  # DIR holds sample1.jpg ... sample6.jpg

Every face is detected, landmarked and FFHQ-aligned by faceeval.faces (the same code the
`folder` protocol uses) and written as a 256x256 PNG with faces.json describing it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faceeval.faces.crops import crop_faces
from faceeval.faces.detect import DlibDetector
from faceeval.images import load_rgb, save_png

OUT = Path(__file__).resolve().parents[1] / "protocols" / "demo_faces"
SIZE = 256
FACE_API = "@vladmandic/face-api@1.7.15"


def face_api_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    tmp = Path(tempfile.mkdtemp())
    subprocess.run(["npm", "pack", FACE_API, "--silent"], cwd=tmp, check=True, stdout=subprocess.DEVNULL)
    with tarfile.open(next(tmp.glob("*.tgz"))) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/demo/sample") and m.name.endswith(".jpg")]
        tar.extractall(tmp, members=members, filter="data")
    return tmp / "package" / "demo"


def sources(face_api: Path) -> list[dict]:
    import insightface
    import matplotlib.cbook
    import skimage
    import skimage.data

    ins = Path(insightface.__file__).parent / "data" / "images"
    astro = Path(skimage.data.__file__).parent / "astronaut.png"
    hopper = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    items = [
        dict(tag="insightface_t1", path=ins / "t1.jpg", package=f"insightface {insightface.__version__} (PyPI)",
             licence="insightface package (MIT); the photo's own licence is not stated", all_faces=True),
        dict(tag="tom_hanks", path=ins / "Tom_Hanks_54745.png", package=f"insightface {insightface.__version__} (PyPI)",
             licence="insightface package (MIT); LFW-style aligned sample, photo licence not stated", all_faces=False),
        dict(tag="astronaut", path=astro, package=f"scikit-image {skimage.__version__} (PyPI)",
             licence="public domain (NASA photo of Eileen Collins)", all_faces=False),
        dict(tag="grace_hopper", path=hopper, package="matplotlib sample data (PyPI)",
             licence="public domain (U.S. Navy photo)", all_faces=False),
    ]
    for k in range(1, 7):
        items.append(dict(tag=f"faceapi_sample{k}", path=face_api / f"sample{k}.jpg", package=f"npm {FACE_API}",
                          licence="face-api package (MIT); the photo's own licence is not stated", all_faces=True))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--face-api", help="folder with face-api's demo sample*.jpg (default: npm pack)")
    args = parser.parse_args()
    # min_score 0.2 drops one false positive (a uniform badge in sample1, score 0.13)
    detector = DlibDetector(upsample=1, min_score=0.2)
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    records = []
    for src in sources(face_api_dir(args.face_api)):
        image = load_rgb(src["path"])
        crops = crop_faces(image, detector, SIZE)
        if not src["all_faces"]:
            crops = crops[:1]
        # left-to-right order makes file names stable and readable
        crops = sorted(crops, key=lambda c: (c.face.box[0], c.face.box[1]))
        for i, c in enumerate(crops):
            name = src["tag"] if len(crops) == 1 else f"{src['tag']}_{i}"
            save_png(OUT / f"{name}.png", c.aligned.crop)
            records.append(dict(
                file=f"{name}.png", identity=name, source_file=src["path"].name,
                source_sha256=hashlib.sha256(src["path"].read_bytes()).hexdigest(), package=src["package"],
                licence=src["licence"], box=[round(v, 1) for v in c.face.box],
                face_px=round(float(np.sqrt(c.face.area))),
            ))
    (OUT / "faces.json").write_text(json.dumps(records, indent=1) + "\n")
    print(f"wrote {len(records)} aligned faces to {OUT}")


if __name__ == "__main__":
    main()
