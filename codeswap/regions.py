"""Regional swap and region attention (paper §4.5, Figures 8 and 9) on real photos, and the
figure that shows them (:func:`region_figure`, written by ``harness figure regions``).

A region (eyes, nose, mouth) is a set of cells of the latent grid, found from the target's
68 landmarks: the box of the region's points, padded by ``margin`` of its larger side, and
every latent cell that box touches. The regional swap keeps the target's own stage-1 codes
outside the region and takes the swapped codes inside it (``CodeSwap.region_swap``); the
attention of a region is where the target's region tokens look, over both faces, in one
layer of the unified self-attention (``CodeSwap.region_attention``).

    study = region_study(model, source_crop, target_crop, target_landmarks)
    study.swaps["eyes"]      # (R, R, 3) uint8: identity of the source in the eyes only
    study.attention["eyes"]  # (2, m, n): attention over the source's grid, then the target's
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from faceeval.errors import HarnessError
from faceeval.images import save_figure

# iBUG 300-W 68-point indices of each region (Figure 8's columns, in the paper's order)
REGION_POINTS: dict[str, tuple[int, ...]] = {
    "eyes": tuple(range(36, 48)),
    "mouth": tuple(range(48, 68)),
    "nose": tuple(range(27, 36)),
}


def region_cells(landmarks: np.ndarray, image_side: int, latent_side: int, region: str,
                 margin: float = 0.25) -> np.ndarray:
    """(68, 2) landmarks in crop pixels -> (latent_side, latent_side) bool cells of ``region``."""
    if region not in REGION_POINTS:
        raise HarnessError(f"unknown region {region!r}; choose from {', '.join(REGION_POINTS)}")
    pts = np.asarray(landmarks, np.float64)[list(REGION_POINTS[region])]  # (k, 2) x, y
    lo, hi = pts.min(0), pts.max(0)
    pad = margin * float((hi - lo).max())
    cell = image_side / latent_side
    # cells [i*cell, (i+1)*cell) overlapping [lo - pad, hi + pad]
    first = np.clip(np.floor((lo - pad) / cell), 0, latent_side - 1).astype(int)  # (x, y)
    last = np.clip(np.ceil((hi + pad) / cell) - 1, 0, latent_side - 1).astype(int)
    cells = np.zeros((latent_side, latent_side), bool)
    cells[first[1] : last[1] + 1, first[0] : last[0] + 1] = True  # rows are y
    return cells


@dataclass(frozen=True)
class RegionStudy:
    regions: dict[str, np.ndarray]  # name -> (m, n) bool cells on the target's grid
    swaps: dict[str, np.ndarray]  # name (and "all") -> (R, R, 3) uint8 decoder output
    attention: dict[str, np.ndarray]  # name -> (2, m, n): over the source's grid, then the target's
    layer: int
    notes: list[str] = field(default_factory=list)

    def other_share(self) -> dict[str, float]:
        """Share of each region's attention that goes to the other face (the source)."""
        return {k: float(v[0].sum() / v.sum()) for k, v in self.attention.items()}


def _to_model(img: np.ndarray, side: int, device: torch.device) -> torch.Tensor:
    """uint8 (S, S, 3) -> (1, 3, side, side) in [-1, 1]."""
    from faceeval.images import to_tensor

    return to_tensor(img[None], size=side, device=str(device)) * 2 - 1


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, R, R) in [-1, 1] -> uint8 (R, R, 3)."""
    from faceeval.images import to_uint8

    return to_uint8((x + 1) * 0.5)[0]


@torch.no_grad()
def region_study(model, source: np.ndarray, target: np.ndarray, target_landmarks: np.ndarray,
                 regions: tuple[str, ...] = tuple(REGION_POINTS), layer: int = -1,
                 margin: float = 0.25) -> RegionStudy:
    """Figures 8 and 9 for one pair of aligned crops (uint8, any equal size)."""
    ae = model.cfg.autoencoder
    if source.shape != target.shape:
        raise HarnessError(f"source and target crops differ in shape: {source.shape} vs {target.shape}")
    device = next(model.parameters()).device
    a, b = _to_model(source, ae.resolution, device), _to_model(target, ae.resolution, device)
    scale = ae.resolution / target.shape[0]
    cells = {r: region_cells(np.asarray(target_landmarks) * scale, ae.resolution, ae.latent_size, r, margin)
             for r in regions}
    swaps, attention = {}, {}
    for r, c in cells.items():
        mask = torch.from_numpy(c)
        swaps[r] = _to_uint8(model.region_swap(a, b, mask))
        att_a, att_b = model.region_attention(a, b, mask, layer=layer)  # (1, m, n) each
        attention[r] = torch.stack([att_a[0], att_b[0]]).float().cpu().numpy()
    swaps["all"] = _to_uint8(model.region_swap(a, b, torch.ones(ae.latent_size, ae.latent_size, dtype=torch.bool)))
    return RegionStudy(cells, swaps, attention, layer)


def crop_with_landmarks(image: np.ndarray, size: int, aligned: bool,
                        detector=None) -> tuple[np.ndarray, np.ndarray, bool]:
    """A photo -> (FFHQ-aligned crop (size, size, 3), its 68 landmarks in crop pixels, face found).

    ``aligned=True`` takes the image as an aligned crop already (only resized); its landmarks
    come from dlib, predicted inside the expected face box when the detector finds no face.
    Otherwise the largest face is detected and aligned; no face is an error. ``detector``: a
    :class:`DlibDetector` to reuse across calls (its models load once).
    """
    import cv2

    from faceeval.faces.crops import crop_largest
    from faceeval.faces.detect import DlibDetector
    from faceeval.faces.landmarks import FFHQ_FACE_BOX

    det = detector or DlibDetector(upsample=1)
    if not aligned:
        res = crop_largest(image, det, size)
        if res is None:
            raise HarnessError("no face found in the photo (pass --aligned for an already aligned crop)")
        m = res.aligned.matrix  # (2, 3): photo -> crop
        lm = res.face.landmarks @ m[:, :2].T + m[:, 2]
        return res.aligned.crop, lm, True
    if image.shape[0] != image.shape[1]:
        raise HarnessError(f"an aligned crop must be square, got {image.shape[1]}x{image.shape[0]}")
    work = max(256, image.shape[0])  # dlib's HOG needs faces of ~80 px
    big = cv2.resize(image, (work, work), interpolation=cv2.INTER_CUBIC)
    faces = det.detect(big)
    found = bool(faces)
    lm = faces[0].landmarks if found else det.landmarks(big, tuple(v * work for v in FFHQ_FACE_BOX))
    crop = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_CUBIC)
    return crop, lm * (size / work), found


def region_figure(study, source: np.ndarray, target: np.ndarray, path: Path, title: str = "") -> Path:
    """Figures 8 and 9 in one PNG.

    Top row (Fig. 8): source, target, the regional swaps in the study's order, then "all".
    Below, one row per region (Fig. 9): the target with the region's latent cells outlined,
    and where those cells attend over the source and over the target (one colour scale per
    row; the titles give each face's share of the attention).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    names = list(study.regions)
    top = [("Source", source), ("Target", target)] + [(n.capitalize(), study.swaps[n]) for n in names]
    top.append(("All", study.swaps["all"]))
    cols = len(top)
    fig, axes = plt.subplots(1 + len(names), cols, figsize=(1.7 * cols, 1.8 * (1 + len(names))), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for j, (label, img) in enumerate(top):
        axes[0, j].imshow(img)
        axes[0, j].set_title(label, fontsize=9)
    for i, name in enumerate(names, start=1):
        cells = study.regions[name]
        side = cells.shape[0]
        att = study.attention[name]  # (2, m, n)
        vmin, vmax = float(att.min()), float(att.max())
        share = att.reshape(2, -1).sum(1) / att.sum()
        ax = axes[i, 0]
        ax.imshow(target, extent=(0, side, side, 0))
        for r, c in zip(*np.nonzero(cells)):
            ax.add_patch(Rectangle((c, r), 1, 1, fill=False, edgecolor="yellow", linewidth=0.6))
        ax.set_title(f"{name} cells", fontsize=8)
        for j, (face, img) in enumerate([("source", source), ("target", target)], start=1):
            ax = axes[i, j]
            ax.imshow(img, extent=(0, side, side, 0))
            ax.imshow(att[j - 1], extent=(0, side, side, 0), cmap="inferno", alpha=0.6, vmin=vmin, vmax=vmax)
            ax.set_title(f"over {face}: {share[j - 1]:.0%}", fontsize=8)
    fig.suptitle(title or f"regional swap (top) and region attention, layer {study.layer}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
