"""PatchGAN discriminator (pix2pix, as used by VQGAN): one real/fake logit per image patch."""

from __future__ import annotations

from torch import Tensor, nn

from codeswap.config import DiscriminatorConfig


class PatchDiscriminator(nn.Module):
    """``n_layers`` strided 4x4 convolutions (widths doubling up to 8x base), a stride-1
    convolution, and a 1-channel 4x4 head. Input (B, 3, H, W) in [-1, 1]; output
    (B, 1, h, w) logits with h ~= H / 2**n_layers."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kw, pad, nf = 4, 1, cfg.base_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, nf, kw, stride=2, padding=pad), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, cfg.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < cfg.n_layers else 1
            layers += [
                nn.Conv2d(nf * prev, nf * mult, kw, stride=stride, padding=pad, bias=False),
                nn.GroupNorm(min(cfg.norm_groups, nf * mult), nf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(nf * mult, 1, kw, stride=1, padding=pad))
        self.main = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)


def _init(m: nn.Module) -> None:
    # pix2pix initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.GroupNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
