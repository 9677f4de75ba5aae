"""The foundation every other package of the repository builds on (issue 25's layers).

Interfaces and records (``faceeval.api``), settings (options, conventions, presets), weight
files (weights, fetch), images, caches, parallel work, timing, provenance, stops, MLflow
stores (tracking), the ``Registry`` class, and the evaluators: faces/, models/, metrics/.

It imports nothing from ``harness`` (the application), ``methods``, ``protocols``,
``reports`` or ``codeswap``; ``tests/project/test_architecture.py`` checks that with import-linter.
"""
