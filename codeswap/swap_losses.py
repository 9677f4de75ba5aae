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


def code_teacher_loss(model, out, cells: tuple[float, float, float, float]) -> tuple[Tensor, Logs]:
    """Cross-entropy of the code selector against a teacher swap, both directions.

    NOTE: not in the paper. The teacher for I_ab is b's own stage-1 codes (nearest codebook
    entries of its frozen encoder tokens) with a's codes in the face cells; for I_ba the
    reverse; a pair of one image twice is taught its own codes (Eq. 11 in code space). It
    is the kind of code-level loss CodeFormer trains its code predictor with (cross-entropy
    on code indices). At the CPU recipe's scale L_id alone never moved identity
    (docs/codeswap-cpu-study.md); this term teaches the fusion to take codes from the other face, and L_id, the
    reconstruction and the cycle loss then act on top of it. w/o C (no selector) regresses
    the teacher's code vectors instead (squared L2).
    """
    from codeswap.model import grid

    za, zb = out.za.detach(), out.zb.detach()  # (B, L, d) frozen encoder tokens
    codebook = model.codebook.detach()  # (N, d)
    quant = model.autoencoder.quantize
    side = model.cfg.autoencoder.latent_size
    ia = quant.nearest(grid(za, side)).flatten(1)  # (B, L) code indices, row-major like the tokens
    ib = quant.nearest(grid(zb, side)).flatten(1)
    face = teacher_cells_mask(side, cells, za.device)[None]  # (1, L)
    teacher = torch.cat([torch.where(face, ib, ia), torch.where(face, ia, ib)], 1)  # (B, 2L): [I_ba; I_ab] positions
    logits = out.fusion.logits
    if logits is None:  # w/o C: features straight to the decoder
        loss = F.mse_loss(out.fusion.codes.float(), codebook[teacher].float())
        return loss, {"train/teacher": loss.detach()}
    loss = F.cross_entropy(logits.float().flatten(0, 1), teacher.flatten())
    acc = (logits.argmax(-1) == teacher).float().mean()
    return loss, {"train/teacher": loss.detach(), "train/teacher_acc": acc.detach()}


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

    def forward(self, model, a: Tensor, b: Tensor, same: Tensor, out,
                teacher_scale: float = 1.0) -> tuple[Tensor, Logs]:
        """``teacher_scale`` multiplies the teacher's weight (its warm-up schedule; 0 turns it off)."""
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
            terms.append((self.w.teacher * teacher_scale, lambda: code_teacher_loss(model, out, self.teacher_cells)))
        total = a.new_zeros((), dtype=torch.float32)
        logs: Logs = {}
        for weight, term in terms:
            loss, term_logs = term()
            total = total + weight * loss
            logs.update(term_logs)
        logs["train/g_total"] = total.detach()
        return total, logs
