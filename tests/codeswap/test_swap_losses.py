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


def test_teacher_cells_are_the_box_of_cell_centres():
    from codeswap.swap_losses import teacher_cells_mask

    m = teacher_cells_mask(16, (0.25, 0.1875, 1.0, 0.875)).view(16, 16)
    rows, cols = m.any(1).nonzero().flatten(), m.any(0).nonzero().flatten()
    assert (rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()) == (4, 15, 3, 13)
    assert m.sum().item() == 12 * 11  # a full box, nothing outside it


def test_code_teacher_loss_teaches_target_codes_with_the_source_face_cells():
    """Logits that pick exactly the teacher's codes score ~0 loss and accuracy 1; logits that
    return each target's own codes everywhere (no swap) are wrong in the face cells."""
    from types import SimpleNamespace

    from codeswap.config import TINY
    from codeswap.fusion import FusionOutput
    from codeswap.model import CodeSwap, CodeSwapConfig
    from codeswap.swap_losses import code_teacher_loss, teacher_cells_mask

    torch.manual_seed(0)
    model = CodeSwap(CodeSwapConfig.for_autoencoder(TINY, "full", layers=1, heads=4, selector_hidden=16)).eval()
    side, n = TINY.latent_size, TINY.quant.num_codes
    cb = model.codebook.detach()
    ia, ib = torch.randint(n, (2, side * side)), torch.randint(n, (2, side * side))  # (B, L) indices
    za, zb = cb[ia], cb[ib]  # tokens exactly on codes: nearest() gives ia, ib back
    cells = (0.25, 0.25, 0.75, 0.75)
    face = teacher_cells_mask(side, cells)
    assert 0 < face.sum() < side * side

    def out_for(idx):  # (B, 2L) chosen indices -> an output whose logits pick them
        logits = torch.full((2, 2 * side * side, n), -30.0).scatter(-1, idx[..., None], 30.0)
        return SimpleNamespace(za=za, zb=zb, fusion=FusionOutput(cb[idx], logits, None))

    teacher = torch.cat([torch.where(face, ib, ia), torch.where(face, ia, ib)], 1)  # [I_ba; I_ab]
    good, logs = code_teacher_loss(model, out_for(teacher), cells)
    assert good.item() < 1e-6 and logs["train/teacher_acc"].item() == 1.0
    no_swap, logs = code_teacher_loss(model, out_for(torch.cat([ia, ib], 1)), cells)
    differ = (ia != ib)[:, face].float().mean().item()  # face cells where the two faces' codes differ
    assert no_swap.item() > 1.0
    assert abs(logs["train/teacher_acc"].item() - (1 - differ * face.float().mean().item())) < 1e-6
    # w/o C has no selector: the teacher's code vectors are regressed instead
    wo_c = SimpleNamespace(za=za, zb=zb, fusion=FusionOutput(cb[teacher], None, None))
    assert code_teacher_loss(model, wo_c, cells)[0].item() < 1e-10


def test_the_teacher_warm_up_falls_linearly_to_zero_and_then_leaves_the_loss():
    """teacher_decay_steps: the teacher's weight is w at step 0, w/2 half-way, 0 from the last
    step on, and at 0 its term is not computed at all (no teacher log, the paper's L_swap)."""
    from types import SimpleNamespace

    from codeswap.config import TINY, SwapLossWeights
    from codeswap.fusion import FusionOutput
    from codeswap.model import CodeSwap, CodeSwapConfig
    from codeswap.swap_losses import SwapLoss
    from codeswap.train.stage2 import Stage2Trainer

    def scale(n, step):
        return Stage2Trainer.teacher_scale(SimpleNamespace(swap_cfg=SimpleNamespace(teacher_decay_steps=n)), step)

    assert [scale(100, s) for s in (0, 50, 100, 150)] == [1.0, 0.5, 0.0, 0.0]
    assert scale(0, 10_000) == 1.0  # no schedule: constant

    torch.manual_seed(0)
    model = CodeSwap(CodeSwapConfig.for_autoencoder(TINY, "full", layers=1, heads=4, selector_hidden=16)).eval()
    side, n = TINY.latent_size, TINY.quant.num_codes
    cb = model.codebook.detach()
    idx = torch.randint(n, (2, 2 * side * side))
    out = SimpleNamespace(za=cb[idx[:, :side * side]], zb=cb[idx[:, side * side:]], ab=torch.rand(2, 3, 8, 8),
                          ba=torch.rand(2, 3, 8, 8),
                          fusion=FusionOutput(cb[idx], torch.randn(2, 2 * side * side, n), None))
    a, b, same = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.bool)
    loss = SwapLoss(SwapLossWeights(recon=0.0, identity=0.0, perceptual=0.0, expression=0.0, cycle=0.0, teacher=2.0),
                    None, None, None)
    full, logs = loss(model, a, b, same, out)
    half, _ = loss(model, a, b, same, out, teacher_scale=0.5)
    off, off_logs = loss(model, a, b, same, out, teacher_scale=0.0)
    assert full.item() > 0 and abs(half.item() - full.item() / 2) < 1e-5
    assert off.item() == 0.0 and "train/teacher" in logs and "train/teacher" not in off_logs
