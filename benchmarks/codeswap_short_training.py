"""Does the CodeSwap recipe swap identity? Train stages 1-3 on the demo faces and judge by retrieval.

Usage:
    python benchmarks/codeswap_short_training.py --out runs/recipe             # the demo recipe (CPU, ~1-2 h)
    python benchmarks/codeswap_short_training.py --out runs/heldout --holdout 4   # keep 4 faces out of training
    python benchmarks/codeswap_short_training.py --out runs/idonly --stage2-steps 800 \\
        --loss-weights 0,1,0,0,0 --same-rate 0 --variants wo_m --position absolute   # one row of the study
    python benchmarks/codeswap_short_training.py --device cuda --resolution 256 ...  # a GPU at 256 px

It trains :class:`codeswap.demo.DemoRecipe` (each flag overrides one field) with the demo's
own trainer (resumable: a re-run continues or only judges), then judges:

* the prior's identity ceiling: each face's stage-1 reconstruction, retrieved among the
  faces' photos (dlib top-1; FaceNet too), and PSNR - no swap can carry more identity;
* every ordered pair (a, b) of training faces (and of held-out faces with ``--holdout``):
  I_ab (a's identity on b) retrieved among the photos of that set's identities: top-1 is a
  hit when the nearest photo is a's (b's own photo is in the gallery and is the usual
  winner of a swap that changes nothing: `target` scores 0 %); the share where the nearest
  is b; the dlib cosine of I_ab to a against that of b to a, each with a 95 % bootstrap CI
  of the mean over pairs; the same with FaceNet, the network L_id trains with (flagged);
  and how much I_ab changes when only the source changes (0: the source is ignored);
* with ``--readouts``, where identity is lost between the codes and the pixels: the same
  retrieval for the raw decoder output, for it blended by the target's landmark hull (what
  the mask is trained towards) and for argmax codes instead of soft quantization;
* grids of training and held-out swaps (rows: source, target, I_ab);
* unless ``--no-demo-run``, the harness itself on the demo protocol (28 pairs of these faces)
  with each trained variant beside ``classical``, ``source`` and ``target``: identity by dlib
  and SFace, pose by WHENet and PnP, expression by blendshapes and landmarks, Inception FID,
  and each attribute error as a multiple of classical's (the bar: at most 2x) - whatever
  networks the recipe trained with, two of each pair never took part in training.

dlib's ResNet is never used in training, so it is the judge; chance top-1 is 1 / identities.
Figures go to stdout and ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeswap.data import FaceFolder, list_images
from codeswap.demo import DEMO_FACES, DemoRecipe, train_recipe
from faceeval.images import save_png, to_uint8
from harness.runner import bootstrap_ci


class IdentityJudge:
    """dlib (the judge) and FaceNet (the training network) embeddings of [-1, 1] images."""

    def __init__(self, device: str) -> None:
        from codeswap.train.nets import FaceNetIdentity
        from faceeval.metrics.id_backends import DlibEmbedder

        self.dlib = DlibEmbedder()
        self.facenet = FaceNetIdentity(96).to(device).eval()
        self.device = device

    @torch.no_grad()
    def embed(self, kind: str, x: torch.Tensor) -> np.ndarray:  # (N, 3, R, R) -> (N, D) unit rows
        x = x.float().clamp(-1, 1)
        if kind == "dlib":
            return self.dlib(list(to_uint8((x.cpu() + 1) * 0.5)))
        out = [torch.nn.functional.normalize(self.facenet(x[k : k + 64].to(self.device)), dim=1).cpu()
               for k in range(0, len(x), 64)]
        return torch.cat(out).numpy()


def ci(values: np.ndarray) -> list[float]:
    lo, hi = bootstrap_ci(values, 1000, 0.95, 0)
    return [float(np.mean(values)), lo, hi]


def retrieval(judge: IdentityJudge, gallery: torch.Tensor, queries: torch.Tensor, src: list[int],
              tgt: list[int] | None = None) -> dict[str, object]:
    """Top-1 of each query among the gallery photos (indices), cosines to the source with CIs."""
    from faceeval.metrics.identity import retrieval_hits  # the harness's own retrieval (stable ties)

    ids = [str(i) for i in range(len(gallery))]
    res: dict[str, object] = {}
    for kind in ("dlib", "facenet"):
        g, q = judge.embed(kind, gallery), judge.embed(kind, queries)
        tag = kind if kind == "dlib" else "facenet_trained_with"
        res[f"{tag}/top1"] = float(retrieval_hits(q, g, ids, [str(i) for i in src], ks=(1,))[1].mean())
        res[f"{tag}/cos_to_source"] = ci((q * g[src]).sum(1))
        if tgt is not None:
            res[f"{tag}/nearest_is_target"] = float(retrieval_hits(q, g, ids, [str(j) for j in tgt], ks=(1,))[1].mean())
            res[f"{tag}/target_cos_to_source"] = ci((g[tgt] * g[src]).sum(1))
    return res


@torch.no_grad()
def swaps(model, x: torch.Tensor, pairs: list[tuple[int, int]], device: str, readout: str = "model",
          hulls: torch.Tensor | None = None) -> torch.Tensor:
    """I_ab for each pair, read out as the model does ("model") or as a diagnosis: "raw" (the
    decoder output, no mask), "hull" (the raw output blended by the target's landmark hull, the
    mask's supervision target; ``hulls`` (N, 1, R, R)), "hard" (argmax codes, blended)."""
    from codeswap.mask import blend

    fusion_cfg = model.fusion.cfg
    if readout == "hard":
        model.fusion.cfg = replace(fusion_cfg, quantize="hard")
    out = []
    try:
        for k in range(0, len(pairs), 32):
            p = pairs[k : k + 32]
            a, b = x[[i for i, _ in p]].to(device), x[[j for _, j in p]].to(device)
            if readout == "hull":
                raw = model(a, b, blend_mask=False).ab
                ab = blend(raw, b, hulls[[j for _, j in p]].to(device))
            else:
                ab = model(a, b, blend_mask=readout != "raw").ab
            out.append(ab.float().clamp(-1, 1).cpu())
    finally:
        model.fusion.cfg = fusion_cfg
    return torch.cat(out)  # (P, 3, R, R)


def ordered_pairs(ids: list[int]) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """Every ordered pair of distinct faces among ``ids`` (indices into x), and each pair's
    source and target as positions in ``ids`` (the retrieval gallery's order)."""
    pairs = [(i, j) for i in ids for j in ids if i != j]
    pos = {face: k for k, face in enumerate(ids)}
    return pairs, [pos[i] for i, _ in pairs], [pos[j] for _, j in pairs]


def judge_readouts(model, judge: IdentityJudge, x: torch.Tensor, ids: list[int], device: str) -> dict[str, object]:
    """Where the identity goes between the codes and the pixels (``--readouts``): top-1 and
    cosines of the raw, hull-blended and argmax-code read-outs over every ordered pair."""
    from codeswap.train.stage3 import landmark_masks

    pairs, src, tgt = ordered_pairs(ids)
    hulls = landmark_masks(x)  # (N, 1, R, R)
    return {readout: retrieval(judge, x[ids], swaps(model, x, pairs, device, readout, hulls), src, tgt)
            for readout in ("raw", "hull", "hard")}


def judge_swaps(model, judge: IdentityJudge, x: torch.Tensor, ids: list[int], device: str,
                png: Path) -> dict[str, object]:
    """Every ordered pair of distinct faces among ``ids`` (indices into x)."""
    pairs, src, tgt = ordered_pairs(ids)
    ab = swaps(model, x, pairs, device)
    res = retrieval(judge, x[ids], ab, src, tgt)
    # does I_ab depend on the source? the same targets with the next source in the set
    alt = [(ids[(k + 1) % len(ids)] if ids[(k + 1) % len(ids)] != j else ids[(k + 2) % len(ids)], j)
           for k, (_, j) in zip(src, pairs)]
    res["pixel_change_when_source_changes"] = float((swaps(model, x, alt, device) - ab).abs().mean() / 2)
    res["pairs"], res["identities"], res["chance_top1"] = len(pairs), len(ids), 1 / len(ids)
    show = np.linspace(0, len(pairs) - 1, min(8, len(pairs))).round().astype(int)
    rows = [torch.cat([x[pairs[s][0]] for s in show], 2), torch.cat([x[pairs[s][1]] for s in show], 2),
            torch.cat([ab[s] for s in show], 2)]  # each (3, R, 8R)
    save_png(png, to_uint8((torch.cat(rows, 1)[None] + 1) * 0.5)[0])
    return res


#: the demo-protocol judges: the default suite and the stand-ins beside it
DEMO_METRICS = ("identity", "identity_sface", "pose_whenet", "pose", "expression_blendshapes", "expression", "fid")
#: attribute errors reported as a multiple of classical's (lower is better for each)
ATTRIBUTE_KEYS = ("pose_error_whenet", "pose_error_pnp", "expression_error_blendshapes", "expression_error_lmk")


def judge_demo_protocol(ckpts: dict[str, Path], out: Path, device: str) -> dict[str, object]:
    """The harness's own run of the demo protocol with each trained variant (as ``codeswap`` /
    ``codeswap_wo_m``), ``classical``, ``source`` and ``target``: every metric key's mean per
    method, and each attribute error of each variant divided by classical's."""
    from harness import evaluate

    methods = {"full": "codeswap", "wo_m": "codeswap_wo_m"}
    runs = {methods[v]: ck for v, ck in ckpts.items() if v in methods}
    if "full" in ckpts and "wo_m" not in runs:  # the raw output of the full model: w/o M reads it too
        runs["codeswap_wo_m"] = ckpts["full"]
    res = evaluate("demo", ["source", "target", "classical", *runs], metrics=DEMO_METRICS,
                   method_options={m: {"checkpoint": str(ck)} for m, ck in runs.items()}, device=device,
                   out=out / "demo-run", mlflow=False, progress=False, log=lambda _: None)
    table = {r.method: {k: e.value for k, e in r.metrics.items()} for r in res.runs}
    ratios = {m: {k: table[m][k] / table["classical"][k] for k in ATTRIBUTE_KEYS
                  if k in table[m] and table["classical"].get(k)} for m in runs}
    return {"means": table, "attribute_error_x_classical": ratios, "report": str(out / "demo-run" / "report")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/codeswap-recipe"))
    ap.add_argument("--data", type=Path, default=DEMO_FACES, help="folder of aligned faces (default: the demo faces)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--readouts", action="store_true",
                    help="also judge the training pairs' raw, hull-blended and argmax-code read-outs (diagnosis)")
    ap.add_argument("--no-demo-run", action="store_true",
                    help="skip the harness run of the demo protocol (pose, expression, FID beside classical)")
    for f in fields(DemoRecipe):  # every recipe field is a flag: --stage2-steps, --loss-weights 0,1,0,0,0 ...
        default = getattr(DemoRecipe(), f.name)
        ap.add_argument(f"--{f.name.replace('_', '-')}", default=None,
                        help=f"default: {','.join(map(str, default)) if isinstance(default, tuple) else default}")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = DemoRecipe()
    change = {}
    for f in fields(DemoRecipe):
        v = getattr(args, f.name)
        if v is None:
            continue
        cur = getattr(base, f.name)
        if isinstance(cur, tuple):
            typ = str if f.name == "variants" else type(cur[0])
            change[f.name] = tuple(typ(p) for p in v.split(","))
        elif isinstance(cur, bool):
            change[f.name] = v.lower() in ("1", "true", "yes", "on")
        elif cur is None or f.name == "mask_level":
            change[f.name] = None if v.lower() == "none" else int(v)
        else:
            change[f.name] = type(cur)(v)
    recipe = replace(base, **change)

    times = {}
    t0 = time.perf_counter()
    ckpts = {}
    for variant in recipe.variants:
        ckpts[variant] = train_recipe(args.out, variant, recipe, log=print, device=args.device, data=args.data)
    times["train_s_this_run"] = time.perf_counter() - t0

    from codeswap.checkpoints import load_codeswap, load_stage1

    files = list_images(str(args.data))
    folder = FaceFolder(files, recipe.resolution, hflip=False)
    x = torch.stack([folder.load(i) for i in range(len(folder))])  # (N, 3, R, R) in [-1, 1]
    n_train = len(files) - recipe.holdout
    train_ids, held_ids = list(range(n_train)), list(range(n_train, len(files)))
    judge = IdentityJudge(args.device)

    ae, _ = load_stage1(args.out / "stage1" / "checkpoints" / "last.pt")
    ae = ae.to(args.device)
    with torch.no_grad():
        rec = torch.cat([ae(x[k : k + 16].to(args.device))[0].float().clamp(-1, 1).cpu() for k in range(0, len(x), 16)])
    psnr = 10 * torch.log10(1 / ((rec - x) * 0.5).pow(2).flatten(1).mean(1))  # (N,)
    summary: dict[str, object] = {"recipe": {k: v for k, v in vars(recipe).items()}, "device": args.device,
                                  "data": str(args.data),
                                  "train_faces": n_train, "heldout_faces": recipe.holdout, **times}
    summary["prior_train"] = {**retrieval(judge, x[train_ids], rec[train_ids], list(range(n_train))),
                              "psnr": float(psnr[train_ids].mean())}
    if held_ids:
        summary["prior_heldout"] = {**retrieval(judge, x[held_ids], rec[held_ids], list(range(len(held_ids)))),
                                    "psnr": float(psnr[held_ids].mean())}
    for variant, ckpt in ckpts.items():
        model, _ = load_codeswap(ckpt)
        model = model.to(args.device).eval()
        if variant == "wo_m":
            model.mask = None
        summary[f"{variant}/train_pairs"] = judge_swaps(model, judge, x, train_ids, args.device,
                                                        args.out / f"grid_{variant}_train.png")
        if args.readouts and model.mask is not None:
            summary[f"{variant}/train_pairs_readouts"] = judge_readouts(model, judge, x, train_ids, args.device)
        if len(held_ids) >= 2:
            summary[f"{variant}/heldout_pairs"] = judge_swaps(model, judge, x, held_ids, args.device,
                                                              args.out / f"grid_{variant}_heldout.png")
    if not args.no_demo_run and args.data.resolve() == DEMO_FACES.resolve():
        summary["demo_protocol"] = judge_demo_protocol(ckpts, args.out, args.device)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
