"""Stage 2 core: exact symmetry, soft quantization, ablation variants."""

from __future__ import annotations

import pytest
import torch

from codeswap.fusion import FusionConfig, GlobalFusion, quantize_codes

TINY = FusionConfig(dim=32, grid=4, num_codes=64, layers=2, heads=4, selector_hidden=48)


def _inputs(seed=0, b=2, cfg=TINY):
    g = torch.Generator().manual_seed(seed)
    za = torch.randn(b, cfg.tokens, cfg.dim, generator=g)
    zb = torch.randn(b, cfg.tokens, cfg.dim, generator=g)
    q = torch.randn(cfg.num_codes, cfg.dim, generator=g)
    return za, zb, q


def _perturbed(model: GlobalFusion) -> GlobalFusion:
    # non-zero same/other biases, so symmetry is not an accident of zero init
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.bias.copy_(torch.randn_like(blk.attn.bias))
    return model


@pytest.mark.parametrize("attention", ["unified", "cross"])
@pytest.mark.parametrize("quantize", ["soft", "hard", "none"])
def test_swapping_inputs_swaps_outputs_exactly(attention, quantize):
    torch.manual_seed(0)
    cfg = FusionConfig(**{**TINY.__dict__, "attention": attention, "quantize": quantize})
    model = _perturbed(GlobalFusion(cfg)).eval().double()
    za, zb, q = (t.double() for t in _inputs())
    ab, ba = GlobalFusion.split(model(za, zb, q).codes)
    ba2, ab2 = GlobalFusion.split(model(zb, za, q).codes)
    torch.testing.assert_close(ab, ab2, atol=1e-10, rtol=0)
    torch.testing.assert_close(ba, ba2, atol=1e-10, rtol=0)
    assert not torch.allclose(ab, ba)  # the two directions differ


def test_soft_quantization_is_softmax_times_codebook():
    model = GlobalFusion(TINY).eval()
    za, zb, q = _inputs()
    out = model(za, zb, q)
    torch.testing.assert_close(out.codes, out.logits.softmax(-1) @ q)
    assert out.codes.shape == (2, 2 * TINY.tokens, TINY.dim)


def test_hard_quantization_picks_codebook_rows_with_straight_through_gradient():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    q = torch.randn(7, 3)
    codes = quantize_codes(logits, q, "hard", training=True)
    torch.testing.assert_close(codes, q[logits.argmax(-1)])
    codes.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_gumbel_is_stochastic_in_training_and_deterministic_in_eval():
    logits = torch.randn(2, 5, 7)
    q = torch.randn(7, 3)
    torch.manual_seed(0)
    a = quantize_codes(logits, q, "gumbel", training=True)
    b = quantize_codes(logits, q, "gumbel", training=True)
    assert not torch.allclose(a, b)
    torch.testing.assert_close(quantize_codes(logits, q, "gumbel", training=False, tau=2.0), (logits / 2).softmax(-1) @ q)


def test_cross_attention_ignores_the_own_image():
    model = GlobalFusion(FusionConfig(**{**TINY.__dict__, "attention": "cross"})).eval()
    za, zb, _ = _inputs()
    maps = model.attention_maps(za, zb)
    L = TINY.tokens
    for m in maps:  # (B, H, 2L, 2L)
        assert m[..., :L, :L].abs().max() == 0 and m[..., L:, L:].abs().max() == 0
        torch.testing.assert_close(m.sum(-1), torch.ones_like(m.sum(-1)))
    unified = GlobalFusion(TINY).eval().attention_maps(za, zb)[0]
    assert unified[..., :L, :L].sum() > 0


def test_config_is_validated():
    with pytest.raises(ValueError, match="divisible"):
        FusionConfig(dim=30, heads=4)
    with pytest.raises(ValueError, match="quantize"):
        FusionConfig(quantize="fuzzy")
