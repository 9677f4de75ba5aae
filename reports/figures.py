"""Qualitative grid like the paper's Figure 5: source, target, then each method's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from faceeval.checks import input_root, inside
from faceeval.images import load_rgb, save_figure
from faceeval.summaries import RunSummary
from reports.tables import REFERENCE_METHODS, select_runs


def swap_grid(summaries: list[RunSummary], out_dir: Path, protocol: str, path: Path, rows: int = 6) -> Path | None:
    """Write a PNG grid for ``protocol``'s first ``rows`` pairs; None when it has no runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    runs = [s for s in select_runs(summaries) if s.protocol == protocol]
    runs = [s for s in runs if s.method not in REFERENCE_METHODS] or runs
    if not runs:
        return None
    frames = {s.method: pd.read_parquet(Path(s.run_dir) / "pairs.parquet") for s in runs}
    first = next(iter(frames.values())).head(rows)
    root = input_root(runs[0].root, runs[0].run_dir, out_dir)
    cols = ["Source (input)", "Target (input)"] + list(frames)
    fig, axes = plt.subplots(len(first), len(cols), figsize=(1.6 * len(cols), 1.6 * len(first)), squeeze=False)
    for i, (_, pair) in enumerate(first.iterrows()):
        # paths from the run files, read only inside the dataset root and the output folder
        images = [load_rgb(inside(root, pair["source"])), load_rgb(inside(root, pair["target"]))]
        for frame in frames.values():
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
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path
