"""Milliseconds per image of FID's Inception-v3 (pool3 at 299 px) on the CPU, as the harness
builds it and as torch-fidelity builds it, on the same uint8 256 px batch:

  * fidelity:        torch-fidelity's FeatureExtractorInceptionV3 as it comes (NCHW, BN separate)
  * channels_last:   the same network with channels-last weights and inputs
  * harness:         channels-last and every batch norm folded into its conv (faceeval.metrics.fid)

Prints ms/image and each variant's max abs difference of pool3 features from the first. Needs
the fetched evaluator (`harness weights fetch fid_inception`).

    python benchmarks/fid_inception_speed.py                      # 1 thread, batch 16
    python benchmarks/fid_inception_speed.py --threads 2 --batch 32 --repeats 3
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from faceeval.metrics.fid import _build_extractor, weight_file

    path, _ = weight_file("inception")
    state = torch.load(path, map_location="cpu", weights_only=True)
    def fidelity():
        with mock.patch.object(torch, "load", lambda *a, **k: state):  # the dict already loaded weights_only
            return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                               feature_extractor_weights_path="-").eval()

    variants = {"fidelity": fidelity(), "channels_last": fidelity().to(memory_format=torch.channels_last),
                "harness": _build_extractor("inception", "cpu", path, "")}
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.integers(0, 256, (args.batch, 3, 256, 256), dtype=np.uint8))  # (B, 3, 256, 256)
    ref = None
    print(f"FID Inception-v3 pool3, {args.batch} images of 256 px a batch, {args.threads} thread(s), "
          f"{args.repeats} timed batches after one warm-up")
    for name, net in variants.items():
        with torch.inference_mode():
            net(x)
            start = time.perf_counter()
            for _ in range(args.repeats):
                feats = net(x)[0]  # (B, 2048)
            ms = (time.perf_counter() - start) / (args.repeats * args.batch) * 1000
        diff = 0.0 if ref is None else float((feats - ref).abs().max())
        ref = feats if ref is None else ref
        print(f"  {name:14s} {ms:7.1f} ms/image   max |d pool3| vs fidelity {diff:.2g}")


if __name__ == "__main__":
    main()
