"""Stage-1 training speed of `paper`, `fast` and `codeformer` side by side: FLOPs per image,
parameters, images/s and peak memory, on the real training step (G step + D step, GAN on).

Usage:
    python benchmarks/stage1_speed.py                       # CPU, 128 px, batch 2, 3 steps (a smoke-sized figure)
    python benchmarks/stage1_speed.py --device cuda --resolution 512 --batch-size 16 --steps 20 --warmup 5
    python benchmarks/stage1_speed.py --device cuda --resolution 512 --batch-size 16 \\
        --precision bf16 --compile --checkpoint-levels 2   # the engineered step
    python benchmarks/stage1_speed.py --meta-flops --resolution 512   # FLOPs and params only (meta device)

Every config runs through the same code (``Stage1Trainer.train_step``) with the same
engineering settings, which each row names: precision (``auto``: bf16 autocast on CUDA,
fp32 on CPU), attention (``sdpa``: fused ``scaled_dot_product_attention``; ``plain``:
softmax(q k^T) v), Adam (``fused`` or torch's default), activation checkpointing of the
first N levels (``ckptN``), ``compiled`` or ``eager``, channels-last (CUDA only). Each
config runs in a fresh process so its peak memory is its own: on CUDA the peak allocated
during the timed steps; on CPU the growth of the process's peak resident memory from just
before the trainer was built (weights, optimiser state, activations, allocator slack).
On CPU, ``cpu_ms_per_step`` (process CPU time) is the figure to compare on a shared
machine; images/s there also measures how much of the machine the run got.

The anchor the issue quotes for CodeFormer's own code at 512 px, batch 16 on one H100
(34.0 images/s TF32, 38.9 bf16, 76-78 GiB) was taken with its implementation; our
`codeformer` row is its structure through our step.

The perceptual network defaults to VGG16 (the paper's) with random weights in the official
layout: speed does not depend on the weights, so the file is not needed here.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls,
attention; elementwise ops and the optimiser are not counted), forward + backward, per
image, on an uncompiled step.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeswap.config import MODEL_CONFIGS, DiscriminatorConfig, LossConfig, TrainConfig
from codeswap.discriminator import PatchDiscriminator
from codeswap.losses import Stage1Loss
from codeswap.perceptual import PerceptualLoss
from codeswap.train.dist import DistInfo
from codeswap.train.stage1 import Stage1Trainer
from codeswap.vqgan import VQAutoencoder


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
    time ``args.steps`` steps (synchronised on CUDA), with the peak GPU memory they reached.
    ``cpu_ms_per_step`` is the process's CPU time (all threads): on a shared CPU it says what
    the step costs where wall time says how much of the machine it got."""
    for i in range(args.warmup):
        step(i)
    flops = step_flops(lambda: step(0)) if not args.compile else float("nan")
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(args.steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images_per_s": args.steps * args.batch_size / dt, "ms_per_step": 1000 * dt / args.steps,
            "cpu_ms_per_step": 1000 * cpu / args.steps,
            "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan"),
            "flops_per_step": flops}


def print_results(title: str, label: str, results: dict[str, dict[str, float | str]], args: argparse.Namespace,
                  device: str) -> None:
    """One row per config/variant (text values, e.g. settings, as they are), and the same
    figures as JSON when ``--json`` is given."""
    print(title)
    keys = list(next(iter(results.values())))
    width = {k: max(len(k), *(len(str(r[k])) if isinstance(r[k], str) else 10 for r in results.values())) + 2
             for k in keys}
    print(f"{label:<12}" + "".join(f"{k:>{width[k]}}" for k in keys))
    for n, r in results.items():
        print(f"{n:<12}" + "".join(f"{r[k]:>{width[k]}}" if isinstance(r[k], str) else f"{r[k]:>{width[k]}.3f}"
                                   for k in keys))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "device": device,
                                         "results": results}, indent=1))


def _proc_status_bytes(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in bytes; 0 where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def settings_label(trainer: Stage1Trainer, args: argparse.Namespace) -> str:
    """The engineering settings a row actually ran with."""
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.amp_dtype]
    if precision == "fp32" and trainer.device.type == "cuda":
        precision = "tf32"
    return " ".join([precision, "sdpa" if args.attention == "sdpa" else "plain-attn",
                     "fused-adam" if trainer.opt_g.defaults.get("fused") else "adam",
                     f"ckpt{args.checkpoint_levels}", "compiled" if args.compile else "eager",
                     "channels-last" if trainer.channels_last else "contiguous"])


def bench(name: str, args: argparse.Namespace, data: Path) -> dict[str, float | str]:
    dev = torch.device(args.device)
    rss_before = _proc_status_bytes("VmRSS")
    model_cfg = replace(MODEL_CONFIGS[name], resolution=args.resolution, checkpoint_levels=args.checkpoint_levels)
    loss_cfg = LossConfig(perceptual_net=args.perceptual, disc_start=0)
    cfg = TrainConfig(data=str(data), out=tempfile.mkdtemp(prefix="stage1-bench-out-"), batch_size=args.batch_size,
                      precision=args.precision, compile=args.compile, channels_last=args.channels_last,
                      fused_adam=args.fused_adam, fused_attention=args.attention == "sdpa",
                      mlflow=False, progress=False, num_workers=0)
    trainer = Stage1Trainer(cfg, model_cfg, loss_cfg, dist_info=DistInfo(0, 1, 0, dev),
                            perceptual=random_perceptual(args.perceptual)).setup()
    x = (torch.rand(args.batch_size, 3, args.resolution, args.resolution, device=dev) * 2 - 1)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t = timed_steps(lambda step: trainer.train_step(x, 0), args, dev)
    peak = t["peak_mem_GiB"]
    if dev.type == "cpu":
        hwm = _proc_status_bytes("VmHWM")
        peak = (hwm - rss_before) / 2**30 if hwm and rss_before else float("nan")
    gflops = t["flops_per_step"] / args.batch_size / 1e9
    return {"settings": settings_label(trainer, args), "images_per_s": t["images_per_s"],
            "ms_per_step": t["ms_per_step"], "cpu_ms_per_step": t["cpu_ms_per_step"], "peak_mem_GiB": peak,
            "train_gflops_per_image": gflops,
            "achieved_GFLOP_s": gflops * t["images_per_s"],
            "params_g_M": sum(p.numel() for p in trainer.model.parameters()) / 1e6}


def _in_own_process(name: str, argv: list[str]) -> dict[str, float | str]:
    """Run this script for config ``name`` alone in a fresh process; its figures."""
    out = Path(tempfile.mkdtemp(prefix="stage1-bench-row-")) / "row.json"
    keep, skip = [], False
    for a in argv:  # drop --configs/--json (and their values) from the parent's arguments
        if skip:
            skip = False
            continue
        if a in ("--configs", "--json"):
            skip = True
            continue
        if not a.startswith(("--configs=", "--json=")):
            keep.append(a)
    proc = subprocess.run([sys.executable, __file__, *keep, "--configs", name, "--json", str(out)],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                          stdout=subprocess.PIPE, text=True)  # its one-row table is reprinted with the others
    if proc.returncode:
        sys.exit(f"{proc.stdout}the {name} row failed (exit {proc.returncode})")
    return json.loads(out.read_text())["results"][name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="paper,fast,codeformer")
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                    help="auto: bf16 autocast on CUDA, fp32 on CPU (fp32 on CUDA runs TF32)")
    ap.add_argument("--perceptual", default="vgg16", choices=["vgg16", "mobilenet_v2", "none"])
    ap.add_argument("--attention", default="sdpa", choices=["sdpa", "plain"])
    ap.add_argument("--fused-adam", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                    help="channels-last tensors (applied on CUDA only)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--checkpoint-levels", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--meta-flops", action="store_true", help="only count FLOPs on the meta device (no GPU needed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in MODEL_CONFIGS]
    if unknown:
        sys.exit(f"unknown config(s) {', '.join(unknown)}; choose from {', '.join(MODEL_CONFIGS)}")
    results: dict[str, dict[str, float | str]] = {}
    if args.meta_flops:
        for n in names:
            results[n] = meta_flops(n, args.resolution, args.perceptual, args.checkpoint_levels)
    else:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            sys.exit("no CUDA device: use --device cpu, or --meta-flops for FLOPs only")
        if len(names) > 1:  # one fresh process per row: peak memory and compile caches its own
            results = {n: _in_own_process(n, sys.argv[1:]) for n in names}
        else:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            results[names[0]] = bench(names[0], args, synthetic_folder(args.batch_size, args.resolution))
    device = args.device
    if args.device.startswith("cuda") and not args.meta_flops:
        device = torch.cuda.get_device_name()
    elif args.device == "cpu" and not args.meta_flops:
        device = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    print_results(f"stage 1 at {args.resolution}, batch {args.batch_size}, perceptual {args.perceptual} "
                  f"on {'meta' if args.meta_flops else device}", "config", results, args, device)
    if "codeformer" in results and "images_per_s" in results["codeformer"]:
        ref = results["codeformer"]
        for n in names:
            if n != "codeformer":
                r = results[n]
                print(f"{n} vs codeformer: {r['images_per_s'] / ref['images_per_s']:.2f}x images/s, "
                      f"{r['peak_mem_GiB'] / ref['peak_mem_GiB']:.2f}x peak memory")


if __name__ == "__main__":
    main()
