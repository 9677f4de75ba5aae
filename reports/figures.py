"""Qualitative grid like the paper's Figure 5: source, target, then each method's output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from faceeval.checks import input_root, inside
from faceeval.images import load_rgb
from reports.tables import REFERENCE_METHODS, select_runs


def swap_grid(summaries: list[dict[str, Any]], out_dir: Path, protocol: str, path: Path, rows: int = 6) -> Path | None:
    """Write a PNG grid for ``protocol``'s first ``rows`` pairs; None when it has no runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    runs = [s for s in select_runs(summaries) if s["protocol"] == protocol]
    runs = [s for s in runs if s["method"] not in REFERENCE_METHODS] or runs
    if not runs:
        return None
    frames = {s["method"]: pd.read_parquet(Path(s["run_dir"]) / "pairs.parquet") for s in runs}
    first = next(iter(frames.values())).head(rows)
    root = input_root(runs[0], out_dir)
    cols = ["Source (input)", "Target (input)"] + list(frames)
    fig, axes = plt.subplots(len(first), len(cols), figsize=(1.6 * len(cols), 1.6 * len(first)), squeeze=False)
    for i, (_, pair) in enumerate(first.iterrows()):
        # paths from the run files, read only inside the dataset root and the output folder
        images = [load_rgb(inside(root, pair["source"])), load_rgb(inside(root, pair["target"]))]
        for m, frame in frames.items():
            row = frame.loc[frame["pair_id"] == pair["pair_id"]]
            images.append(load_rgb(inside(out_dir, row["swap_file"].iloc[0])) if len(row) else np.zeros_like(images[0]))
        for j, img in enumerate(images):
            ax = axes[i, j]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=9)
        axes[i, 0].set_ylabel(pair["pair_id"], fontsize=7)
    fig.suptitle(f"{protocol}: identity from source, attributes from target", fontsize=9)
    fig.tight_layout()
    _save_atomic(fig, path, dpi=110)
    plt.close(fig)
    return path


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
    _save_atomic(fig, path, dpi=120)
    plt.close(fig)
    return path


def _save_atomic(fig, path: Path, dpi: int) -> None:
    """Render a figure to memory and write it in one rename: a kill never leaves half a PNG."""
    import io

    from faceeval.images import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, dpi=dpi, format=Path(path).suffix.lstrip(".") or "png")
    atomic_write_bytes(Path(path), buf.getvalue())
