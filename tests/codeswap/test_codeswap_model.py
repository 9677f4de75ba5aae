"""The whole CodeSwap network on the tiny config: symmetry, frozen stage 1, variants."""

from __future__ import annotations

import pytest
import torch

from codeswap.config import TINY
from codeswap.fusion import GlobalFusion
from codeswap.model import VARIANTS, CodeSwap, CodeSwapConfig

FUSION = dict(layers=2, heads=4, selector_hidden=64)


def _model(variant="full", seed=0) -> CodeSwap:
    torch.manual_seed(seed)
    cfg = CodeSwapConfig.for_autoencoder(TINY, variant, **FUSION)
    return CodeSwap(cfg).double()


def _pair(b=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 3, 64, 64, generator=g, dtype=torch.float64) * 2 - 1,
            torch.rand(b, 3, 64, 64, generator=g, dtype=torch.float64) * 2 - 1)


@pytest.mark.parametrize("variant", ["full", "wo_s", "wo_c", "wo_q1", "wo_m"])
def test_swapping_the_inputs_swaps_the_outputs(variant):
    m = _model(variant).eval()
    a, b = _pair()
    with torch.no_grad():
        x = m(a, b)
        y = m(b, a)
    torch.testing.assert_close(x.ab, y.ba, atol=1e-9, rtol=0)
    torch.testing.assert_close(x.ba, y.ab, atol=1e-9, rtol=0)
    assert x.ab.shape == a.shape and not torch.allclose(x.ab, x.ba)
    if variant == "wo_m":
        assert x.mask_ab is None and m.mask is None
    else:
        assert x.mask_ab.shape == (2, 1, 64, 64)


def test_mask_keeps_the_target_outside_the_face():
    m = _model().eval()
    a, b = _pair()
    with torch.no_grad():
        out = m(a, b)
    torch.testing.assert_close(out.ab, out.raw_ab * out.mask_ab + b * (1 - out.mask_ab))


def test_gradients_reach_only_fusion_and_mask():
    m = _model().float().train()
    a, b = (t.float() for t in _pair())
    out = m(a, b)
    (out.ab.mean() + out.ba.mean()).backward()
    assert all(p.grad is None for p in m.autoencoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.fusion.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.mask.parameters())
    assert not any(p.requires_grad for p in m.autoencoder.parameters())


def test_code_cycle_returns_to_each_face():
    m = _model().eval()
    a, b = _pair()
    with torch.no_grad():
        out = m(a, b)
        back_a, back_b = m.cycle_codes(out.fusion)
        # the cycle is symmetric too: swapping inputs swaps what comes back
        out2 = m(b, a)
        back_b2, back_a2 = m.cycle_codes(out2.fusion)
    torch.testing.assert_close(back_a, back_a2, atol=1e-9, rtol=0)
    assert back_a.shape == out.za.shape


def test_region_swap_changes_only_the_region_codes_and_attention_maps_normalise():
    m = _model().eval()
    a, b = _pair(b=1)
    side = TINY.latent_size
    region = torch.zeros(side, side, dtype=torch.bool)
    region[4:6, 2:6] = True
    img = m.region_swap(a, b, region)
    assert img.shape == (1, 3, 64, 64)
    att_a, att_b = m.region_attention(a, b, region)
    assert att_a.shape == (1, side, side)
    torch.testing.assert_close(att_a.sum() + att_b.sum(), torch.tensor(1.0, dtype=att_a.dtype))


def test_variants_are_configured_as_named():
    assert set(VARIANTS) == {"full", "wo_c", "wo_s", "wo_q1", "wo_q2", "wo_m"}
    cfg = CodeSwapConfig.for_autoencoder(TINY, "wo_q2")
    assert cfg.fusion.quantize == "gumbel" and cfg.use_mask
    assert cfg.with_variant("wo_c").fusion.quantize == "none"
    assert cfg.with_variant("full").fusion.quantize == "soft"
    with pytest.raises(ValueError, match="unknown CodeSwap variant"):
        CodeSwapConfig.for_autoencoder(TINY, "wo_x")
    assert GlobalFusion.split(torch.arange(4.0).view(1, 4, 1))[0].flatten().tolist() == [2.0, 3.0]


def test_any_prior_shape_builds_a_codeswap_with_its_mask_level():
    from dataclasses import replace

    from codeswap.config import AutoencoderConfig, QuantizerConfig

    # 64 px with a 16x16 latent: no level has side 64 / 8 = 8, which once made this fail
    ae = AutoencoderConfig(resolution=64, channels=(16, 32, 32), enc_blocks=(1, 1, 1), dec_blocks=(1, 1, 1),
                           norm_groups=8, quant=QuantizerConfig(num_codes=32, code_dim=16))
    cfg = CodeSwapConfig.for_autoencoder(ae, "full", **FUSION)
    assert cfg.mask_level_index == 2 and cfg.mask_side == 16  # nearest level to 64 / 8
    chosen = replace(cfg, mask_level=1)
    assert chosen.mask_side == 32
    m = CodeSwap(chosen).eval()
    a, b = (torch.rand(1, 3, 64, 64) * 2 - 1 for _ in range(2))
    with torch.no_grad():
        out = m(a, b)
    assert out.mask_ab.shape == (1, 1, 64, 64) and m.mask.cfg.enc_channels == 32
    with pytest.raises(ValueError, match="mask_level 3 outside"):
        replace(cfg, mask_level=3)
    # the paper-scale rule is unchanged: the 64x64 level of a 512 model
    assert CodeSwapConfig.for_autoencoder(AutoencoderConfig(), "full").mask_side == 64


def test_checkpoints_from_before_relative_positions_load_with_absolute_ones():
    from codeswap.checkpoints import codeswap_config, plain

    cfg = CodeSwapConfig.for_autoencoder(TINY, "full", position="absolute", **FUSION)
    stored = plain(cfg)
    del stored["fusion"]["position"]  # what a checkpoint written before the setting holds
    stored["mask_level_divisor"] = 8  # the old field, now derived
    again = codeswap_config(stored)
    assert again.fusion.position == "absolute" and again == cfg
    model = CodeSwap(cfg)
    CodeSwap(again).load_state_dict(model.state_dict())  # same parameters, strict
    assert CodeSwapConfig.for_autoencoder(TINY, "full").fusion.position == "relative"  # new default
