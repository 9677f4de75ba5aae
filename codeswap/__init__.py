"""CodeSwap (ACM MM 2024): the model, its three training stages, the shipped demo model and
the paper's figures. Above the foundation (``faceeval``) and below the parts that use it
(``methods``, ``reports``) and the application (``harness``, which mounts ``codeswap.cli``):
imports ``faceeval`` only (docs/architecture.md)."""
