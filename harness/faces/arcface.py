"""ArcFace-style 5-point similarity alignment to 112x112 (insightface's ``norm_crop``).

Identity networks (ArcFace/CosFace iresnet, insightface ONNX packs) were trained on
crops made by a similarity transform that maps five landmarks (eye centres, nose tip,
mouth corners) onto a fixed template. Scoring with any other crop lowers their accuracy,
so every identity backend gets this crop. The transform is insightface's own
``insightface.utils.face_align.norm_crop`` (skimage ``SimilarityTransform`` least
squares + ``cv2.warpAffine``), called directly.
"""

from __future__ import annotations

import numpy as np

# insightface ``face_align.arcface_dst``: where the 5 points land in a 112x112 crop
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ARCFACE_SIZE = 112


def arcface_matrix(five: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """(5, 2) landmarks -> (2, 3) similarity transform onto the ArcFace template."""
    from insightface.utils.face_align import estimate_norm

    return estimate_norm(np.asarray(five, dtype=np.float32).reshape(5, 2), image_size=size)


def arcface_crop(image: np.ndarray, five: np.ndarray, size: int = ARCFACE_SIZE) -> np.ndarray:
    """uint8 (H, W, 3) + (5, 2) landmarks -> aligned uint8 (size, size, 3), same channel order."""
    from insightface.utils.face_align import norm_crop

    return norm_crop(np.ascontiguousarray(image), np.asarray(five, dtype=np.float32).reshape(5, 2), image_size=size)
