"""The built-in methods, declared beside their adapters: ``register(METHODS)`` adds one entry
per method to the application's method registry (``harness.registry``).

Entries are ``"module:Object"`` strings into this package; the per-model entries come from
the adapters' own tables (``SWAPPERS``, ``RELEASES``, CodeSwap's ``VARIANT_LABELS``), all
torch-free, so listing methods imports no backend.
"""

from __future__ import annotations

from codeswap.variants import VARIANT_LABELS, method_name
from faceeval.registry import Registry
from faceeval.weights import DLIB_68
from methods.onnx_swappers import SWAPPERS
from methods.simswap import RELEASES as SIMSWAP_RELEASES


def register(methods: Registry) -> None:
    """Add the built-in methods to ``methods``, in the order ``harness list methods`` shows them."""
    methods.register("source", "methods.reference:SourceMethod",
                     description="returns the source face: the identity upper bound")
    methods.register("target", "methods.reference:TargetMethod",
                     description="returns the target face: the lower bound (no swap)")
    methods.register("classical", "methods.classical:ClassicalSwap",
                     description="landmark triangle warp + Lab colour transfer + Poisson blend (no swapper weights)",
                     requires=(DLIB_68,))
    methods.register("precomputed", "methods.precomputed:PrecomputedMethod",
                     description="scores outputs made elsewhere: --method-option precomputed.dir=DIR "
                                 "(<pair_id>.png or <source_stem>__<target_stem>.png); see `harness export-pairs`",
                     explicit_only=True)
    # Derived from the methods' own tables (torch-free modules), so each fact lives once.
    for spec in SWAPPERS.values():
        methods.register(spec.name, "methods.onnx_swappers:OnnxSwapper", options={"model": spec.name},
                         description=f"ONNX swapper {spec.name} (onnxruntime; aligned to its template, pasted back)",
                         requires=(*spec.weight_files, DLIB_68))
    for release, spec in SIMSWAP_RELEASES.items():
        methods.register(release, "methods.simswap:SimSwapMethod", options={"release": release},
                         description=f"{spec.label} from the official PyTorch checkpoint (watermark never added)",
                         requires=(*spec.weight_files, DLIB_68))
    for variant, what in VARIANT_LABELS.items():
        if variant == "full":
            methods.register(method_name(variant), "methods.codeswap:CodeSwapMethod",
                             description="CodeSwap (checkpoint via --method-option codeswap.checkpoint=PATH; "
                                         "else the small demo model shipped with the code)",
                             not_ready="codeswap.variants:demo_not_ready")
        else:
            methods.register(method_name(variant), "methods.codeswap:CodeSwapMethod",
                             description=f"CodeSwap ablation {what}", options={"variant": variant},
                             not_ready="codeswap.variants:demo_not_ready")
