"""``mirror_blend``: half source, half target, a stand-in for a real plugin's swapper.

A plugin method subclasses ``faceeval.api.SwapMethod`` and is declared in its package's
``pyproject.toml`` under ``[project.entry-points."codeswap_harness.methods"]``.
"""

from __future__ import annotations

from faceeval.api import SwapMethod


class MirrorBlend(SwapMethod):
    name = "mirror_blend"

    def __init__(self, device: str = "cpu", weight: float | str = 0.5) -> None:
        super().__init__(device)
        self.weight = float(weight)

    def swap(self, source, target):
        return self.weight * source + (1.0 - self.weight) * target  # (B, 3, H, W)

    def fingerprint(self):
        return {"name": self.name, "weight": self.weight}
