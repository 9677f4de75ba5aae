"""Face-swap methods as ``faceeval.api.SwapMethod`` adapters, and ``entries`` (the built-in
method entries, gathered by the application's ``harness.registry``). A part between the
foundation (``faceeval``) and the application (``harness``): imports ``faceeval`` and
``codeswap`` only (docs/architecture.md)."""
