"""The CodeSwap ablation variants (paper Table 3): one table, read by the model
(``codeswap.model``), by ``methods.entries`` (one method per variant, named by
:func:`method_name`) and by the report's Table 3 (``reports.tables``: :func:`table_label`).

Torch-free, so that listing methods imports no backend.
"""

from __future__ import annotations

from pathlib import Path

#: the shipped demo model's torch-free listing (variants, recipe key, training data, prior
#: ceiling), written beside ``codeswap-demo.pt`` by :func:`codeswap.demo.pack`
DEMO_LISTING = Path(__file__).resolve().parent / "demo_model" / "codeswap-demo.json"

#: variant -> (changes to the fusion config / mask use, what the ablation removes)
VARIANTS: dict[str, dict[str, object]] = {
    "full": {},
    "wo_c": {"quantize": "none"},  # no codebook or selector
    "wo_s": {"attention": "cross"},  # cross-attention instead of unified self-attention
    "wo_q1": {"quantize": "hard"},  # argmax instead of soft quantization
    "wo_q2": {"quantize": "gumbel"},  # Gumbel-softmax instead of soft quantization
    "wo_m": {"use_mask": False},  # no mask generator
}

#: one line per ablation, as Table 3 names it
VARIANT_LABELS: dict[str, str] = {
    "full": "the full model",
    "wo_c": "w/o C: no codebook or code selector",
    "wo_s": "w/o S: cross- instead of self-attention",
    "wo_q1": "w/o Q1: argmax instead of soft quantization",
    "wo_q2": "w/o Q2: Gumbel-softmax instead of soft quantization",
    "wo_m": "w/o M: no mask generator (full model's checkpoint)",
}


def method_name(variant: str) -> str:
    """The harness method that runs ``variant``: ``codeswap`` (the full model), ``codeswap_wo_c``, ..."""
    return "codeswap" if variant == "full" else f"codeswap_{variant}"


def table_label(variant: str) -> str:
    """The variant's row in Table 3: ``Ours`` for the full model, else the ablation's short
    name (``w/o C``: :data:`VARIANT_LABELS` up to its colon)."""
    return "Ours" if variant == "full" else VARIANT_LABELS[variant].split(":")[0]


def demo_not_ready(variant: str = "full") -> str | None:
    """Why ``--method all`` skips this CodeSwap variant without a checkpoint: the shipped demo
    model (``codeswap/demo_model/codeswap-demo.json`` lists its variants) lacks it, so it
    would first be trained on CPU for a long time. None when it ships. Torch-free."""
    import json

    base = "full" if variant == "wo_m" else variant
    shipped = json.loads(DEMO_LISTING.read_text())["variants"] if DEMO_LISTING.is_file() else []
    if base in shipped:
        return None
    return (f"not in the shipped demo model; run it by name to train it on the demo faces first, "
            f"or give --method-option {method_name(variant)}.checkpoint=PATH")

