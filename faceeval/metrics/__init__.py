"""The metrics (identity with its backends, pose, expression, FID) and ``entries``, the
built-in metric entries the application's registry gathers (``harness.registry``)."""
