"""Time FF++ frame preparation (count, decode, detect, align 11 frames) per video at
FF++'s usual sizes, on synthetic clips made from the demo faces, and print the figures.

    python benchmarks/ffpp_prepare.py [--frames 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocols.ffpp import FFppProtocol, video_dir
from protocols.fixtures import DEMO_DIR, _synthetic_video

SIZES = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames per clip (FF++ clips have ~300-700)")
    args = parser.parse_args()
    face = Image.open(DEMO_DIR / "grace_hopper.png").convert("RGB")
    with tempfile.TemporaryDirectory() as tmp:
        for label, (w, h) in SIZES.items():
            root = Path(tmp) / label
            for k in range(2):
                _synthetic_video(root / video_dir("c23") / f"{k:03d}.mp4", face.resize((h // 2 * 2,) * 2), seed=k,
                                 frames=args.frames, gap_every=None, width=w, height=h)
            proto = FFppProtocol(root=root, cache_dir=Path(tmp) / "cache")
            t = time.perf_counter()
            proto.build()
            first = (time.perf_counter() - t) / 2
            t = time.perf_counter()
            FFppProtocol(root=root, cache_dir=Path(tmp) / "cache").build()
            cached = (time.perf_counter() - t) / 2
            print(f"{label} ({w}x{h}, {args.frames} frames): {first:.2f} s/video to prepare, "
                  f"{cached:.2f} s/video cached; 1,000 videos ~ {first * 1000 / 60:.0f} min on this CPU")


if __name__ == "__main__":
    main()
