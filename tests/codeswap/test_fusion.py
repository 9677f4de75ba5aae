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
    # random attention biases, so symmetry is not an accident of their initialisation
    with torch.no_grad():
        for blk in model.blocks:
            bias = blk.attn.rel_bias if blk.attn.relative else blk.attn.bias
            bias.copy_(torch.randn_like(bias))
    return model


@pytest.mark.parametrize("position", ["absolute", "relative"])
@pytest.mark.parametrize("attention", ["unified", "cross"])
@pytest.mark.parametrize("quantize", ["soft", "hard", "none"])
def test_swapping_inputs_swaps_outputs_exactly(attention, quantize, position):
    torch.manual_seed(0)
    cfg = FusionConfig(**{**TINY.__dict__, "attention": attention, "quantize": quantize, "position": position})
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
    torch.testing.assert_close(quantize_codes(logits, q, "gumbel", training=False, tau=2.0),
                               (logits / 2).softmax(-1) @ q)


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


def test_relative_bias_indexes_offsets_and_images():
    from codeswap.fusion import PairAttention, relative_index

    g = 3
    idx = relative_index(g)  # (9, 9)
    # cell (0, 0) vs cell (2, 1): offset (-2, -1) -> ((-2 + 2) * 5 + (-1 + 2))
    assert idx[0, 7].item() == 1 and idx[7, 0].item() == (2 + 2) * 5 + (1 + 2)
    assert torch.all(idx.diagonal() == (g - 1) * (2 * g - 1) + (g - 1))  # offset (0, 0)
    attn = PairAttention(FusionConfig(dim=8, grid=g, num_codes=4, heads=2, layers=1))
    with torch.no_grad():
        attn.rel_bias.copy_(torch.randn_like(attn.rel_bias))
    m = attn._mask(2 * g * g, torch.device("cpu"), torch.float32)  # (H, 18, 18)
    L = g * g
    # query cell 4 of a, key cell 1 of b: the other-image bias at offset (1, 0) - (0, 1)
    assert m[1, 4, L + 1] == attn.rel_bias[1, 1, idx[4, 1]]
    assert m[1, L + 4, 1] == attn.rel_bias[1, 1, idx[4, 1]]  # the same from b's side: symmetric
    assert m[0, L + 2, L + 5] == attn.rel_bias[0, 0, idx[2, 5]]


def test_relative_bias_starts_local_for_the_first_head():
    cfg = FusionConfig(dim=8, grid=4, num_codes=4, heads=4, layers=1)
    model = GlobalFusion(cfg)
    m = model.blocks[0].attn._mask(32, torch.device("cpu"), torch.float32)
    # head 0 (slope 1) prefers the same cell of the other face over a far cell of it
    assert m[0, 0, 16] > m[0, 0, 16 + 15]
    assert torch.allclose(m[3, :16, :16], m[3, 16:, 16:])  # same/other tables start equal
