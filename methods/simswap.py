"""SimSwap (Chen et al., ACM MM 2020) from its official PyTorch checkpoints: the adapter.

The networks and their checkpoint readers are in :mod:`methods.simswap_net`.
Inference follows the official test scripts: the target is an RGB [0, 1] crop (no
normalisation); the source crop is ImageNet-normalised, downsampled by 0.5 (nearest,
``F.interpolate``'s default) to 112 px, embedded by SimSwap's ArcFace and L2-normalised;
the output ``(tanh + 1) / 2`` is pasted back. Crops: the 224 release's own template at
224 px (SimSwap's ``face_align_ffhqandnewarc``: the frontal one of its five pose templates,
which is ``arcface_112_v1``; SimSwap picks the best-fitting of the five, the harness always
the frontal one since its crops are already frontalised), FFHQ at 512 px for the 512 release.
The SimSwap logo watermark (``--no_simswaplogo`` off by default upstream) is never added.

This module imports no torch at load time: the registry reads :data:`RELEASES` from it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from faceeval.api import SwapMethod
from faceeval.constants import IMAGENET_MEAN, IMAGENET_STD
from faceeval.errors import HarnessError
from faceeval.images import to_uint8
from faceeval.options import parse_bool

ARCFACE_FILE = "arcface_checkpoint.tar"
ARCFACE_INPUT = 112


@dataclass(frozen=True)
class SimSwapRelease:
    generator_file: str
    crop: int  # side of the aligned crops it was trained on
    template: str
    label: str  # as `harness list methods` names it

    @property
    def weight_files(self) -> tuple[str, ...]:
        """Files this release cannot run without (the registry's ``requires``)."""
        return (self.generator_file, ARCFACE_FILE)


RELEASES = {
    "simswap": SimSwapRelease("simswap_224_latest_net_G.pth", 224, "arcface_112_v1", "SimSwap 224"),
    "simswap_512": SimSwapRelease("simswap_512_latest_net_G.pth", 512, "ffhq_512", "SimSwap 512 beta"),
}


class SimSwapMethod(SwapMethod):
    """SimSwap from the official generator + ArcFace checkpoints (watermark never added)."""

    resolution = None

    def __init__(self, device: str = "cpu", release: str = "simswap", detect: bool = True) -> None:
        super().__init__(device)
        if release not in RELEASES:
            raise HarnessError(f"unknown SimSwap release {release!r} (known: {', '.join(RELEASES)})")
        self.release = RELEASES[release]
        self.name = release
        self.detect = parse_bool(detect, "detect")

    @cached_property
    def _weights(self) -> dict[str, tuple[str, str]]:
        from faceeval.weights import verified

        return {n: tuple(map(str, verified(n))) for n in self.release.weight_files}

    @cached_property
    def generator(self):
        from methods.simswap_net import load_generator

        return load_generator(self._weights[self.release.generator_file][0]).to(self.device)

    @cached_property
    def arcface(self):
        from methods.simswap_net import load_arcface

        return load_arcface(self._weights[ARCFACE_FILE][0]).to(self.device)

    @cached_property
    def _detector(self):
        from faceeval.faces.detect import DlibDetector

        return DlibDetector(upsample=1)

    def _crop(self, image: np.ndarray):
        from faceeval.faces.align import five_points
        from faceeval.faces.templates import crop_landmarks, warp_to_template

        p5 = five_points(crop_landmarks(image, self._detector, detect=self.detect))
        return warp_to_template(image, p5, self.release.template, self.release.crop)

    def identity(self, source_crops):
        """(B, 3, S, S) RGB [0, 1] aligned source crops -> (B, 512) unit identity vectors."""
        import torch
        import torch.nn.functional as F

        mean = torch.tensor(IMAGENET_MEAN, device=source_crops.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=source_crops.device).view(1, 3, 1, 1)
        x = (source_crops - mean) / std
        # the official scripts downsample with F.interpolate's default (nearest) to 112 px
        x = F.interpolate(x, size=(ARCFACE_INPUT, ARCFACE_INPUT))  # (B, 3, 112, 112)
        return F.normalize(self.arcface(x), p=2, dim=1)

    def swap(self, source, target):
        import torch

        from faceeval.faces.paste import paste_back

        src, tgt = to_uint8(source), to_uint8(target)  # (B, H, W, 3)
        src_crops = np.stack([self._crop(s)[0] for s in src])  # (B, S, S, 3)
        tgt_cut = [self._crop(t) for t in tgt]
        tgt_crops = np.stack([c for c, _ in tgt_cut])
        to_t = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).float().div(255.0).to(self.device)  # noqa: E731
        with torch.inference_mode():
            ident = self.identity(to_t(src_crops))  # (B, 512)
            fake = self.generator(to_t(tgt_crops), ident)  # (B, 3, S, S) in [0, 1]
        fake_u8 = to_uint8(fake)  # (B, S, S, 3)
        out = np.stack([paste_back(t, f, m) for t, f, (_, m) in zip(tgt, fake_u8, tgt_cut)])  # (B, H, W, 3)
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0).to(source.device)

    def fingerprint(self) -> dict[str, Any]:
        release = {k: v for k, v in asdict(self.release).items() if k != "label"}  # the label is not an output setting
        return {"name": self.name, "version": 1, "release": release, "detect": self.detect,
                "weights": {k: sha for k, (_, sha) in self._weights.items()}, "watermark": False}
