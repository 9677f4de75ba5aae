"""The plugin interface, as third-party plugins import it (``from harness.api import
SwapMethod``): the classes live in the foundation, ``faceeval.api``, where methods, protocols
and metrics import them; this module only names them for code written against the
application's name (a downward import, allowed by the layers in docs/architecture.md)."""

from faceeval.api import (
                          Backend,
                          EvalBatch,
                          EvalContext,
                          FacePair,
                          FaceProtocol,
                          GalleryItem,
                          Metric,
                          MetricKey,
                          PairSet,
                          SwapMethod,
)

__all__ = ["Backend", "EvalBatch", "EvalContext", "FacePair", "FaceProtocol", "GalleryItem", "Metric", "MetricKey",
           "PairSet", "SwapMethod"]
