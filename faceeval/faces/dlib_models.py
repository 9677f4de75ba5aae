"""dlib's models, loaded in one place: each checked file (``faceeval.weights``) once per
process, shared by the detector, the landmark stage and the identity descriptor."""

from __future__ import annotations

from functools import cache
from typing import Any

from faceeval.weights import DLIB_68, verified

#: weight file -> the dlib class that reads it
_READERS = {
    DLIB_68: "shape_predictor",
    "shape_predictor_5_face_landmarks.dat": "shape_predictor",
    "dlib_face_recognition_resnet_model_v1.dat": "face_recognition_model_v1",
}


@cache
def _read(path: str, sha256: str, reader: str) -> Any:  # sha256: a changed file is a new key
    import dlib

    return getattr(dlib, reader)(path)


def dlib_model(name: str) -> tuple[Any, str]:
    """(model, sha256) of a dlib weight file, checked against its pinned checksum."""
    path, sha = verified(name)
    return _read(str(path), sha, _READERS[name]), sha


@cache
def hog_detector() -> Any:
    """dlib's HOG frontal face detector (built in; no file)."""
    import dlib

    return dlib.get_frontal_face_detector()
