"""Networks written here (PyTorch) that load official checkpoints by their key names."""
