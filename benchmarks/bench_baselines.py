"""Per-pair time of the weight-free baselines on the demo faces (CPU), printed as figures.

    python benchmarks/bench_baselines.py [--pairs 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    from faceeval.faces.align import five_points
    from faceeval.faces.detect import DlibDetector
    from faceeval.faces.paste import paste_back
    from faceeval.faces.templates import crop_landmarks, warp_to_template
    from faceeval.images import load_rgb, to_tensor
    from methods.classical import ClassicalSwap
    from protocols.demo import DemoProtocol

    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8)
    args = ap.parse_args()
    demo = DemoProtocol(num_pairs=args.pairs).build()
    src = to_tensor(np.stack([load_rgb(demo.path(p.source)) for p in demo.pairs]))
    tgt = to_tensor(np.stack([load_rgb(demo.path(p.target)) for p in demo.pairs]))

    m = ClassicalSwap()
    m.swap(src[:1], tgt[:1])  # load the landmark model
    t0 = time.perf_counter()
    m.swap(src, tgt)
    print(f"classical swap:      {(time.perf_counter() - t0) / len(demo.pairs) * 1000:7.1f} ms/pair")

    det = DlibDetector()
    img = load_rgb(demo.path(demo.pairs[0].target))
    crop_landmarks(img, det)  # load the predictor
    t0 = time.perf_counter()
    p5 = five_points(crop_landmarks(img, det))
    print(f"landmarks (HOG+68):  {(time.perf_counter() - t0) * 1000:7.1f} ms/face")
    for template, size in (("arcface_128", 128), ("ffhq_512", 256), ("arcface_112_v1", 512)):
        crop, mat = warp_to_template(img, p5, template, size)
        t0 = time.perf_counter()
        for _ in range(20):
            paste_back(img, crop, mat)
        print(f"paste_back {template:>14}@{size}: {(time.perf_counter() - t0) / 20 * 1000:6.2f} ms")


if __name__ == "__main__":
    main()
