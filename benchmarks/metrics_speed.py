"""Throughput of the metric suite with the papers' architectures (random weights).

Measures, over N pairs at 256 and 512 px:
  * suite:  every metric batched on the device, each image's features computed once and
            shared (ArcFace iresnet-100 identity + retrieval, Hopenet ResNet-50 pose,
            Deep3DFaceRecon ResNet-50 expression, torch-fidelity Inception-v3 FID), with
            5-point similarity alignment done on the device;
  * naive:  one metric at a time, image by image (batch 1), features recomputed per metric.
and prints pairs/s for both and the speed-up. Landmark detection is not included (a GPU
detector such as SCRFD runs before this; dlib landmarks are a CPU stage and are timed
separately with --dlib). Nothing is downloaded: weights are random (timing only).

With ``--suite default`` it instead scores demo pairs with the harness's own default suite
(SFace, WHENet, MediaPipe blendshapes, Inception FID, RetinaFace; the fetched weights), every
swapped face a new content, from an empty feature store, and prints pairs/s of the score stage.

Usage (on a GPU machine):
    python benchmarks/metrics_speed.py --device cuda --pairs 1000 --sizes 256 512
    python benchmarks/metrics_speed.py --suite default --device cuda --pairs 756 --batch 64
    python benchmarks/metrics_speed.py --device cpu --pairs 16 --naive-pairs 4   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from faceeval.constants import IMAGENET_MEAN, IMAGENET_STD
from faceeval.faces.arcface import ARCFACE_SIZE, ARCFACE_TEMPLATE_112
from faceeval.faces.arcface import similarity_matrices as similarity_to
from faceeval.faces.arcface import warp_affine as warp
from faceeval.metrics.fid import fid_from_features
from faceeval.models.deep3d import EXP_SLICE, Deep3DRegressor
from faceeval.models.hopenet import Hopenet
from faceeval.models.iresnet import IRESNETS, IResNet


def inception_random(device: str):
    """torch-fidelity's Inception-v3 feature extractor with random weights (no file)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch.object(torch, "load", lambda *a, **k: {}), \
            mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None):
        ext = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="random")
    return ext.to(device).eval()


class Suite:
    def __init__(self, device: str) -> None:
        self.device = device
        self.idnet = IResNet(IRESNETS["r100"]).to(device).eval()
        self.hopenet = Hopenet().to(device).eval()
        self.deep3d = Deep3DRegressor().to(device).eval()
        self.inception = inception_random(device)
        self.t112 = torch.tensor(ARCFACE_TEMPLATE_112, device=device)
        self.t224 = (self.t112 - ARCFACE_SIZE / 2) * 2 * 0.85 + 112
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def five_points(self, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
        # faces placed as in an FFHQ crop, jittered: stands in for a detector's output
        base = (self.t112 - ARCFACE_SIZE / 2) * (size / 256) * 1.4 + size / 2
        return base[None] + torch.randn(n, 5, 2, generator=gen, device="cpu").to(self.device) * size / 100

    def identity(self, x, pts):
        crop = warp(x, similarity_to(pts, self.t112), ARCFACE_SIZE)  # (B, 3, 112, 112) in [0, 1]
        return F.normalize(self.idnet((crop - 0.5) / 0.5), dim=1)

    def pose(self, x):
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        return self.hopenet((x - self.mean) / self.std)

    def expression(self, x, pts):
        return self.deep3d(warp(x, similarity_to(pts, self.t224), 224))[:, EXP_SLICE]

    def fid_feats(self, x_uint8):
        return self.inception(x_uint8)[0]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_suite(s: Suite, src, tgt, swp, pts, batch: int) -> dict:
    """Batched: every unique image's features once, shared by all metrics."""
    n = len(swp)
    dev = s.device
    out = {k: [] for k in ("id_sw", "id_src", "pose_sw", "pose_tg", "exp_sw", "exp_tg", "fid_sw", "fid_tg")}
    with torch.inference_mode():
        for i in range(0, n, batch):
            sl = slice(i, i + batch)
            u8 = {k: torch.from_numpy(v[sl]).to(dev, non_blocking=True).permute(0, 3, 1, 2) for k, v in
                  (("src", src), ("tgt", tgt), ("swp", swp))}
            f = {k: v.float() / 255 for k, v in u8.items()}
            p = pts[sl]
            out["id_sw"].append(s.identity(f["swp"], p))
            out["id_src"].append(s.identity(f["src"], p))
            out["pose_sw"].append(s.pose(f["swp"]))
            out["pose_tg"].append(s.pose(f["tgt"]))
            out["exp_sw"].append(s.expression(f["swp"], p))
            out["exp_tg"].append(s.expression(f["tgt"], p))
            out["fid_sw"].append(s.fid_feats(u8["swp"]))
            out["fid_tg"].append(s.fid_feats(u8["tgt"]))
        o = {k: torch.cat(v) for k, v in out.items()}
        id_sim = (o["id_sw"] * o["id_src"]).sum(1)
        top5 = (o["id_sw"] @ o["id_src"].T).topk(min(5, n), dim=1).indices  # gallery = the sources
        top1_hit = top5[:, 0] == torch.arange(n, device=dev)
        pose_err = (o["pose_sw"] - o["pose_tg"]).norm(dim=1)
        exp_err = (o["exp_sw"] - o["exp_tg"]).norm(dim=1)
        sync(dev)
    fid = fid_from_features(o["fid_sw"].double().cpu().numpy(), o["fid_tg"].double().cpu().numpy())
    return {"id": id_sim.mean().item(), "top1": top1_hit.float().mean().item(), "pose": pose_err.mean().item(),
            "exp": exp_err.mean().item(), "fid": fid}


def run_naive(s: Suite, src, tgt, swp, pts) -> None:
    """One metric at a time, image by image, no sharing of features."""
    dev = s.device
    one = lambda a, i: torch.from_numpy(a[i : i + 1]).to(dev).permute(0, 3, 1, 2)  # noqa: E731
    n = len(swp)
    with torch.inference_mode():
        sw_id = [s.identity(one(swp, i).float() / 255, pts[i : i + 1]) for i in range(n)]
        src_id = [s.identity(one(src, i).float() / 255, pts[i : i + 1]) for i in range(n)]
        [((a * b).sum()).item() for a, b in zip(sw_id, src_id)]
        [(s.pose(one(swp, i).float() / 255) - s.pose(one(tgt, i).float() / 255)).norm().item() for i in range(n)]
        [(s.expression(one(swp, i).float() / 255, pts[i : i + 1])
          - s.expression(one(tgt, i).float() / 255, pts[i : i + 1])).norm().item() for i in range(n)]
        fa = torch.cat([s.fid_feats(one(swp, i)) for i in range(n)]).double().cpu().numpy()
        fb = torch.cat([s.fid_feats(one(tgt, i)) for i in range(n)]).double().cpu().numpy()
        sync(dev)
    fid_from_features(fa, fb)


def run_default_suite(device: str, pairs: int, batch: int, out: Path) -> None:
    """The harness's default suite (SFace, WHENet, MediaPipe blendshapes, Inception FID, with
    RetinaFace; the fetched weights) through ``harness.runner.run_method`` on ``pairs`` demo
    pairs whose swapped faces are all new contents (the target with one pixel changed), from
    an empty feature store: detection, alignment, every network and FID, as a run scores them."""
    from faceeval.api import SwapMethod
    from faceeval.cache import FeatureStore
    from harness.evaluation import DEFAULT_METRICS
    from harness.registry import METRICS
    from harness.runner import RunConfig, run_method
    from protocols.demo import DemoProtocol

    class MarkedTarget(SwapMethod):
        """The target with one pixel set from the pair's index: a new image content per pair."""

        name = "marked_target"
        calls = 0

        def swap(self, source, target):
            out = target.clone()  # (B, 3, H, W) float in [0, 1]
            self.calls += 1  # a new seed per batch: pairs that share a target still differ
            out[:, :, 0, 0] = torch.rand(out.shape[0], 3, generator=torch.Generator().manual_seed(self.calls))
            return out

    pairset = DemoProtocol(num_pairs=pairs, seed=0).build()
    cfg = RunConfig(out_dir=out, device=device, batch_size=batch, bootstrap_resamples=100, progress=False)
    metrics = [METRICS.create(m, device=device) for m in DEFAULT_METRICS]
    features = FeatureStore(out / "cache" / "features.sqlite")
    try:
        t = time.perf_counter()
        summary = run_method(MarkedTarget(), pairset, metrics, cfg, features)
        wall = time.perf_counter() - t
    finally:
        features.close()
    n = len(pairset.pairs)
    print(f"default suite ({', '.join(DEFAULT_METRICS)}) on {device}: {n} pairs, "
          f"score {summary.timing_s['score']:.1f}s "
          f"= {n / summary.timing_s['score']:.2f} pairs/s (wall incl. swaps and model builds {wall:.1f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--suite", choices=["papers-random", "default"], default="papers-random",
                    help="papers-random: the papers' architectures with random weights (below); default: the "
                         "harness's default suite with its fetched weights (`harness weights fetch all`), "
                         "on demo pairs")
    ap.add_argument("--out", type=Path, default=None, help="--suite default: output folder (default: a temporary one)")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--naive-pairs", type=int, default=200, help="pairs timed for the naive path (rate extrapolates)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convs on Ampere+")
    args = ap.parse_args()
    if args.suite == "default":
        import tempfile

        with tempfile.TemporaryDirectory(prefix="metrics-speed-") as tmp:
            run_default_suite(args.device, args.pairs, args.batch, Path(args.out or tmp))
        return
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dev = args.device
    print(f"device: {torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}; torch {torch.__version__}")
    t0 = time.perf_counter()
    suite = Suite(dev)
    print(f"models built (iresnet-100, Hopenet R50, Deep3D R50, Inception-v3; random init) in "
          f"{time.perf_counter() - t0:.1f}s")
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for size in args.sizes:
        n = args.pairs
        imgs = {k: rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8) for k in ("src", "tgt", "swp")}
        pts = suite.five_points(n, size, gen)
        # warm-up (cudnn autotune, lazy init) on one batch
        run_suite(suite, *(v[: args.batch] for v in imgs.values()), pts[: args.batch], args.batch)
        sync(dev)
        t = time.perf_counter()
        res = run_suite(suite, imgs["src"], imgs["tgt"], imgs["swp"], pts, args.batch)
        t_suite = time.perf_counter() - t
        m = min(args.naive_pairs, n)
        run_naive(suite, *(v[:2] for v in imgs.values()), pts[:2])
        t = time.perf_counter()
        run_naive(suite, imgs["src"][:m], imgs["tgt"][:m], imgs["swp"][:m], pts[:m])
        t_naive = time.perf_counter() - t
        rate_suite, rate_naive = n / t_suite, m / t_naive
        print(f"{size}px: suite {n} pairs in {t_suite:.2f}s = {rate_suite:.1f} pairs/s; "
              f"naive {m} pairs in {t_naive:.2f}s = {rate_naive:.1f} pairs/s; speed-up {rate_suite / rate_naive:.1f}x; "
              f"(sanity: FID {res['fid']:.2f}, pose {res['pose']:.2f} deg)")


if __name__ == "__main__":
    main()
