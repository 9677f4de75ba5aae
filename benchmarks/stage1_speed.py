"""Stage-1 training speed: images/s, peak GPU memory and FLOPs per image, ours vs a
CodeFormer-style VQGAN, on the real training step (G step + D step, GAN on).

Usage (one GPU):
    python benchmarks/stage1_speed.py                       # paper + codeformer, 512, batch 16, bf16
    python benchmarks/stage1_speed.py --precision fp32      # TF32
    python benchmarks/stage1_speed.py --configs paper --compile --checkpoint-levels 2
    python benchmarks/stage1_speed.py --meta-flops          # FLOPs only, on the meta device (CPU, no GPU)

Both configs run through the same code (``Stage1Trainer.train_step``), so the comparison
isolates the architecture (widths, depths, attention placement). The reference figures the
issue quotes for CodeFormer's own code (34 images/s fp32/TF32, 39 bf16, 76-78 GiB) were taken
with its implementation; this script prints ours for both configs side by side.

The perceptual network defaults to VGG16 (the paper's) with random weights in the official
layout: speed does not depend on the weights, so the file is not needed here.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls,
attention; elementwise ops and the optimiser are not counted), forward + backward, per image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeswap.config import MODEL_CONFIGS, DiscriminatorConfig, LossConfig, TrainConfig  # noqa: E402
from codeswap.discriminator import PatchDiscriminator  # noqa: E402
from codeswap.losses import Stage1Loss  # noqa: E402
from codeswap.perceptual import PerceptualLoss  # noqa: E402
from codeswap.train.dist import DistInfo  # noqa: E402
from codeswap.train.stage1 import Stage1Trainer  # noqa: E402
from codeswap.vqgan import VQAutoencoder  # noqa: E402


def random_perceptual(net: str) -> PerceptualLoss | None:
    import torchvision

    if net == "none":
        return None
    backbone = torchvision.models.vgg16().features if net == "vgg16" else torchvision.models.mobilenet_v2().features
    return PerceptualLoss(net, {f"features.{k}": v for k, v in backbone.state_dict().items()})


def synthetic_folder(n: int, resolution: int) -> Path:
    root = Path(tempfile.mkdtemp(prefix="stage1-bench-"))
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def step_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def saved_activations(name: str, resolution: int, perceptual: str, checkpoint_levels: int = 0,
                      probe: int = 128) -> float:
    """Bytes per image that autograd keeps for the generator step's backward (fp32, distinct
    storages, parameters excluded; the generator's and the loss networks' graphs together,
    as they are alive together), measured on CPU at ``probe`` pixels and scaled by area:
    activation memory is proportional to pixels for these fully convolutional nets."""
    torch.manual_seed(0)
    cfg = replace(MODEL_CONFIGS[name], resolution=probe, checkpoint_levels=checkpoint_levels)
    model = VQAutoencoder(cfg)
    disc = PatchDiscriminator(DiscriminatorConfig()).requires_grad_(False)
    loss = Stage1Loss(LossConfig(perceptual_net=perceptual, disc_start=0), random_perceptual(perceptual))
    x = torch.rand(1, 3, probe, probe) * 2 - 1
    seen: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # held so that no address is reused (that would hide a storage)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):  # weights (trained or frozen) are not activations
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            keep.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        rec, q = model(x)
        obj, _ = loss.generator_loss(x, rec, q, 0, disc, model.last_layer)
    return sum(seen.values()) * (resolution / probe) ** 2


def meta_flops(name: str, resolution: int, perceptual: str, checkpoint_levels: int = 0) -> dict[str, float]:
    """FLOPs per image of the generator forward and of a whole G+D training step, on meta,
    and the activation memory of the generator step (see :func:`saved_activations`)."""
    cfg = replace(MODEL_CONFIGS[name], resolution=resolution, checkpoint_levels=checkpoint_levels)
    saved = saved_activations(name, resolution, perceptual, checkpoint_levels)
    with torch.device("meta"):
        model = VQAutoencoder(cfg)
        disc = PatchDiscriminator(DiscriminatorConfig())
        perc = random_perceptual(perceptual)
        loss = Stage1Loss(LossConfig(perceptual_net=perceptual, disc_start=0), perc)
        x = torch.empty(1, 3, resolution, resolution)

        def forward():
            with torch.no_grad():
                model(x)

        def train_step():
            disc.requires_grad_(False)
            rec, q = model(x)
            g, _ = loss.generator_loss(x, rec, q, 0, disc, model.last_layer)
            g.backward()
            disc.requires_grad_(True)
            logits = disc(torch.cat([x, rec.detach()]))
            real, fake = logits.chunk(2)
            loss.discriminator_loss(real, fake)[0].backward()

        return {"params_g_M": sum(p.numel() for p in model.parameters()) / 1e6,
                "saved_MiB_fp32_per_image": saved / 2**20,
                "params_d_M": sum(p.numel() for p in disc.parameters()) / 1e6,
                "gflops_g_forward_per_image": step_flops(forward) / 1e9,
                "gflops_train_step_per_image": step_flops(train_step) / 1e9}


def timed_steps(step, args: argparse.Namespace, dev: torch.device) -> dict[str, float]:
    """Run ``step(i)`` ``args.warmup`` times, count one step's FLOPs (not when compiled), then
    time ``args.steps`` steps (synchronised on CUDA), with the peak GPU memory they reached."""
    for i in range(args.warmup):
        step(i)
    flops = step_flops(lambda: step(0)) if not args.compile else float("nan")
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"images_per_s": args.steps * args.batch_size / dt, "ms_per_step": 1000 * dt / args.steps,
            "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan"),
            "flops_per_step": flops}


def print_results(title: str, label: str, results: dict[str, dict[str, float]], args: argparse.Namespace,
                  device: str) -> None:
    """One row per config/variant, and the same figures as JSON when ``--json`` is given."""
    print(title)
    keys = list(next(iter(results.values())))
    print(f"{label:<12}" + "".join(f"{k:>28}" for k in keys))
    for n, r in results.items():
        print(f"{n:<12}" + "".join(f"{r[k]:>28.3f}" for k in keys))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": device,
                                         "results": results}, indent=1))


def bench(name: str, args: argparse.Namespace, data: Path) -> dict[str, float]:
    model_cfg = replace(MODEL_CONFIGS[name], resolution=args.resolution, checkpoint_levels=args.checkpoint_levels)
    loss_cfg = LossConfig(perceptual_net=args.perceptual, disc_start=0)
    cfg = TrainConfig(data=str(data), out=tempfile.mkdtemp(prefix="stage1-bench-out-"), batch_size=args.batch_size,
                      precision=args.precision, compile=args.compile, mlflow=False, progress=False, num_workers=0)
    dev = torch.device(args.device)
    trainer = Stage1Trainer(cfg, model_cfg, loss_cfg, dist_info=DistInfo(0, 1, 0, dev),
                            perceptual=random_perceptual(args.perceptual)).setup()
    x = (torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=dev) * 2 - 1)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = timed_steps(lambda step: trainer.train_step(x, 0), args, dev)
    return {"images_per_s": t["images_per_s"], "ms_per_step": t["ms_per_step"], "peak_mem_GiB": t["peak_mem_GiB"],
            "train_tflops_per_image": t["flops_per_step"] / args.batch_size / 1e12,
            "achieved_TFLOP_s": t["flops_per_step"] / args.batch_size * t["images_per_s"] / 1e12,
            "params_g_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="paper,codeformer")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--perceptual", default="vgg16", choices=["vgg16", "mobilenet_v2", "none"])
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--checkpoint-levels", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--meta-flops", action="store_true", help="only count FLOPs on the meta device (no GPU needed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    names = args.configs.split(",")
    results: dict[str, dict[str, float]] = {}
    if args.meta_flops:
        for n in names:
            results[n] = meta_flops(n, args.resolution, args.perceptual, args.checkpoint_levels)
    else:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            sys.exit("no CUDA device: use --meta-flops for FLOPs only, or --device cpu for a (slow) smoke run")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        data = synthetic_folder(args.batch_size, args.resolution)
        for n in names:
            results[n] = bench(n, args, data)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.meta_flops else args.device
    print_results(f"stage 1 at {args.resolution}, batch {args.batch_size}, {args.precision}, perceptual "
                  f"{args.perceptual}{', compiled' if args.compile else ''} on {'meta' if args.meta_flops else device}",
                  "config", results, args, device)
    if len(results) == 2 and "images_per_s" in next(iter(results.values())):
        a, b = (results[n] for n in names)
        print(f"{names[0]} vs {names[1]}: {a['images_per_s'] / b['images_per_s']:.2f}x images/s, "
              f"{a['peak_mem_GiB'] / b['peak_mem_GiB']:.2f}x peak memory")


if __name__ == "__main__":
    main()
