"""Stage 2 losses (paper §3.2.1, Eq. 9-13) and the stage 3 mask loss (Eq. 15).

    L_swap = L_recon + 1.5 L_id + 2e-3 L_per + 0.5 L_exp + L_cyc  (+ w_teacher L_teacher, not in the paper)

Every loss returns ``(loss, logs)``; log keys are MLflow-safe (``train/id`` ...) and the
values detached 0-d tensors, so a training step never waits on the device to log (the
loop reads them on the host every ``log_every`` steps). :class:`SwapLoss` sums the terms.
Images are (B, 3, H, W) in [0, 1]; for inputs (a, b) the outputs are I_ab (identity of
a on b) and I_ba.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from codeswap.config import TEACHER_CELLS, SwapLossWeights

Logs = dict[str, Tensor]


def identity_loss(id_net: nn.Module, img_a, img_b, ab, ba) -> tuple[torch.Tensor, Logs]:
    """Eq. 10: 1 - mean of cos(E(I_a), E(I_ab)) and cos(E(I_b), E(I_ba)).

    ``id_net`` maps (B, 3, H, W) in [0, 1] to (B, D) embeddings; it is frozen, but the
    gradient flows through it to the swapped images.
    """
    with torch.no_grad():
        ea, eb = id_net(img_a), id_net(img_b)  # (B, D) targets
    cos_ab = F.cosine_similarity(id_net(ab), ea, dim=-1)  # (B,)
    cos_ba = F.cosine_similarity(id_net(ba), eb, dim=-1)
    loss = 1.0 - 0.5 * (cos_ab + cos_ba).mean()
    return loss, {"train/id": loss.detach(), "train/id_cos": (0.5 * (cos_ab + cos_ba)).mean().detach()}


def perceptual_loss(net: nn.Module, img_a, img_b, ab, ba) -> tuple[torch.Tensor, Logs]:
    """L_per: the perceptual distance of each swap to its target, both directions.

    NOTE: the paper does not say which pairs L_per compares; here each swap is compared
    with its target (attribute preservation).
    """
    loss = 0.5 * (net(ab, img_b) + net(ba, img_a))
    return loss, {"train/per": loss.detach()}


def expression_loss(exp_net: nn.Module, img_a, img_b, ab, ba) -> tuple[torch.Tensor, Logs]:
    """Eq. 12: squared L2 between expression codes of each target and its swap."""
    with torch.no_grad():
        xa, xb = exp_net(img_a), exp_net(img_b)  # (B, E)
    loss = 0.5 * ((exp_net(ba) - xa).pow(2).sum(-1) + (exp_net(ab) - xb).pow(2).sum(-1)).mean()
    return loss, {"train/exp": loss.detach()}


def reconstruction_loss(img_a, img_b, ab, ba, same: torch.Tensor) -> tuple[torch.Tensor, Logs]:
    """Eq. 11: L1 to the inputs on pairs whose two images are identical (``same``: (B,) bool).

    I_ab of a pair (x, x) must be x again; on other pairs the term is zero.
    """
    per = 0.5 * ((ba - img_a).abs().flatten(1).mean(1) + (ab - img_b).abs().flatten(1).mean(1))  # (B,)
    w = same.to(per.dtype)
    loss = (per * w).sum() / w.sum().clamp(min=1.0)
    return loss, {"train/recon": loss.detach(), "train/same_pairs": w.sum().detach()}


def code_cycle_loss(cycled_a, cycled_b, za, zb) -> tuple[torch.Tensor, Logs]:
    """Eq. 13, in code space: swapping twice must give back each face's own codes.

    ``cycled_a`` = codes of (I_ab swapped with I_ba) at the place of a, i.e. a again;
    ``za`` its encoder features (detached: the encoder is frozen). Shapes (B, L, d).
    """
    loss = F.mse_loss(cycled_a, za.detach()) + F.mse_loss(cycled_b, zb.detach())
    return loss, {"train/cycle": loss.detach()}


def teacher_cells_mask(side: int, cells: tuple[float, float, float, float], device=None) -> Tensor:
    """(side * side,) bool, row-major like the tokens: the latent cells inside the box
    ``cells`` = (top, left, bottom, right), fractions of the grid (a cell counts when its
    centre is inside)."""
    top, left, bottom, right = cells
    c = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side  # (side,) cell centres
    rows, cols = (c >= top) & (c < bottom), (c >= left) & (c < right)
    return (rows[:, None] & cols[None, :]).flatten()


def code_teacher_loss(model, out, cells: tuple[float, float, float, float],
                      answers: Tensor | None = None) -> tuple[Tensor, Logs]:
    """Cross-entropy of the code selector against a teacher swap, both directions.

    NOTE: not in the paper. The teacher for I_ab is b's own stage-1 codes (nearest codebook
    entries of its frozen encoder tokens) with a's codes in the face cells; for I_ba the
    reverse; a pair of one image twice is taught its own codes (Eq. 11 in code space). It
    is the kind of code-level loss CodeFormer trains its code predictor with (cross-entropy
    on code indices). At the CPU recipe's scale L_id alone never moved identity
    (docs/codeswap-cpu-study.md); this term teaches the fusion to take codes from the other face, and L_id, the
    reconstruction and the cycle loss then act on top of it. w/o C (no selector) regresses
    the teacher's code vectors instead (squared L2).

    ``answers`` (B, 2L) code indices, in the order of the fused tokens ([I_ba; I_ab]), replace
    the pasted face cells with given answers (:class:`TeacherAnswers`: e.g. the source warped
    onto the target's landmarks, which keeps the target's pose and expression).
    """
    from codeswap.model import grid

    codebook = model.codebook.detach()  # (N, d)
    teacher = answers
    if teacher is None:
        za, zb = out.za.detach(), out.zb.detach()  # (B, L, d) frozen encoder tokens
        quant = model.autoencoder.quantize
        side = model.cfg.autoencoder.latent_size
        ia = quant.nearest(grid(za, side)).flatten(1)  # (B, L) code indices, row-major like the tokens
        ib = quant.nearest(grid(zb, side)).flatten(1)
        face = teacher_cells_mask(side, cells, za.device)[None]  # (1, L)
        teacher = torch.cat([torch.where(face, ib, ia), torch.where(face, ia, ib)], 1)  # (B, 2L): [I_ba; I_ab]
    logits = out.fusion.logits
    if logits is None:  # w/o C: features straight to the decoder
        loss = F.mse_loss(out.fusion.codes.float(), codebook[teacher].float())
        return loss, {"train/teacher": loss.detach()}
    loss = F.cross_entropy(logits.float().flatten(0, 1), teacher.flatten())
    acc = (logits.argmax(-1) == teacher).float().mean()
    return loss, {"train/teacher": loss.detach(), "train/teacher_acc": acc.detach()}


#: format tag of a teacher-answers file (:meth:`TeacherAnswers.load`)
TEACHER_ANSWERS_FORMAT = "codeswap-teacher-answers/1"


class TeacherAnswers:
    """The code teacher's answer for every ordered pair of training images, as code indices.

    NOTE: not in the paper (issue 27). The answers come as images in a file (written by
    ``benchmarks/codeswap_teacher_oracle.py --teacher-answers``): ``{"format":
    TEACHER_ANSWERS_FORMAT, "files": [N training images, relative to the data folder],
    "answer": name, "images": uint8 (N, N, 3, R, R)}``, where ``images[s, t]`` is I_st, the
    swap with s's identity on t. The trainer encodes them with its own stage-1 prior (nearest
    codes), so the file does not depend on the prior; a pair of one image twice is taught the
    image's own codes.
    """

    def __init__(self, indices: Tensor, answer: str) -> None:
        self.indices = indices  # (N, N, L) int64: [s, t] = codes of I_st, row-major like the tokens
        self.answer = answer

    @staticmethod
    def read(path: str | Path, files: list[str], resolution: int) -> tuple[Tensor, str]:
        """The answer images (N, N, 3, R, R) uint8 and the answer's name, checked against the
        training ``files`` (relative posix paths, in training order) and ``resolution``."""
        import pickle

        from faceeval.errors import HarnessError

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            raise HarnessError(f"cannot read teacher answers {path}: {str(exc).splitlines()[0][:200]}") from exc
        if not isinstance(state, dict) or state.get("format") != TEACHER_ANSWERS_FORMAT:
            raise HarnessError(f"{path} is not a teacher-answers file ({TEACHER_ANSWERS_FORMAT})")
        theirs = list(state.get("files") or [])
        if theirs != list(files):
            raise HarnessError(f"{path} answers pairs of other training images than these {len(files)} "
                               f"(it has {len(theirs)}); write it again for this data folder")
        images = state.get("images")
        want = (len(files), len(files), 3, resolution, resolution)
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or tuple(images.shape) != want:
            got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
            raise HarnessError(f"{path}: answer images are {got}, this training needs {want} uint8")
        return images, str(state.get("answer", "?"))

    @classmethod
    @torch.no_grad()
    def load(cls, path: str | Path, files: list[str], own: Tensor, autoencoder) -> TeacherAnswers:
        """Read ``path`` and encode its answers with ``autoencoder``; ``own`` (N, 3, R, R) in
        [-1, 1] are the training images themselves (the answers of one image twice)."""
        n, res = len(files), own.shape[-1]
        images, answer = cls.read(path, files, res)
        dev = next(autoencoder.parameters()).device
        flat = images.flatten(0, 1)  # (N * N, 3, R, R)
        codes = torch.cat([autoencoder.encode(flat[k : k + 64].to(dev).float().div(127.5).sub(1)).indices.cpu()
                           for k in range(0, len(flat), 64)])  # (N * N, side, side)
        indices = codes.flatten(1).view(n, n, -1)  # (N, N, L)
        diag = autoencoder.encode(own.to(dev)).indices.cpu().flatten(1)  # (N, L)
        indices[torch.arange(n), torch.arange(n)] = diag
        return cls(indices, answer)

    def teacher(self, ia: Tensor, ib: Tensor) -> Tensor:
        """(B, 2L) indices for pairs of training images ``ia``, ``ib`` (B,), in the fused
        tokens' order: [I_ba at a's place; I_ab at b's place]."""
        ia, ib = ia.cpu(), ib.cpu()
        return torch.cat([self.indices[ib, ia], self.indices[ia, ib]], 1)


def mask_loss(mask: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, Logs]:
    """Eq. 15: L1 between the generated mask and a parsing (or landmark) mask, (B, 1, H, W)."""
    loss = (mask - target_mask).abs().mean()
    return loss, {"train/mask_l1": loss.detach()}


class SwapLoss(nn.Module):
    """L_swap (Eq. 9): reconstruction + identity + perceptual + expression + code cycle.

    The networks are frozen stand-ins for the paper's (None, or a zero weight, turns a term
    off). Called with the model, the pair (a, b), which pairs are one image twice, and the
    model's output; returns the weighted sum and the detached terms (``train/g_total`` too).
    """

    def __init__(self, weights: SwapLossWeights, identity: nn.Module | None, expression: nn.Module | None,
                 perceptual: nn.Module | None,
                 teacher_cells: tuple[float, float, float, float] = TEACHER_CELLS) -> None:
        super().__init__()
        self.w = weights
        self.teacher_cells = teacher_cells
        self.identity, self.expression, self.perceptual = identity, expression, perceptual

    def runs(self, term: str) -> bool:
        """Whether the network term ``term`` (identity, perceptual, expression) is computed:
        it has a network and a weight above 0."""
        return getattr(self, term) is not None and getattr(self.w, term) > 0

    def forward(self, model, a: Tensor, b: Tensor, same: Tensor, out, teacher_scale: float = 1.0,
                answers: Tensor | None = None) -> tuple[Tensor, Logs]:
        """``teacher_scale`` multiplies the teacher's weight (its warm-up schedule; 0 turns it off);
        ``answers`` (B, 2L) are the teacher's codes when given (:class:`TeacherAnswers`)."""
        swaps = (a, b, out.ab, out.ba)
        terms: list[tuple[float, Callable[[], tuple[Tensor, Logs]]]] = [
            (self.w.recon, lambda: reconstruction_loss(*swaps, same))]
        for term, loss_fn in (("identity", identity_loss), ("perceptual", perceptual_loss),
                              ("expression", expression_loss)):
            if self.runs(term):
                terms.append((getattr(self.w, term), functools.partial(loss_fn, getattr(self, term), *swaps)))
        if self.w.cycle > 0:
            terms.append((self.w.cycle, lambda: code_cycle_loss(*model.cycle_codes(out.fusion), out.za, out.zb)))
        if self.w.teacher * teacher_scale > 0:
            terms.append((self.w.teacher * teacher_scale,
                          lambda: code_teacher_loss(model, out, self.teacher_cells, answers)))
        total = a.new_zeros((), dtype=torch.float32)
        logs: Logs = {}
        for weight, term in terms:
            loss, term_logs = term()
            total = total + weight * loss
            logs.update(term_logs)
        logs["train/g_total"] = total.detach()
        return total, logs
