"""The application's table of built-in entries: the three registries (methods, protocols,
metrics), each filled by the package that owns the entries.

``methods.entries``, ``protocols.entries`` and ``faceeval.metrics.entries`` declare their
built-ins (``register(registry)``, as lm-evaluation-harness keeps its model table beside
the models); this module only creates the registries (:class:`faceeval.registry.Registry`:
lazy ``"module:Object"`` entries, aliases, did-you-mean, entry-point plugins) and gathers
them. Listing what exists imports no backend.

Example:
    >>> from harness.registry import METHODS
    >>> METHODS.names()[:2]
    ['source', 'target']
"""

from __future__ import annotations

from faceeval.metrics import entries as metric_entries
from faceeval.registry import Registry
from methods import entries as method_entries
from protocols import entries as protocol_entries

METHODS = Registry("method", "codeswap_harness.methods", "faceeval.api:SwapMethod")
PROTOCOLS = Registry("protocol", "codeswap_harness.protocols", "faceeval.api:FaceProtocol")
METRICS = Registry("metric", "codeswap_harness.metrics", "faceeval.api:Metric")

method_entries.register(METHODS)
protocol_entries.register(PROTOCOLS)
metric_entries.register(METRICS)
