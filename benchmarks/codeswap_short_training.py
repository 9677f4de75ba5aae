"""A short stage 1 -> 2 -> 3 training on a folder of aligned faces, judged on held-out faces.

Usage:
    python benchmarks/codeswap_short_training.py                                  # CPU: tiny config, 64 px, demo faces
    python benchmarks/codeswap_short_training.py --device cuda --config paper --resolution 256 \\
        --stage1-steps 3000 --stage2-steps 1500 --stage3-steps 400 --batch-size 16   # a few GPU minutes

The last ``--holdout`` images (sorted order, the trainers' own split) are never trained on.
Finished stages are kept (each trainer resumes from its ``last.pt``), so a re-run only judges.
It prints and writes (``--out``/summary.json):
  * stage 1: PSNR of the held-out reconstructions before training (step 0) and after;
  * stages 2 and 3: over every ordered pair (a, b) of distinct held-out images, the identity
    cosine of I_ab (a's identity on b) to a, against that of b itself to a (what a swap
    that changes nothing would score), and the share of pairs where I_ab is closer to a; the
    same for pairs of as many training images, to tell fitting from generalising; and the
    cosine of the model's output for (a, a) to a, the most identity its decoder gives back;
    Identity is measured with dlib's ResNet (the harness's default scorer, not used in
    training) and with the FaceNet port (the network L_id trains with; flagged as such);
  * swap grids of held-out pairs (rows: source a, target b, I_ab): grid_stage2.png, grid_stage3.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeswap.checkpoints import load_codeswap  # noqa: E402
from codeswap.config import MODEL_CONFIGS, LossConfig, TrainConfig  # noqa: E402
from codeswap.data import FaceFolder, list_images  # noqa: E402
from codeswap.train.loop import cleanup_distributed  # noqa: E402
from codeswap.train.stage1 import Stage1Trainer  # noqa: E402
from codeswap.train.stage2 import Stage2Trainer, SwapTrainConfig  # noqa: E402
from codeswap.train.stage3 import MaskTrainConfig, Stage3Trainer  # noqa: E402
from harness.images import save_png, to_uint8  # noqa: E402


def val_metrics(run_dir: Path, key: str) -> tuple[float, float]:
    """First and last logged value of ``key`` in a trainer's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r[key] for r in rows if key in r]
    return vals[0], vals[-1]


@torch.no_grad()
def judge(checkpoint: Path, images: torch.Tensor, device: str, out_png: Path) -> dict[str, float]:
    """Identity of I_ab against b, over every ordered pair of distinct held-out images."""
    from codeswap.train.nets import FaceNetIdentity
    from harness.metrics.id_backends import DlibEmbedder as DlibFaceEmbedder

    model, _ = load_codeswap(checkpoint)
    model = model.to(device).eval()
    n = len(images)
    ia, ib = zip(*[(i, j) for i in range(n) for j in range(n) if i != j])
    a, b = images[list(ia)].to(device), images[list(ib)].to(device)

    def swap(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:  # I_ab in batches of 16
        return torch.cat([model(src[k : k + 16], tgt[k : k + 16]).ab.float().clamp(-1, 1)
                          for k in range(0, len(src), 16)])

    ab = swap(a, b)
    own = swap(a, a)  # the model's output for (a, a): what its decoder can give back of a face at best
    to8 = lambda x: to_uint8((x.cpu() + 1) * 0.5)  # noqa: E731
    dlib = DlibFaceEmbedder()
    facenet = FaceNetIdentity().to(device)
    embed = {"dlib": lambda x: dlib(list(to8(x))),
             "facenet_trained_with": lambda x: torch.nn.functional.normalize(facenet(x), dim=1).cpu().numpy()}
    res = {}
    for name, fn in embed.items():
        src, tgt, swp, rec = (fn(x) for x in (a, b, ab, own))
        cos_swap, cos_tgt = (swp * src).sum(1), (tgt * src).sum(1)
        res[f"{name}/cos_swap_to_source"] = float(cos_swap.mean())
        res[f"{name}/cos_target_to_source"] = float(cos_tgt.mean())
        res[f"{name}/share_swap_closer"] = float((cos_swap > cos_tgt).mean())
        res[f"{name}/cos_selfswap_to_source"] = float((rec * src).sum(1).mean())
    show = np.linspace(0, len(a) - 1, min(8, len(a))).round().astype(int)  # pairs spread over the sources
    rows = [torch.cat(list(x[show].cpu()), dim=2) for x in (a, b, ab)]  # each (3, R, cols*R)
    save_png(out_png, to_uint8((torch.cat(rows, dim=1)[None] + 1) * 0.5)[0])
    res["pairs"] = len(a)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1] / "protocols" / "demo_faces")
    ap.add_argument("--out", type=Path, default=Path("runs/short-training"))
    ap.add_argument("--config", default="tiny", choices=sorted(MODEL_CONFIGS))
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--holdout", type=int, default=8)
    ap.add_argument("--stage1-steps", type=int, default=1500)
    ap.add_argument("--stage2-steps", type=int, default=300)
    ap.add_argument("--stage3-steps", type=int, default=60)
    ap.add_argument("--supervised", type=int, default=40, help="stage-3 steps against landmark masks")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--selector-hidden", type=int, default=128)
    ap.add_argument("--identity-size", type=int, default=96, help="FaceNet input side for L_id (paper-scale: 160)")
    ap.add_argument("--perceptual", default="none", choices=["vgg16", "mobilenet_v2", "none"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    model_cfg = replace(MODEL_CONFIGS[args.config], resolution=args.resolution)
    common = dict(data=str(args.data), batch_size=args.batch_size, lr=args.lr, device=args.device, num_workers=0,
                  holdout=args.holdout, cache_images=True, log_every=50, image_every=10**9, mlflow=False,
                  progress=sys.stderr.isatty(), seed=args.seed)
    swap_kw = dict(layers=args.layers, heads=args.heads, selector_hidden=args.selector_hidden, identity_net="facenet",
                   identity_size=args.identity_size, perceptual_net=args.perceptual)
    times = {}
    try:
        t0 = time.perf_counter()
        s1 = Stage1Trainer(TrainConfig(out=str(args.out / "stage1"), max_steps=args.stage1_steps,
                                       ckpt_every=args.stage1_steps, **common), model_cfg,
                           LossConfig(perceptual_net=args.perceptual, disc_start=10**9))
        s1.run(resume=True)
        times["stage1_s_this_run"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        s2 = Stage2Trainer(TrainConfig(out=str(args.out / "stage2"), max_steps=args.stage2_steps,
                                       ckpt_every=args.stage2_steps, **common),
                           SwapTrainConfig(stage1=str(s1.ckpt_dir / "last.pt"), **swap_kw))
        s2.run(resume=True)
        times["stage2_s_this_run"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        s3 = Stage3Trainer(TrainConfig(out=str(args.out / "stage3"), max_steps=args.stage3_steps,
                                       ckpt_every=args.stage3_steps, **common),
                           SwapTrainConfig(stage1=str(s2.ckpt_dir / "last.pt"), **swap_kw),
                           MaskTrainConfig(supervised_steps=args.supervised))
        s3.run(resume=True)
        times["stage3_s_this_run"] = time.perf_counter() - t0
    finally:
        cleanup_distributed()

    files = list_images(str(args.data))

    def load(subset: list) -> torch.Tensor:
        folder = FaceFolder(subset, args.resolution, hflip=False)
        return torch.stack([folder.load(i) for i in range(len(folder))])  # (N, 3, R, R) in [-1, 1]

    held = load(files[len(files) - args.holdout :])
    seen = load(files[: min(args.holdout, len(files) - args.holdout)])  # as many training images, for contrast
    psnr0, psnr1 = val_metrics(args.out / "stage1", "val/psnr")
    summary = {"config": args.config, "resolution": args.resolution, "device": args.device,
               "train_images": len(files) - args.holdout, "heldout_images": args.holdout, **times,
               "stage1/heldout_psnr_before": psnr0, "stage1/heldout_psnr_after": psnr1,
               "stage2_heldout": judge(s2.ckpt_dir / "last.pt", held, args.device, args.out / "grid_stage2.png"),
               "stage3_heldout": judge(s3.ckpt_dir / "last.pt", held, args.device, args.out / "grid_stage3.png"),
               "stage3_train_pairs": judge(s3.ckpt_dir / "last.pt", seen, args.device,
                                           args.out / "grid_stage3_train_pairs.png"),
               "args": {k: str(v) for k, v in vars(args).items()}}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))


if __name__ == "__main__":
    main()
