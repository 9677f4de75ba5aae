"""Which answer should CodeSwap's code teacher give? Score candidate answers without training.

The code teacher (``codeswap.swap_losses.code_teacher_loss``) tells the code selector which
codes make I_ab, and a trained model's identity and attributes follow that answer
(docs/codeswap-cpu-study.md: the pasted answer's oracle scores 84 % dlib top-1, the model
trained on it 64 %, and carries the source's pose and expression like the answer does).
This script builds each candidate answer for every ordered pair of the demo faces, passes it
through the shipped stage-1 prior at the model's resolution (encode, nearest codes, decode:
what the selector produces when it learns the answer exactly) and blends it into the target
by the target's landmark hull (what the stage-3 mask learns). Then it scores the answers:

* on every ordered pair of the 28 faces (756): dlib top-1 among the 28 photos (the judge of
  the study; a swap that changes nothing scores 0 %);
* on the demo protocol's 28 pairs, by the harness itself (``--method precomputed``) beside
  ``classical``, ``source`` and ``target``: dlib and SFace identity, WHENet and PnP pose,
  blendshape and landmark expression, Inception FID, and each attribute error as a multiple
  of classical's (issue 27's bar: identity >= 50 % with attributes <= 2x classical's).

Answers (``--answers``; 64 px is the shipped prior's resolution):

* ``paste``: today's teacher: the target's codes with the source's codes in the face cells;
* ``warp``: the source warped piecewise-affinely onto the target's 68 landmarks (the
  classical swap's geometry, so the target's pose and expression), no colour transfer;
* ``warp-colour``: the same with classical's Reinhard colour transfer;
* ``shapeS`` (e.g. ``shape0.5``): warped onto landmarks a share S of the way from the
  target's to the source's own shape (the source's landmarks similarity-aligned onto the
  target's): S = 0 is ``warp``, S = 1 keeps the source's face shape at the target's place;
* ``classical``: the classical method's own output, reduced to 64 px and put through the prior.

    python benchmarks/codeswap_teacher_oracle.py --out runs/teacher-oracle
    python benchmarks/codeswap_teacher_oracle.py --out runs/teacher-oracle-256 --answers classical warp-colour \
        shape0.5 shape1.0 --pixel-resolutions 256 --no-demo-run     # the pixel answers at full size too
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codeswap.demo import DEMO_FACES
from faceeval.images import load_rgb, save_png, to_uint8

DEFAULT_ANSWERS = ("paste", "warp", "warp-colour", "shape0.3", "shape0.5", "shape0.7", "shape1.0", "classical")
HULL_FEATHER = 0.03  # Gaussian sigma of the hull masks, as a share of the side


def similarity_onto(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``src`` (N, 2) moved by the similarity (rotation, scale, shift; least-median fit) onto ``dst``."""
    m, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    return src @ m[:, :2].T + m[:, 2]


def hull_mask(points: np.ndarray, side: int, scale: float) -> np.ndarray:
    """(side, side) float mask in [0, 1]: the convex hull of ``points * scale``, feathered."""
    m = np.zeros((side, side), np.float32)
    cv2.fillConvexPoly(m, cv2.convexHull((points * scale).round().astype(np.int32)), 1.0)
    return cv2.GaussianBlur(m, (0, 0), HULL_FEATHER * side)


def warped_answer(source: np.ndarray, target: np.ndarray, lm_s: np.ndarray, lm_t: np.ndarray,
                  shape: float, colour: bool) -> np.ndarray:
    """The source's face warped onto landmarks ``shape`` of the way from the target's to the
    source's own (similarity-aligned) shape, laid over the target by that hull. (R, R, 3) uint8."""
    from methods.classical import piecewise_affine_map, reinhard_transfer

    side = target.shape[0]
    dst = lm_t + shape * (similarity_onto(lm_s, lm_t) - lm_t)  # (68, 2) the answer's landmarks
    map_x, map_y, inside = piecewise_affine_map(lm_s, dst, (side, side))
    warped = cv2.remap(source, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REFLECT)
    m = hull_mask(dst, side, 1.0) * inside  # (R, R)
    if colour:
        warped = reinhard_transfer(warped, target, m > 0.5)
    out = target.astype(np.float32) * (1 - m[..., None]) + warped.astype(np.float32) * m[..., None]
    return out.round().clip(0, 255).astype(np.uint8)


def to_model(images: list[np.ndarray], res: int) -> torch.Tensor:
    """uint8 (R, R, 3) images -> (N, 3, res, res) in [-1, 1], area-reduced."""
    small = [cv2.resize(im, (res, res), interpolation=cv2.INTER_AREA) for im in images]
    return torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def through_prior(ae, x: torch.Tensor, quantize: bool = True) -> torch.Tensor:
    """(N, 3, r, r) -> the prior's reconstruction from nearest codes (or, without ``quantize``,
    from the encoder's features themselves), same shape."""
    def rec(b: torch.Tensor) -> torch.Tensor:
        return ae.decode(ae.encode(b).z_q if quantize else ae.encoder(b)).clamp(-1, 1)

    return torch.cat([rec(x[k : k + 32]) for k in range(0, len(x), 32)])


@torch.no_grad()
def pasted_codes(ae, xs: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
    """Today's teacher answer, decoded: the target's nearest codes with the source's in the face cells."""
    from codeswap.config import TEACHER_CELLS
    from codeswap.swap_losses import teacher_cells_mask

    side = ae.cfg.latent_size
    face = teacher_cells_mask(side, TEACHER_CELLS).view(side, side)
    out = []
    for k in range(0, len(xs), 32):
        i_s, i_t = ae.encode(xs[k : k + 32]).indices, ae.encode(xt[k : k + 32]).indices  # (B, side, side)
        out.append(ae.decode_indices(torch.where(face, i_s, i_t)).clamp(-1, 1))
    return torch.cat(out)


def answer_images(kind: str, faces: list[np.ndarray], lms: list[np.ndarray],
                  pairs: list[tuple[int, int]]) -> list[np.ndarray]:
    """Every pair's answer made in pixels at the faces' own size, (R, R, 3) uint8 each."""
    if kind == "classical":
        from methods.classical import ClassicalSwap

        swapper = ClassicalSwap()
        return [swapper.swap_one(faces[s], faces[t]) for s, t in pairs]
    shape = 0.0 if kind.startswith("warp") else float(kind.removeprefix("shape"))
    return [warped_answer(faces[s], faces[t], lms[s], lms[t], shape, kind == "warp-colour") for s, t in pairs]


def blended(faces: list[np.ndarray], lms: list[np.ndarray], pairs: list[tuple[int, int]], answers: torch.Tensor,
            res: int) -> torch.Tensor:
    """(P, 3, res, res) answers laid over their targets by the target's feathered landmark hull."""
    xt = to_model([faces[t] for _, t in pairs], res)
    scale = res / faces[0].shape[0]
    m = torch.from_numpy(np.stack([hull_mask(lms[t], res, scale) for _, t in pairs]))[:, None]  # (P, 1, r, r)
    return xt * (1 - m) + answers * m


def build_answers(kind: str, faces: list[np.ndarray], lms: list[np.ndarray], pairs: list[tuple[int, int]],
                  ae, res: int, quantize: bool = True) -> tuple[torch.Tensor, list[np.ndarray] | None]:
    """Every pair's answer for ``kind`` through the prior, blended into the target at ``res``
    (P, 3, res, res), and the pixel answers it came from (None for ``paste``, made in codes)."""
    if kind == "paste":
        xs, xt = to_model([faces[s] for s, _ in pairs], res), to_model([faces[t] for _, t in pairs], res)
        return blended(faces, lms, pairs, pasted_codes(ae, xs, xt), res), None
    images = answer_images(kind, faces, lms, pairs)
    return blended(faces, lms, pairs, through_prior(ae, to_model(images, res), quantize), res), images


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) of [-1, 1] images."""
    return float((10 * torch.log10(1 / ((a - b) * 0.5).pow(2).flatten(1).mean(1))).mean())


@functools.cache
def dlib_embedder():
    from faceeval.metrics.id_backends import DlibEmbedder

    return DlibEmbedder()


def as_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, r, r) in [-1, 1] -> (N, r, r, 3) uint8."""
    return to_uint8((x + 1) * 0.5)


def dlib_top1(gallery: np.ndarray, answers: torch.Tensor, pairs: list[tuple[int, int]]) -> dict[str, float]:
    """dlib retrieval of each answer among the faces' photos (``gallery``: their dlib
    embeddings, (N, 128)): top-1 = the source, and how often the target."""
    from faceeval.metrics.identity import retrieval_hits

    q = dlib_embedder()(list(as_uint8(answers)))
    ids = [str(i) for i in range(len(gallery))]
    src, tgt = [str(s) for s, _ in pairs], [str(t) for _, t in pairs]
    return {"dlib_top1": float(retrieval_hits(q, gallery, ids, src, ks=(1,))[1].mean()),
            "nearest_is_target": float(retrieval_hits(q, gallery, ids, tgt, ks=(1,))[1].mean())}


def judge_demo(folders: dict[str, Path], out: Path, suffix: str = "") -> dict[str, object]:
    """The harness on the demo protocol: each answer folder as ``precomputed`` (named
    ``oracle_<answer><suffix>``) beside the references."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from codeswap_short_training import ATTRIBUTE_KEYS, DEMO_METRICS

    from harness import evaluate

    table: dict[str, dict[str, float]] = {}  # keyed by method; an answer is "oracle_<kind>"
    labels = {kind: "oracle_" + kind.replace(".", "_").replace("-", "_") + suffix for kind in folders}
    for kind, folder in folders.items():
        res = evaluate("demo", ["source", "target", "classical", "precomputed"], metrics=DEMO_METRICS,
                       method_options={"precomputed": {"dir": str(folder), "label": labels[kind]}},
                       out=out / "demo-run", mlflow=False, progress=False, log=lambda _: None)
        table.update({r.method: {k: e.value for k, e in r.metrics.items()} for r in res.runs})
    ratios = {lab: {a: table[lab][a] / table["classical"][a] for a in ATTRIBUTE_KEYS
                    if a in table[lab] and table["classical"].get(a)} for lab in labels.values()}
    return {"means": table, "attribute_error_x_classical": ratios}


def export_answers(kind: str, folder: Path, files: list[Path], faces: list[np.ndarray], lms: list[np.ndarray],
                   pairs: list[tuple[int, int]]) -> None:
    """The faces and every pair's pixel answer ``kind``, ``<kind>__<source>__<target>.png``, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for f, face in zip(files, faces):
        save_png(folder / f"{f.stem}.png", face)
    for (s, t), image in zip(pairs, answer_images(kind, faces, lms, pairs)):
        save_png(folder / f"{kind}__{files[s].stem}__{files[t].stem}.png", image)
    print(f"{len(files)} faces and {len(pairs)} {kind} answers written to {folder}")


def write_teacher_answers(kind: str, path: Path, files: list[Path], faces: list[np.ndarray],
                          lms: list[np.ndarray], res: int) -> None:
    """A teacher-answers file (``codeswap.swap_losses.TeacherAnswers``): images[s, t] = the
    answer ``kind`` for I_st at ``res``, resized as training resizes its images; [i, i] = face i."""
    from codeswap.swap_losses import TEACHER_ANSWERS_FORMAT
    from faceeval.images import to_tensor

    n = len(faces)
    off = [(s, t) for s in range(n) for t in range(n) if s != t]
    answers = dict(zip(off, answer_images(kind, faces, lms, off)))
    images = np.stack([faces[s] if s == t else answers[s, t] for s in range(n) for t in range(n)])  # (N*N, R, R, 3)
    small = torch.cat([torch.from_numpy(to_uint8(to_tensor(images[k : k + 64], size=res)))
                       for k in range(0, len(images), 64)]).permute(0, 3, 1, 2)  # (N*N, 3, r, r) uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": TEACHER_ANSWERS_FORMAT, "files": [f.relative_to(DEMO_FACES).as_posix() for f in files],
                "answer": kind, "images": small.reshape(n, n, 3, res, res).contiguous()}, path)
    print(f"{kind} answers for {n} x {n} ordered pairs at {res} px written to {path}")


def save_answers(folder: Path, names: list[str], answers: torch.Tensor, keep: set[str]) -> Path:
    """The answers whose ``<source>__<target>`` name is in ``keep``, as PNGs in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, a in zip(names, as_uint8(answers)):
        if name in keep:
            save_png(folder / f"{name}.png", a)
    return folder


def save_grid(path: Path, faces: list[np.ndarray], pairs: list[tuple[int, int]], answers: torch.Tensor) -> None:
    """8 pairs spread over the list: sources (top), targets (middle), answers (bottom)."""
    res = answers.shape[-1]
    show = np.linspace(0, len(pairs) - 1, 8).round().astype(int)
    rows = [[cv2.resize(faces[pairs[i][r]], (res, res), interpolation=cv2.INTER_AREA) for i in show] for r in (0, 1)]
    rows.append(list(as_uint8(answers[show])))
    save_png(path, np.concatenate([np.concatenate(r, 1) for r in rows], 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/teacher-oracle"))
    ap.add_argument("--answers", nargs="+", default=list(DEFAULT_ANSWERS))
    ap.add_argument("--checkpoint", type=Path, default=None,
                    help="a CodeSwap checkpoint whose prior to use (default: the shipped demo model)")
    ap.add_argument("--stage1", type=Path, default=None, help="a stage-1 checkpoint: this prior instead")
    ap.add_argument("--teacher-answers", nargs=2, metavar=("ANSWER", "FILE"), default=None,
                    help="write every ordered pair's pixel answer ANSWER at the prior's resolution to FILE, for "
                         "stage 2's code teacher (harness train stage2 --teacher-answers FILE), then stop")
    ap.add_argument("--export", nargs=2, metavar=("ANSWER", "FOLDER"), default=None,
                    help="write the demo faces and every pair's pixel answer ANSWER (e.g. shape0.3) at full size "
                         "to FOLDER (training data for a prior that can express them), then stop")
    ap.add_argument("--no-demo-run", action="store_true", help="only the 756-pair dlib retrieval")
    ap.add_argument("--unquantized", action="store_true",
                    help="decode the encoder's features without quantizing them (is it the codebook or the "
                         "autoencoder that loses the answer?)")
    ap.add_argument("--without-prior", action="store_true",
                    help="the demo protocol judges the pixel answers at the prior's size, not put through it")
    ap.add_argument("--pixel-resolutions", type=int, nargs="*", default=[],
                    help="also judge the pixel answers without the prior at these sizes (at the model's: always)")
    args = ap.parse_args()
    from codeswap.checkpoints import load_codeswap, load_stage1
    from codeswap.data import list_images
    from codeswap.demo import DemoRecipe, demo_checkpoint
    from methods.classical import ClassicalSwap
    from methods.precomputed import NAME_SEPARATOR, names_key
    from protocols.demo import DemoProtocol

    t0 = time.perf_counter()
    if args.stage1:
        ae, _ = load_stage1(args.stage1)
    else:
        ae = load_codeswap(args.checkpoint or demo_checkpoint("full", DemoRecipe(), log=print))[0].autoencoder
    ae.eval()
    res = ae.cfg.resolution
    files = list_images(DEMO_FACES)
    faces = [load_rgb(f) for f in files]
    lms = [ClassicalSwap().landmarks(f).astype(np.float64) for f in faces]  # (68, 2) each, crop pixels
    pairs = [(s, t) for s in range(len(faces)) for t in range(len(faces)) if s != t]
    if args.export:
        export_answers(args.export[0], Path(args.export[1]), files, faces, lms, pairs)
        return
    if args.teacher_answers:
        write_teacher_answers(args.teacher_answers[0], Path(args.teacher_answers[1]), files, faces, lms, res)
        return
    demo_pairs = {names_key(p) for p in DemoProtocol().build().pairs}  # the demo protocol's 28 pairs
    gallery = dlib_embedder()(faces)  # (N, 128): the faces' photos, embedded once
    summary: dict[str, object] = {"pairs": len(pairs), "faces": len(faces), "resolution": res,
                                  "demo_run_without_prior": args.without_prior, "unquantized": args.unquantized}
    folders = {}
    for kind in args.answers:
        answers, images = build_answers(kind, faces, lms, pairs, ae, res, not args.unquantized)
        summary[kind] = dlib_top1(gallery, answers, pairs)
        if images is not None:  # the same answer without the prior, at the model's and other sizes
            pixels = blended(faces, lms, pairs, to_model(images, res), res)
            summary[kind]["prior_psnr_db"] = psnr(answers, pixels)
            for r in sorted({res, *args.pixel_resolutions}):
                px = pixels if r == res else blended(faces, lms, pairs, to_model(images, r), r)
                summary[kind][f"without_prior_{r}px"] = dlib_top1(gallery, px, pairs)
            if args.without_prior:
                answers = pixels
        elif args.without_prior:
            continue  # made in codes: there is no answer without the prior
        print(kind, summary[kind], flush=True)
        names = [f"{files[s].stem}{NAME_SEPARATOR}{files[t].stem}" for s, t in pairs]  # as names_key
        folders[kind] = save_answers(args.out / "answers" / kind, names, answers, demo_pairs)
        save_grid(args.out / f"grid_{kind}.png", faces, pairs, answers)
    if not args.no_demo_run:
        summary["demo_protocol"] = judge_demo(folders, args.out, "_pixels" if args.without_prior else "")
    summary["wall_s"] = time.perf_counter() - t0
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
