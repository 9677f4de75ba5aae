"""Numbers and places the whole tree shares, each defined once here."""

from __future__ import annotations

from pathlib import Path

#: ImageNet channel statistics (RGB, [0, 1] input): torchvision's normalisation
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: where the face sits in an FFHQ-aligned square crop, as fractions of its side (left, top,
#: right, bottom): the median dlib HOG box of the demo photos mapped through their
#: alignment. dlib's predictors run inside it when no detector runs (or finds nothing).
FFHQ_FACE_BOX = (0.192, 0.291, 0.790, 0.879)

#: BiSeNet (CelebAMask-HQ) classes (faceeval.models.bisenet) that make the face region: skin 1, brows 2-3, eyes 4-5,
#: eye glasses 6, nose 10, mouth 11, lips 12-13. Left out: background, ears 7-8, earrings 9,
#: neck 14-15, cloth 16, hair 17, hat 18 - the region a swap replaces is the inner face plus
#: forehead and cheeks, which is what the landmark hull approximates too; glasses count as
#: face since they sit on it and a swap has to redraw them.
FACE_CLASSES = (1, 2, 3, 4, 5, 6, 10, 11, 12, 13)


def cache_root() -> Path:
    """The default cache folder, ``~/.cache/codeswap-harness``: weights, the checksum memo,
    and crops of protocols run without ``--out``."""
    return Path.home() / ".cache" / "codeswap-harness"


#: The bundled demo faces (listed in faces.json): the `demo` protocol's images and the data
#: the CodeSwap demo model trains on.
DEMO_DIR = Path(__file__).resolve().parents[1] / "protocols" / "demo_faces"
