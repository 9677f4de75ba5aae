"""Stage 2/3 losses and the mask generator on constructed cases."""

from __future__ import annotations

import torch
import torch.nn as nn

from codeswap.mask import MaskConfig, MaskGenerator, blend
from codeswap.swap_losses import code_cycle_loss, identity_loss, mask_loss, reconstruction_loss


class MeanColour(nn.Module):
    """A stand-in embedder: the mean colour of the image, (B, 3)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_identity_loss_is_zero_for_perfect_swaps_and_grows_otherwise():
    a = torch.rand(2, 3, 8, 8)
    b = torch.rand(2, 3, 8, 8)
    perfect, _ = identity_loss(MeanColour(), a, b, ab=a.clone(), ba=b.clone())
    assert perfect.item() < 1e-6
    ab = a.clone().requires_grad_(True)
    wrong, logs = identity_loss(MeanColour(), a, b, ab=torch.flip(ab, dims=[1]), ba=b)
    assert wrong.item() > 0 and "train/id" in logs
    wrong.backward()
    assert ab.grad is not None  # gradient reaches the swapped image through the frozen net


def test_reconstruction_counts_only_identical_pairs():
    a = torch.zeros(3, 3, 4, 4)
    b = torch.ones(3, 3, 4, 4)
    ab = torch.full_like(a, 0.5)
    ba = torch.full_like(a, 0.25)
    same = torch.tensor([True, False, False])
    loss, logs = reconstruction_loss(a, b, ab, ba, same)
    # only pair 0: |0.25 - 0| and |0.5 - 1|, averaged over the two directions
    assert abs(loss.item() - 0.5 * (0.25 + 0.5)) < 1e-6
    assert logs["train/same_pairs"] == 1.0
    none, _ = reconstruction_loss(a, b, ab, ba, torch.zeros(3, dtype=torch.bool))
    assert none.item() == 0.0


def test_code_cycle_loss_value():
    za = torch.zeros(1, 4, 2)
    zb = torch.ones(1, 4, 2)
    loss, _ = code_cycle_loss(za + 1.0, zb, za, zb)
    assert abs(loss.item() - 1.0) < 1e-6  # mse of an all-ones error on a, zero on b


def test_mask_generator_and_blend():
    gen = MaskGenerator(MaskConfig(enc_channels=8, dec_channels=6, hidden=16, feature_size=8))
    m = gen(torch.randn(2, 8, 16, 16), torch.randn(2, 6, 32, 32), size=64)
    assert m.shape == (2, 1, 64, 64) and (m >= 0).all() and (m <= 1).all()
    s, t = torch.ones(2, 3, 64, 64), torch.zeros(2, 3, 64, 64)
    torch.testing.assert_close(blend(s, t, m), m.expand(2, 3, 64, 64))
    loss, _ = mask_loss(m, torch.zeros_like(m))
    torch.testing.assert_close(loss, m.mean())


def test_swap_loss_is_the_weighted_sum_of_its_terms_and_logs_detached_tensors():
    from types import SimpleNamespace

    from codeswap.config import SwapLossWeights
    from codeswap.swap_losses import SwapLoss

    a, b = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    ab = torch.rand(2, 3, 8, 8, requires_grad=True)
    za, zb = torch.zeros(2, 4, 2), torch.ones(2, 4, 2)
    out = SimpleNamespace(ab=ab, ba=a.clone(), fusion=None, za=za, zb=zb)
    model = SimpleNamespace(cycle_codes=lambda fusion: (za + 1.0, zb))  # cycle loss 1.0
    w = SwapLossWeights(recon=1.0, identity=2.0, perceptual=0.0, expression=0.5, cycle=3.0)
    same = torch.tensor([True, False])
    total, logs = SwapLoss(w, MeanColour(), None, MeanColour())(model, a, b, same, out)
    rec, _ = reconstruction_loss(a, b, ab, a, same)
    lid, _ = identity_loss(MeanColour(), a, b, ab, a)
    torch.testing.assert_close(total, rec + 2.0 * lid + 3.0 * 1.0)  # no expression net: L_exp is off
    assert set(logs) == {"train/recon", "train/same_pairs", "train/id", "train/id_cos", "train/cycle", "train/g_total"}
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in logs.values())
    total.backward()
    assert ab.grad is not None
