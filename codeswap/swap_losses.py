"""Stage 2 losses (paper §3.2.1, Eq. 9-13) and the stage 3 mask loss (Eq. 15).

    L_swap = L_recon + 1.5 L_id + 2e-3 L_per + 0.5 L_exp + L_cyc

Every loss returns ``(loss, logs)``; log keys are MLflow-safe (``train/id`` ...).
Images are (B, 3, H, W) in [0, 1]; for inputs (a, b) the outputs are I_ab (identity of
a on b) and I_ba.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class SwapLossWeights:
    recon: float = 1.0
    identity: float = 1.5  # lambda_id
    perceptual: float = 2e-3  # lambda_per
    expression: float = 0.5  # lambda_exp
    cycle: float = 1.0


def identity_loss(id_net: nn.Module, img_a, img_b, ab, ba) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 10: 1 - mean of cos(E(I_a), E(I_ab)) and cos(E(I_b), E(I_ba)).

    ``id_net`` maps (B, 3, H, W) in [0, 1] to (B, D) embeddings; it is frozen, but the
    gradient flows through it to the swapped images.
    """
    with torch.no_grad():
        ea, eb = id_net(img_a), id_net(img_b)  # (B, D) targets
    cos_ab = F.cosine_similarity(id_net(ab), ea, dim=-1)  # (B,)
    cos_ba = F.cosine_similarity(id_net(ba), eb, dim=-1)
    loss = 1.0 - 0.5 * (cos_ab + cos_ba).mean()
    return loss, {"train/id": loss.item(), "train/id_cos": (0.5 * (cos_ab + cos_ba)).mean().item()}


def expression_loss(exp_net: nn.Module, img_a, img_b, ab, ba) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 12: squared L2 between expression codes of each target and its swap."""
    with torch.no_grad():
        xa, xb = exp_net(img_a), exp_net(img_b)  # (B, E)
    loss = 0.5 * ((exp_net(ba) - xa).pow(2).sum(-1) + (exp_net(ab) - xb).pow(2).sum(-1)).mean()
    return loss, {"train/exp": loss.item()}


def reconstruction_loss(img_a, img_b, ab, ba, same: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 11: L1 to the inputs on pairs whose two images are identical (``same``: (B,) bool).

    I_ab of a pair (x, x) must be x again; on other pairs the term is zero.
    """
    per = 0.5 * ((ba - img_a).abs().flatten(1).mean(1) + (ab - img_b).abs().flatten(1).mean(1))  # (B,)
    w = same.to(per.dtype)
    loss = (per * w).sum() / w.sum().clamp(min=1.0)
    return loss, {"train/recon": loss.item(), "train/same_pairs": w.sum().item()}


def code_cycle_loss(cycled_a, cycled_b, za, zb) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 13, in code space: swapping twice must give back each face's own codes.

    ``cycled_a`` = codes of (I_ab swapped with I_ba) at the place of a, i.e. a again;
    ``za`` its encoder features (detached: the encoder is frozen). Shapes (B, L, d).
    """
    loss = F.mse_loss(cycled_a, za.detach()) + F.mse_loss(cycled_b, zb.detach())
    return loss, {"train/cycle": loss.item()}


def mask_loss(mask: torch.Tensor, target_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 15: L1 between the generated mask and a parsing (or landmark) mask, (B, 1, H, W)."""
    loss = (mask - target_mask).abs().mean()
    return loss, {"train/mask_l1": loss.item()}
