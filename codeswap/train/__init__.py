"""Training: ``loop`` is the loop every stage shares (helpers in ``dist``, ``state``, ``tracking``); one module per
stage (``stage1``)."""
