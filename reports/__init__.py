"""The report of an output folder: Tables 1 and 3, ranking, grids, the HTML page, the
convention comparison. Reads the runs through ``faceeval.summaries``. A part between the
foundation (``faceeval``) and the application (``harness``): imports ``faceeval`` and
``codeswap`` (its variant table) only (docs/architecture.md)."""
