"""CodeSwap face-swap benchmark harness: the application, the top of the import layers.

It runs a job (``cli``, ``evaluation``, ``runner``, ``results``, ``console``, ``export``,
``rescore``) and holds the table of built-in entries (``registry``); it builds on the parts
(``methods``, ``reports``, ``protocols``, ``codeswap``) and the foundation (``faceeval``), and
nothing imports it (docs/architecture.md, checked by tests/project/test_architecture.py).

The Python API (the same function ``harness run`` calls, with the same defaults)::

    from harness import evaluate, load_results
    res = evaluate("demo", ["source", "target", "classical"], out="harness-out")
    res.to_pandas()          # one row per method x metric
    res.pairs("source")      # per-pair frame
    load_results("harness-out")  # the same Results, read back from results.json

Names are imported lazily, so ``import harness`` loads no model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["evaluate", "load_results", "Results"]

_LAZY = {"evaluate": "harness.evaluation", "load_results": "harness.results", "Results": "harness.results"}

if TYPE_CHECKING:  # pragma: no cover
    from harness.evaluation import evaluate
    from harness.results import Results, load_results


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
