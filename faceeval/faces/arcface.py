"""ArcFace-style 5-point similarity alignment to 112x112 (insightface's ``norm_crop``).

Identity networks (ArcFace/CosFace iresnet, insightface ONNX packs) were trained on
crops made by a similarity transform that maps five landmarks (eye centres, nose tip,
mouth corners) onto a fixed template. Scoring with any other crop lowers their accuracy,
so every identity backend gets this crop. The transform is insightface's own
``insightface.utils.face_align.norm_crop`` (skimage ``SimilarityTransform`` least
squares + ``cv2.warpAffine``), called directly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

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


def similarity_matrices(points: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """(B, 5, 2) points -> (B, 2, 3) least-squares similarity onto ``template`` (5, 2), on the
    points' device (Umeyama's closed form; the same transform as insightface's
    ``estimate_norm``, for batched alignment on a GPU)."""
    import torch

    mp, mt = points.mean(1, keepdim=True), template.mean(0, keepdim=True)
    p, t = points - mp, (template - mt).expand_as(points)
    cov = t.transpose(1, 2) @ p / points.shape[1]  # (B, 2, 2)
    u, s, vh = torch.linalg.svd(cov)
    d = torch.sign(torch.linalg.det(u @ vh))
    sign = torch.stack([torch.ones_like(d), d], 1)  # (B, 2)
    rot = u @ torch.diag_embed(sign) @ vh
    scale = (s * sign).sum(1) / p.pow(2).sum((1, 2)).div(points.shape[1])
    a = scale[:, None, None] * rot  # (B, 2, 2)
    b = mt.transpose(0, 1)[None] - a @ mp.transpose(1, 2)  # (B, 2, 1)
    return torch.cat([a, b], 2)


def warp_affine(images: torch.Tensor, m: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) float + (B, 2, 3) pixel-space affine (src -> dst) -> (B, 3, size, size),
    bilinear with zero borders: ``cv2.warpAffine`` semantics (as ``norm_crop``) on the device."""
    import torch
    import torch.nn.functional as F

    b, _, h, w = images.shape
    full = torch.cat([m, m.new_tensor([0, 0, 1]).expand(b, 1, 3)], 1)
    inv = torch.linalg.inv(full)[:, :2]  # dst pixel -> src pixel
    # normalised coords: x_n = (2x + 1) / W - 1 (align_corners=False)
    to_px = images.new_tensor([[size / 2, 0, size / 2 - 0.5], [0, size / 2, size / 2 - 0.5], [0, 0, 1]])
    from_px = images.new_tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]])
    theta = from_px @ torch.cat([inv, inv.new_tensor([0, 0, 1]).expand(b, 1, 3)], 1) @ to_px
    grid = F.affine_grid(theta[:, :2], (b, 3, size, size), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
