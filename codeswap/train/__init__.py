"""Training: ``loop`` is the machinery every stage shares; one module per stage (``stage1``)."""
