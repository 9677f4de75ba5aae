"""Pair-set protocols (``faceeval.api.FaceProtocol`` -> ``PairSet``), their datasets' layouts
and fixtures, and ``entries`` (the built-in protocol entries, gathered by the application's
``harness.registry``). A part between the foundation (``faceeval``) and the application
(``harness``): imports ``faceeval`` only (docs/architecture.md)."""
